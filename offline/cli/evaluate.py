"""``recall eval``: next-click recall of LSH, exact search and the baselines on held-out
clicks (offline.evaluate), training and tuning on the training split only."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from offline.cli.common import (
    format_arg,
    k_arg,
    log_format,
    quiet_gensim,
    run_args,
    run_search,
    target_arg,
    train_args,
    train_params,
)
from offline.errors import OfflineError
from recall.config import Settings


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate next-click recall against baselines",
                       description="Hold out each user's last clicks (--protocol last) or "
                       "the clicks after a time cutoff (--protocol time), train on the rest, "
                       "predict the held-out clicks: HitRate/Recall/NDCG/MRR@k and coverage "
                       "with 95%% bootstrap intervals, lift over most-popular, for LSH, "
                       "exact search and the baselines popular, recent-popular, cooc.")
    p.add_argument("log", help="click log")
    format_arg(p)
    p.add_argument("--protocol", choices=["last", "time"], default="last",
                   help="last: each user's last --holdout clicks held out (default); "
                   "time: the clicks after the 1 - --test-fraction ts quantile")
    p.add_argument("--holdout", type=int, default=1,
                   help="clicks held out per user, --protocol last (1)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of clicks (by time) held out, --protocol time (0.1)")
    k_arg(p)
    p.add_argument("--methods", help="comma-separated subset of "
                   "lsh,exact,popular,recent-popular,cooc (default all)")
    p.add_argument("--user-window", type=int, default=None,
                   help="user vector = mean of the last N training clicks "
                   "(default RECALL_USER_WINDOW)")
    p.add_argument("--half-life", type=float, default=None,
                   help="user vector time decay, s (default RECALL_USER_DECAY_HALF_LIFE)")
    p.add_argument("--user-interests", type=int, default=None,
                   help="user interest vectors, one per recent session, results merged by "
                   "score (default RECALL_USER_INTERESTS)")
    p.add_argument("--user-session-gap", type=float, default=None,
                   help="seconds between clicks that start a new session of "
                   "--user-interests (default RECALL_USER_SESSION_GAP)")
    p.add_argument("--seen", type=int, default=50,
                   help="items of a user's last N training clicks are excluded from every "
                   "method and are not targets (50)")
    p.add_argument("--recent-days", type=float, default=7.0,
                   help="recent-popular: days before the query day counted (7)")
    p.add_argument("--cooc-window", type=int, default=5,
                   help="cooc: clicks at most N positions apart co-occur (5)")
    p.add_argument("--cooc-recent", type=int, default=5,
                   help="cooc: the user's last N clicks whose co-clicks count (5)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for the 95%% intervals (1000; 0: none)")
    p.add_argument("--vectors", help="vectors trained on the training split only "
                   "(default: train item2vec on it here)")
    p.add_argument("--params", help="LSH parameter file (default: tune here)")
    target_arg(p, "tuner's target recall@k when tuning here (0.95)")
    p.add_argument("--max-users", type=int, default=10_000,
                   help="test users sampled (10000)")
    p.add_argument("--plot", help="write HitRate@1..k per method (with intervals) to this "
                   "PNG, and the embedding report to NAME-embedding.png")
    train_args(p)
    run_args(p)
    p.set_defaults(func=run)


def _eval_config(args: argparse.Namespace, settings: Any) -> Any:
    from offline.evaluate import EvalConfig
    from offline.model import resolve_user
    from recall.config import set_in_env

    # what a plain `recall train` + load gives the worker, unless given here
    user, _ = resolve_user(settings, set_in_env(), None)
    window = args.user_window if args.user_window is not None else user.window
    half_life = args.half_life if args.half_life is not None else user.half_life
    return EvalConfig(k=args.k, window=window, half_life=half_life, seen=args.seen,
                      max_users=args.max_users, seed=args.seed, bootstrap=args.bootstrap,
                      recent_days=args.recent_days, cooc_window=args.cooc_window,
                      cooc_recent=args.cooc_recent, test_fraction=args.test_fraction,
                      interests=(args.user_interests if args.user_interests is not None
                                 else settings.user_interests),
                      session_gap=(args.user_session_gap if args.user_session_gap is not None
                                   else settings.user_session_gap))


def _eval_split(args: argparse.Namespace, clicks: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(train, test, facts) of the chosen protocol."""
    from offline.evaluate import split_last, time_split

    try:
        if args.protocol == "time":
            train, test, cutoff = time_split(clicks, args.test_fraction, str(args.log))
            return train, test, {"protocol": "time", "cutoff": cutoff}
        train, test = split_last(clicks, args.holdout, str(args.log))
    except ValueError as exc:
        raise OfflineError(str(exc)) from None
    return train, test, {"protocol": "last", "holdout": args.holdout}


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from offline.clicklog import read_log
    from offline.evaluate import evaluate, format_table, plot, split_last
    from offline.train import train_embeddings
    from offline.tune import log_queries, read_params, tune_params
    from offline.vectors import load_vectors

    settings = Settings.from_env()
    quiet_gensim(args)
    t0 = time.perf_counter()
    clicks = read_log(args.log, log_format(args))
    train, test, facts = _eval_split(args, clicks)
    cfg = _eval_config(args, settings)
    methods = tuple(args.methods.split(",")) if args.methods else None
    embed = methods is None or bool({"lsh", "exact"} & set(methods))
    timings: dict[str, float] = {}
    tuned: dict[str, Any] = {}
    ids, vectors, params = None, None, None
    found = None
    if args.search and args.vectors:
        raise OfflineError("--search trains its own vectors: leave out --vectors")
    if args.search and embed:
        # the search sees the training split only; the test clicks are never given to it
        t = time.perf_counter()
        found = run_search(args, train, settings)
        cfg = dataclasses.replace(cfg, window=found.user.window,
                                  half_life=found.user.half_life)
        timings["search_seconds"] = time.perf_counter() - t
    if embed and args.vectors:
        ids, vectors = load_vectors(args.vectors, settings.dim)
    elif embed:
        t = time.perf_counter()
        try:
            ids, vectors = train_embeddings(
                train, found.train if found else train_params(args, settings.dim),
                progress=not args.quiet)
        except ValueError as exc:
            raise OfflineError(f"{args.log} (training split): {exc}") from None
        timings["train_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    if embed and args.params:
        params = read_params(args.params, settings.dim)
    elif embed and (methods is None or "lsh" in methods):
        # tuning queries from training clicks only, and not the very queries evaluated:
        # time protocol: users with no held-out clicks (when there are any); last
        # protocol: every user's window one click earlier
        if facts["protocol"] == "time":
            others = ~np.isin(train.user, np.unique(test.user))
            source = train.take(others) if others.any() else train
        else:
            try:
                source = split_last(train, 1)[0]
            except ValueError:
                source = train
        queries = log_queries(source, ids, vectors, cfg.window, cfg.half_life,
                              seed=args.seed)
        params, summary, tuned = tune_params(vectors, queries if len(queries) else None,
                                             args.target, args.k, args.seed, ids=ids,
                                             progress=not args.quiet)
        print(summary, file=sys.stderr)
        timings["tune_seconds"] = time.perf_counter() - t
    from offline.evaluate import METHODS

    chosen = methods or (METHODS if params is not None else
                         tuple(m for m in METHODS if m != "lsh"))
    details: dict[str, Any] = {}
    try:
        res = evaluate(train, test, ids, vectors, cfg, chosen, params=params,
                       now=facts.get("cutoff"), progress=not args.quiet, details=details)
    except ValueError as exc:
        raise OfflineError(str(exc)) from None
    if args.plot and vectors is not None:
        from offline.report import report

        stem = Path(args.plot)
        res["embedding_plot"] = str(stem.with_name(f"{stem.stem}-embedding{stem.suffix}"))
        res["embedding"] = report(train, ids, vectors, details, res["embedding_plot"],
                                  args.seed)
    if tuned:
        res["tune"] = tuned
    if found is not None:
        res["search"] = found.summary()
    res.update(command="eval", log=str(args.log), clicks=len(clicks), **facts,
               params=None if params is None else params.to_dict(),
               **{k: round(v, 3) for k, v in timings.items()},
               seconds=round(time.perf_counter() - t0, 3))
    print(format_table(res))
    if args.plot:
        plot(res, args.plot)
        print(f"plot: {args.plot}" + (f", embedding report: {res['embedding_plot']}"
                                      if "embedding_plot" in res else ""), file=sys.stderr)
    print(json.dumps(res))
    return 0
