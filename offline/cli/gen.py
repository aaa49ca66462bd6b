"""``recall gen``: write a synthetic click log (offline.generate)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from offline.cli.common import format_arg, run_args
from offline.errors import OfflineError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("gen", help="generate a synthetic click log",
                       description="Write a synthetic click log (JSON lines in the clicks "
                       "format, or CSV user_id,item_id,ts,event_id,weight).")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--clicks", type=int, default=500_000)
    p.add_argument("--clusters", type=int, default=None,
                   help="latent interest clusters (default items/50)")
    p.add_argument("--zipf", type=float, default=1.1,
                   help="Zipf exponent of item popularity within a cluster (default 1.1)")
    p.add_argument("--session-clicks", type=float, default=8.0,
                   help="mean clicks per session (default 8)")
    p.add_argument("--noise", type=float, default=0.05,
                   help="share of clicks on random popular items (default 0.05)")
    p.add_argument("--popular-share", type=float, default=0.25,
                   help="share of clicks on globally popular items, whatever the user's "
                   "interests (default 0.25; 0: interest-only clicks)")
    p.add_argument("--popular-zipf", type=float, default=1.0,
                   help="Zipf exponent of that global popularity over all items (1.0)")
    p.add_argument("--trend", type=float, default=1.0,
                   help="drift of the hits: log-normal noise on their weights, drawn anew "
                   "every --trend-days (default 1.0; 0: the same hits all along)")
    p.add_argument("--trend-days", type=float, default=7.0,
                   help="days between two draws of the hits' drift (7)")
    format_arg(p, "default: from the suffix of --out")
    p.add_argument("--out", required=True, help="output file (.jsonl, .csv, optional .gz)")
    run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from offline.clicklog import detect_format, write_log
    from offline.generate import generate_clicks

    out = Path(args.out)
    fmt = detect_format(out, args.format)
    t0 = time.perf_counter()
    try:
        gen = generate_clicks(args.users, args.items, args.clicks, args.seed,
                              clusters=args.clusters, zipf_a=args.zipf,
                              session_clicks=args.session_clicks, noise=args.noise,
                              popular_share=args.popular_share,
                              popular_zipf=args.popular_zipf, trend=args.trend,
                              trend_days=args.trend_days)
    except ValueError as exc:
        raise OfflineError(str(exc)) from None
    write_log(gen.log, out, fmt, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    print(f"wrote {len(gen.log)} clicks of {args.users} users on {args.items} items "
          f"({gen.clusters} interest clusters) to {out} in {seconds:.1f} s", file=sys.stderr)
    print(json.dumps({"command": "gen", "out": str(out), "clicks": len(gen.log),
                      "users": args.users, "items": args.items, "clusters": gen.clusters,
                      "seconds": round(seconds, 3)}))
    return 0
