"""Click logs on disk: reading (with `FILE:LINE: reason` errors), columnar form, atomic writing.

A click log is JSON lines in the ``clicks`` message format (``user_id``, ``item_id``,
``ts``, optional ``event_id`` and ``weight``; other keys are ignored) or CSV with a header
naming some of the columns ``user_id,item_id,ts,event_id,weight`` (``user_id``,
``item_id`` and ``ts`` required; an unknown column is an error). A ``.gz`` suffix means
gzip. In a file there is no Kafka record timestamp, so ``ts`` is required.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import orjson

from offline.errors import OfflineError
from recall.messages import MAX_ID_LENGTH, MAX_TS_SECONDS, Invalid, parse_click

FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("user_id", "item_id", "ts", "event_id", "weight")
CSV_REQUIRED = ("user_id", "item_id", "ts")


class ClickLogError(OfflineError):
    """A click log cannot be used; the message names the file (and line)."""


@dataclass
class ClickLog:
    """Clicks as columns, sorted by (user, ts); ids interned to integer codes.

    ``user[i]``/``item[i]`` index ``user_ids``/``item_ids``; ``event_id`` is ``None``
    when no click has one, else an object array with ``None`` where missing.
    """

    user_ids: list[str]
    item_ids: list[str]
    user: np.ndarray  # (n,) int32
    item: np.ndarray  # (n,) int32
    ts: np.ndarray  # (n,) float64, seconds since the epoch
    weight: np.ndarray  # (n,) float32, > 0
    event_id: np.ndarray | None = None  # (n,) object

    def __len__(self) -> int:
        return len(self.user)

    def sort(self) -> ClickLog:
        """Order by user, then ts (stable: ties keep file order)."""
        order = np.lexsort((self.ts, self.user))
        return self.take(order)

    def take(self, rows: np.ndarray) -> ClickLog:
        """The clicks at ``rows`` (indices or a boolean mask), same vocabularies."""
        return ClickLog(
            self.user_ids, self.item_ids, self.user[rows], self.item[rows], self.ts[rows],
            self.weight[rows], None if self.event_id is None else self.event_id[rows],
        )

    def user_bounds(self) -> np.ndarray:
        """For a log sorted by user: start offsets of each user's run, plus ``len``."""
        starts = np.flatnonzero(np.diff(self.user, prepend=-1) != 0)
        return np.append(starts, len(self.user))


