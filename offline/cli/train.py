"""``recall train``: item vectors from a click log (offline.train), optionally with the
model search (offline.search); the chosen settings go beside the vectors."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from offline.cli.common import (
    format_arg,
    k_arg,
    log_format,
    quiet_gensim,
    run_args,
    run_search,
    train_args,
    train_params,
)
from offline.errors import OfflineError
from recall.config import Settings


def add_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train item2vec vectors on a click log",
                       description="item2vec over users' time-ordered click sessions; "
                       "writes an .npz with 'ids' and L2-normalised float32 'vectors' "
                       "(dimension RECALL_DIM).")
    p.add_argument("log", help="click log (.jsonl / .csv, optional .gz)")
    p.add_argument("--out", required=True, help="vector file to write (.npz); the settings "
                   "go beside it (<stem>.model.json)")
    format_arg(p)
    train_args(p)
    k_arg(p, "k of the search's HitRate@k (10)")
    run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from offline.clicklog import read_log
    from offline.model import model_path, resolve_user, write_model
    from offline.train import train_embeddings
    from offline.vectors import save_vectors
    from recall.config import set_in_env

    settings = Settings.from_env()
    quiet_gensim(args)
    t0 = time.perf_counter()
    clicks = read_log(args.log, log_format(args))
    t_read = time.perf_counter() - t0
    params = train_params(args, settings.dim)
    user, _ = resolve_user(settings, set_in_env(), None)
    found = None
    if args.search:
        found = run_search(args, clicks, settings)
        params, user = found.train, found.user
    try:
        ids, vectors = train_embeddings(clicks, params, progress=not args.quiet)
    except ValueError as exc:
        raise OfflineError(f"{args.log}: {exc}") from None
    save_vectors(args.out, ids, vectors)
    model_file = model_path(args.out)
    write_model(model_file, params, user, None if found is None else found.summary())
    seconds = time.perf_counter() - t0
    print(f"trained {len(ids)} item vectors (D={settings.dim}, {params.method}) from "
          f"{len(clicks)} clicks in {seconds:.1f} s (reading {t_read:.1f} s) -> {args.out}, "
          f"settings -> {model_file}", file=sys.stderr)
    out = {"command": "train", "out": str(args.out), "model": str(model_file),
           "clicks": len(clicks), "items": len(ids), "dim": settings.dim,
           "method": params.method, "user": user.to_dict(), "seconds": round(seconds, 3)}
    if found is not None:
        out["search"] = found.summary()
    print(json.dumps(out))
    return 0
