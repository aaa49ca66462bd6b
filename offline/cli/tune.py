"""``recall tune``: LSH parameters for a vector file (offline.tune), written beside it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from offline.cli.common import format_arg, k_arg, log_format, run_args, target_arg, user_settings
from offline.errors import OfflineError
from recall.config import Settings


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tune", help="pick LSH parameters for a vector file",
                       description="Run the LSH tuner for a target recall@k on users' "
                       "rolling vectors from --log; writes <vectors>.lsh.json.")
    p.add_argument("vectors", help="vector file from `recall train`")
    p.add_argument("--log", help="click log whose users' rolling vectors are the queries")
    format_arg(p)
    target_arg(p)
    k_arg(p)
    p.add_argument("--queries", type=int, default=2000, help="queries sampled (2000)")
    p.add_argument("--sample-items", type=int, default=200_000,
                   help="items the tuner's grid is walked on; its best layouts are then "
                        "judged on every item (200000)")
    p.add_argument("--out", help="parameter file (default <vectors stem>.lsh.json)")
    run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from offline.clicklog import read_log
    from offline.tune import log_queries, tune_params, write_params
    from offline.vectors import load_vectors, params_path

    if args.sample_items < 1:
        raise OfflineError("--sample-items must be >= 1")
    settings = Settings.from_env()
    t0 = time.perf_counter()
    ids, vectors = load_vectors(args.vectors, settings.dim)
    queries = None
    if args.log:
        clicks = read_log(args.log, log_format(args))
        _, user, _ = user_settings(args.vectors, settings)
        queries = log_queries(clicks, ids, vectors, user.window, user.half_life,
                              args.queries, args.seed)
        if len(queries) == 0:
            raise OfflineError(f"{args.log}: no user clicked an item of {args.vectors}")
    params, summary, figures = tune_params(vectors, queries, args.target, args.k,
                                           args.seed, ids=ids, progress=not args.quiet,
                                           sample_items=args.sample_items)
    out = Path(args.out) if args.out else params_path(args.vectors)
    write_params(out, params, target_recall=args.target, k=args.k, items=len(ids),
                 queries=0 if queries is None else len(queries), **figures,
                 summary=summary)
    seconds = time.perf_counter() - t0
    print(summary, file=sys.stderr)
    print(f"wrote {out} in {seconds:.1f} s", file=sys.stderr)
    print(json.dumps({"command": "tune", "out": str(out), "params": params.to_dict(),
                      **figures, "seconds": round(seconds, 3)}))
    return 0