def detect_format(path: Path, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise ClickLogError(f"{path}: unknown format {fmt!r} (jsonl or csv)")
        return fmt
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return "csv" if name.endswith(".csv") else "jsonl"


def _open_text(path: Path) -> IO[str]:
    try:
        if path.name.endswith(".gz"):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise ClickLogError(f"{path}: cannot open: {exc.strerror or exc}") from exc


class _Builder:
    """Accumulates validated clicks, interning ids."""

    def __init__(self) -> None:
        self.users: dict[str, int] = {}
        self.items: dict[str, int] = {}
        self.u: list[int] = []
        self.i: list[int] = []
        self.ts: list[float] = []
        self.w: list[float] = []
        self.ev: list[str | None] = []
        self.any_event = False

    def add(self, user_id: str, item_id: str, ts: float, weight: float,
            event_id: str | None) -> None:
        users, items = self.users, self.items
        self.u.append(users.setdefault(user_id, len(users)))
        self.i.append(items.setdefault(item_id, len(items)))
        self.ts.append(ts)
        self.w.append(weight)
        self.ev.append(event_id)
        if event_id is not None:
            self.any_event = True

    def build(self, path: Path) -> ClickLog:
        if not self.u:
            raise ClickLogError(f"{path}: the log has no clicks")
        log = ClickLog(
            list(self.users), list(self.items),
            np.array(self.u, dtype=np.int32), np.array(self.i, dtype=np.int32),
            np.array(self.ts, dtype=np.float64), np.array(self.w, dtype=np.float32),
            np.array(self.ev, dtype=object) if self.any_event else None,
        )
        return log.sort()


def _check_ids(user_id: str, item_id: str) -> None:
    for name, value in (("user_id", user_id), ("item_id", item_id)):
        if not value:
            raise ValueError(f"{name} is empty")
        if len(value) > MAX_ID_LENGTH:
            raise ValueError(f"{name} longer than {MAX_ID_LENGTH} characters")


def _read_jsonl(f: IO[str], path: Path, b: _Builder) -> None:
    """Each line is validated by the worker's own parser (same rules as the topic)."""
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            click = parse_click(line, record_ts=-1.0, max_bytes=len(line) + 1)
        except Invalid as exc:
            if exc.reason == "out_of_range" and '"ts"' not in line:
                raise ClickLogError(f"{path}:{lineno}: 'ts' is required in a log file") from None
            raise ClickLogError(f"{path}:{lineno}: {exc.message} ({exc.reason})") from None
        b.add(click.user_id, click.item_id, click.ts, click.weight, click.event_id)


def _read_csv(f: IO[str], path: Path, b: _Builder) -> None:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        raise ClickLogError(f"{path}: the log has no clicks (empty file)")
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise ClickLogError(
            f"{path}:1: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {','.join(CSV_COLUMNS)}"
        )
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise ClickLogError(f"{path}:1: missing column(s) {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise ClickLogError(f"{path}:1: repeated column name")
    cu, ci, ct = (header.index(c) for c in CSV_REQUIRED)
    cw = header.index("weight") if "weight" in header else -1
    ce = header.index("event_id") if "event_id" in header else -1
    width = len(header)
    for row in reader:
        lineno = reader.line_num
        if not row:
            continue
        try:
            if len(row) != width:
                raise ValueError(f"expected {width} fields, got {len(row)}")
            user_id, item_id = row[cu], row[ci]
            _check_ids(user_id, item_id)
            try:
                ts = float(row[ct])
            except ValueError:
                raise ValueError(f"ts is not a number: {row[ct]!r}") from None
            if not 0 <= ts <= MAX_TS_SECONDS:
                raise ValueError(f"ts {row[ct]!r} is not seconds since the epoch")
            weight = 1.0
            if cw >= 0 and row[cw] != "":
                try:
                    weight = float(row[cw])
                except ValueError:
                    raise ValueError(f"weight is not a number: {row[cw]!r}") from None
                if not (math.isfinite(weight) and weight > 0):
                    raise ValueError("weight must be finite and > 0")
            event_id = (row[ce] or None) if ce >= 0 else None
        except ValueError as exc:
            raise ClickLogError(f"{path}:{lineno}: {exc}") from None
        b.add(user_id, item_id, ts, weight, event_id)


def read_log(path: str | os.PathLike[str], fmt: str | None = None) -> ClickLog:
    """Read and validate a whole click log; raises :class:`ClickLogError` on the first
    bad line (``FILE:LINE: reason``) or when it has no clicks."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    b = _Builder()
    with _open_text(path) as f:
        try:
            (_read_csv if fmt == "csv" else _read_jsonl)(f, path, b)
        except UnicodeDecodeError as exc:
            raise ClickLogError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except (OSError, EOFError, csv.Error) as exc:
            raise ClickLogError(f"{path}: cannot read: {exc}") from None
    return b.build(path)


def _rows(log: ClickLog, order: np.ndarray, fmt: str) -> Iterator[bytes]:
    """Encoded lines of ``log`` in ``order``, in chunks."""
    users, items = log.user_ids, log.item_ids
    chunk = 50_000
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]
        u = log.user[rows].tolist()
        i = log.item[rows].tolist()
        t = log.ts[rows].tolist()
        w = log.weight[rows].tolist()
        e = [None] * len(rows) if log.event_id is None else log.event_id[rows].tolist()
        out = []
        if fmt == "jsonl":
            for uu, ii, tt, ww, ee in zip(u, i, t, w, e, strict=True):
                rec: dict[str, object] = {"user_id": users[uu], "item_id": items[ii], "ts": tt}
                if ee is not None:
                    rec["event_id"] = ee
                if ww != 1.0:
                    rec["weight"] = ww
                out.append(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        else:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerows(
                (users[uu], items[ii], repr(tt), "" if ee is None else ee, repr(ww))
                for uu, ii, tt, ww, ee in zip(u, i, t, w, e, strict=True)
            )
            out.append(buf.getvalue().encode())
        yield b"".join(out)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed onto it only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_log(log: ClickLog, path: str | os.PathLike[str], fmt: str | None = None,
              progress: bool = False) -> None:
    """Write ``log`` in time order (as a real log is), atomically (temp file + rename)."""
    from tqdm import tqdm

    path = Path(path)
    fmt = detect_format(path, fmt)
    order = np.argsort(log.ts, kind="stable")
    with atomic_path(path) as tmp:
        raw = gzip.open(tmp, "wb") if path.name.endswith(".gz") else open(tmp, "wb")  # noqa: SIM115
        with raw as f, tqdm(total=len(order), unit="click", desc=f"write {path.name}",
                            disable=not progress) as bar:
            if fmt == "csv":
                f.write(b"user_id,item_id,ts,event_id,weight\n")
            for block in _rows(log, order, fmt):
                f.write(block)
                bar.update(min(50_000, bar.total - bar.n))
