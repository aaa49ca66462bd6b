"""The offline subcommands: ``recall gen | train | tune | load | eval``.

Only the standard library at module level (``recall --help`` stays fast); each command
imports what it needs. Settings (RECALL_DIM, RECALL_USER_WINDOW, REDIS_URL, ...) come
from :class:`recall.config.Settings`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from offline.errors import OfflineError
from recall.config import Settings, redacted_url


def _quiet_gensim(args: argparse.Namespace) -> None:
    """gensim logs every epoch at INFO; keep that for -v only."""
    import logging

    if not getattr(args, "verbose", False):
        logging.getLogger("gensim").setLevel(logging.WARNING)


def _fmt(args: argparse.Namespace) -> str | None:
    return getattr(args, "format", None)


# --- gen ---------------------------------------------------------------------


def cmd_gen(args: argparse.Namespace) -> int:
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


# --- train -------------------------------------------------------------------


def _train_params(args: argparse.Namespace, dim: int) -> Any:
    from offline.train import TrainParams

    return TrainParams(dim=dim, method=args.method or "item2vec", window=args.window,
                       negative=args.negative, ns_exponent=args.ns_exponent,
                       min_count=args.min_count, epochs=args.epochs, sample=args.sample,
                       session_gap=args.session_gap, walks_per_node=args.walks_per_node,
                       walk_length=args.walk_length, p=args.p, q=args.q,
                       pop_weight=args.pop_weight, vectors=args.vectors_of_items,
                       workers=args.workers, seed=args.seed)


def _search(args: argparse.Namespace, train: Any, settings: Any) -> Any:
    """Run the model search on ``train`` (training clicks only); prints its summary. A
    user window / half-life given explicitly (eval's --user-window / --half-life, or the
    RECALL_USER_* variables, which the worker obeys) is fixed, not searched."""
    from offline.model import resolve_user
    from offline.search import SearchConfig, search
    from offline.train import METHODS
    from recall.config import set_in_env

    explicit = set_in_env()
    defaults, _ = resolve_user(settings, explicit, None)
    window = getattr(args, "user_window", None)
    half_life = getattr(args, "half_life", None)
    if window is None and "user_window" in explicit:
        window = settings.user_window
    if half_life is None and "user_decay_half_life" in explicit:
        half_life = settings.user_decay_half_life
    cfg = SearchConfig(
        k=args.k, trials=args.trials, seed=args.seed,
        budget=600.0 if args.budget is None and args.trials is None else args.budget,
        methods=(args.method,) if args.method else METHODS, max_users=args.search_users,
        workers=args.workers, fixed_window=window, fixed_half_life=half_life)
    try:
        result = search(train, _train_params(args, settings.dim), defaults, cfg,
                        progress=not args.quiet)
    except ValueError as exc:
        raise OfflineError(f"{args.log}: search: {exc}") from None
    print(result.describe(args.k), file=sys.stderr)
    return result


def cmd_train(args: argparse.Namespace) -> int:
    from offline.clicklog import read_log
    from offline.model import model_path, resolve_user, write_model
    from offline.train import train_embeddings
    from offline.vectors import save_vectors
    from recall.config import set_in_env

    settings = Settings.from_env()
    _quiet_gensim(args)
    t0 = time.perf_counter()
    clicks = read_log(args.log, _fmt(args))
    t_read = time.perf_counter() - t0
    params = _train_params(args, settings.dim)
    user, _ = resolve_user(settings, set_in_env(), None)
    found = None
    if args.search:
        found = _search(args, clicks, settings)
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


def _user_settings(vectors_path: str, settings: Any) -> tuple[Any, Any, str]:
    """(the model file's user settings or None, the ones the worker will use, source):
    RECALL_USER_WINDOW / _DECAY_HALF_LIFE when set, else the model file's (written by
    `recall train` beside the vectors), else those settings' defaults."""
    from offline.model import UserParams, model_path, read_user_params, resolve_user
    from recall.config import set_in_env

    chosen = read_user_params(model_path(vectors_path))
    user, source = resolve_user(settings, set_in_env(), chosen, UserParams(
        settings.user_window, settings.user_decay_half_life))
    return chosen, user, source


# --- tune --------------------------------------------------------------------


def cmd_tune(args: argparse.Namespace) -> int:
    from offline.clicklog import read_log
    from offline.tune import log_queries, tune_params, write_params
    from offline.vectors import load_vectors, params_path

    settings = Settings.from_env()
    t0 = time.perf_counter()
    ids, vectors = load_vectors(args.vectors, settings.dim)
    queries = None
    if args.log:
        clicks = read_log(args.log, _fmt(args))
        _, user, _ = _user_settings(args.vectors, settings)
        queries = log_queries(clicks, ids, vectors, user.window, user.half_life,
                              args.queries, args.seed)
        if len(queries) == 0:
            raise OfflineError(f"{args.log}: no user clicked an item of {args.vectors}")
    params, summary, figures = tune_params(vectors, queries, args.target, args.k,
                                           args.seed, ids=ids, progress=not args.quiet)
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


# --- load --------------------------------------------------------------------


async def _load(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from offline.clicklog import read_log
    from offline.load import (
        bootstrap_users,
        load_index,
        publish_items,
        replace_popular,
    )
    from offline.tune import read_params
    from offline.vectors import load_vectors, params_path
    from recall.store import Store

    t0 = time.perf_counter()
    ids, vectors = load_vectors(args.vectors, settings.dim)
    # the user-vector settings trained with the vectors go into the version; the users'
    # windows are bootstrapped as the worker will keep them (an explicit env var wins)
    chosen, user, source = _user_settings(args.vectors, settings)
    clicks = read_log(args.log, _fmt(args)) if args.log else None
    out: dict[str, Any] = {"command": "load", "items": len(ids),
                           "user": user.to_dict(), "user_source": source,
                           "read_seconds": round(time.perf_counter() - t0, 3)}
    if args.to_topic:
        await publish_items(settings, ids, vectors, progress=not args.quiet)
        out["topic"] = settings.topic_items
        if clicks is None:
            return out
    else:
        params = read_params(args.params or params_path(args.vectors), settings.dim)
    store = Store.from_url(args.redis_url or settings.redis_url, settings.redis_prefix)
    try:
        if not args.to_topic:
            t0 = time.perf_counter()
            version, previous = await load_index(
                store, ids, vectors, params, args.batch, args.keep_old,
                progress=not args.quiet, user=None if chosen is None else chosen.to_dict())
            out.update(version=version, previous=previous,
                       index_seconds=round(time.perf_counter() - t0, 3))
        if clicks is not None:
            t0 = time.perf_counter()
            out["users"] = await bootstrap_users(
                store, clicks, ids, vectors, user.window, user.half_life,
                progress=not args.quiet,
                interests=int(user.extra.get("interests", settings.user_interests)),
                session_gap=float(user.extra.get("session_gap", settings.user_session_gap)))
            out["popular_items"] = await replace_popular(store, clicks)
            out["users_seconds"] = round(time.perf_counter() - t0, 3)
    finally:
        await store.close()
    return out


def cmd_load(args: argparse.Namespace) -> int:
    import asyncio

    from aiokafka.errors import KafkaError
    from redis.exceptions import RedisError

    settings = Settings.from_env()
    t0 = time.perf_counter()
    try:
        out = asyncio.run(_load(args, settings))
    except RedisError as exc:
        raise OfflineError(f"redis {redacted_url(args.redis_url or settings.redis_url)}: "
                           f"{exc}") from None
    except KafkaError as exc:
        raise OfflineError(f"kafka {settings.kafka_bootstrap}: {exc}") from None
    except OSError as exc:
        raise OfflineError(f"redis/kafka: {exc}") from None
    out["seconds"] = round(time.perf_counter() - t0, 3)
    where = (f"topic {out['topic']}" if "topic" in out
             else f"index version {out['version']} (live; previous {out['previous']})")
    print(f"loaded {out['items']} items into {where}"
          + (f"; {out['users']} user windows, {out['popular_items']} popular counts"
             if "users" in out else "")
          + f" in {out['seconds']:.1f} s", file=sys.stderr)
    print(json.dumps(out))
    return 0


# --- eval --------------------------------------------------------------------


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


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from offline.clicklog import read_log
    from offline.evaluate import evaluate, format_table, plot, split_last
    from offline.train import train_embeddings
    from offline.tune import log_queries, read_params, tune_params
    from offline.vectors import load_vectors

    settings = Settings.from_env()
    _quiet_gensim(args)
    t0 = time.perf_counter()
    clicks = read_log(args.log, _fmt(args))
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
        found = _search(args, train, settings)
        cfg = dataclasses.replace(cfg, window=found.user.window,
                                  half_life=found.user.half_life)
        timings["search_seconds"] = time.perf_counter() - t
    if embed and args.vectors:
        ids, vectors = load_vectors(args.vectors, settings.dim)
    elif embed:
        t = time.perf_counter()
        try:
            ids, vectors = train_embeddings(
                train, found.train if found else _train_params(args, settings.dim),
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


# --- parsers -----------------------------------------------------------------


def _log_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["jsonl", "csv"],
                   help="log format (default: from the suffix, .csv[.gz] = csv, else jsonl)")


def _train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("embeddings (gensim Word2Vec, skip-gram, negative sampling)")
    g.add_argument("--method", choices=["item2vec", "deepwalk", "node2vec"],
                   help="sequences: sessions (item2vec) or random walks on the co-click "
                   "graph (default item2vec; with --search: searched among all three)")
    g.add_argument("--window", type=int, default=5, help="context window (default 5)")
    g.add_argument("--negative", type=int, default=5, help="negative samples (default 5)")
    g.add_argument("--ns-exponent", type=float, default=0.5,
                   help="negative sampling by count**x; may be negative (default 0.5)")
    g.add_argument("--min-count", type=int, default=1,
                   help="items clicked fewer times get no vector (default 1)")
    g.add_argument("--epochs", type=int, default=10, help="passes (default 10)")
    g.add_argument("--sample", type=float, default=1e-3,
                   help="down-sampling of frequent items (default 1e-3)")
    g.add_argument("--session-gap", type=float, default=1800.0,
                   help="cut a user's sequence at gaps longer than this, s (default 1800)")
    g.add_argument("--walks-per-node", type=int, default=10,
                   help="deepwalk/node2vec: walks started per item (default 10)")
    g.add_argument("--walk-length", type=int, default=20,
                   help="deepwalk/node2vec: items per walk (default 20)")
    g.add_argument("--p", type=float, default=1.0, help="node2vec return parameter (1)")
    g.add_argument("--q", type=float, default=1.0, help="node2vec in-out parameter (1)")
    g.add_argument("--pop-weight", type=float, default=1.9,
                   help="weight of a popularity component in the vectors (one of the "
                   "RECALL_DIM dimensions): recall leans to popular items; 0 = none "
                   "(default 1.9)")
    g.add_argument("--item-vectors", dest="vectors_of_items", default="in+out",
                   choices=["in", "out", "in+out"],
                   help="skip-gram's input vectors, output vectors or their sum "
                   "(default in+out)")
    g.add_argument("--workers", type=int, default=2,
                   help="training threads (default 2; 1 is bit-reproducible with --seed)")
    s = p.add_argument_group("model search (optuna; objective: HitRate@k on the last "
                             "training click of each user)")
    s.add_argument("--search", action="store_true",
                   help="search embedding and user-vector settings (--budget/--trials)")
    s.add_argument("--budget", type=float, default=None,
                   help="search time, s (a running trial finishes; default 600 unless "
                   "--trials)")
    s.add_argument("--trials", type=int, default=None, help="search trials (default: budget)")
    s.add_argument("--search-users", type=int, default=2000,
                   help="validation users scored per trial (2000)")


def add_parser(sub: Any, bench_sub: Any) -> None:
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["jsonl", "csv"],
                   help="default: from the suffix of --out")
    p.add_argument("--out", required=True, help="output file (.jsonl, .csv, optional .gz)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_gen)

    p = sub.add_parser("train", help="train item2vec vectors on a click log",
                       description="item2vec over users' time-ordered click sessions; "
                       "writes an .npz with 'ids' and L2-normalised float32 'vectors' "
                       "(dimension RECALL_DIM).")
    p.add_argument("log", help="click log (.jsonl / .csv, optional .gz)")
    p.add_argument("--out", required=True, help="vector file to write (.npz); the settings "
                   "go beside it (<stem>.model.json)")
    _log_args(p)
    _train_args(p)
    p.add_argument("-k", type=int, default=10, help="k of the search's HitRate@k (10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="pick LSH parameters for a vector file",
                       description="Run the LSH tuner for a target recall@k on users' "
                       "rolling vectors from --log; writes <vectors>.lsh.json.")
    p.add_argument("vectors", help="vector file from `recall train`")
    p.add_argument("--log", help="click log whose users' rolling vectors are the queries")
    _log_args(p)
    p.add_argument("--target", type=float, default=0.95, help="target recall@k (0.95)")
    p.add_argument("-k", type=int, default=10, help="k of recall@k (10)")
    p.add_argument("--queries", type=int, default=2000, help="queries sampled (2000)")
    p.add_argument("--out", help="parameter file (default <vectors stem>.lsh.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("load", help="load vectors into Redis and switch the live index",
                       description="Write a new index version to Redis (pipelined), switch "
                       "it live atomically, delete the old one; or publish the vectors to "
                       "the items topic. With --log, bootstrap user windows and popularity.")
    p.add_argument("vectors", help="vector file from `recall train`")
    p.add_argument("--params", help="LSH parameter file (default <vectors stem>.lsh.json)")
    p.add_argument("--log", help="click log: store users' last RECALL_USER_WINDOW clicks "
                   "and replace the popularity counts")
    _log_args(p)
    p.add_argument("--to-kafka", "--to-topic", dest="to_topic", action="store_true",
                   help="publish the vectors to RECALL_TOPIC_ITEMS instead of writing an "
                   "index version")
    p.add_argument("--keep-old", action="store_true", help="keep the previous version")
    p.add_argument("--batch", type=int, default=5000, help="items per pipeline (5000)")
    p.add_argument("--redis-url", help="default REDIS_URL")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("eval", help="evaluate next-click recall against baselines",
                       description="Hold out each user's last clicks (--protocol last) or "
                       "the clicks after a time cutoff (--protocol time), train on the rest, "
                       "predict the held-out clicks: HitRate/Recall/NDCG/MRR@k and coverage "
                       "with 95%% bootstrap intervals, lift over most-popular, for LSH, "
                       "exact search and the baselines popular, recent-popular, cooc.")
    p.add_argument("log", help="click log")
    _log_args(p)
    p.add_argument("--protocol", choices=["last", "time"], default="last",
                   help="last: each user's last --holdout clicks held out (default); "
                   "time: the clicks after the 1 - --test-fraction ts quantile")
    p.add_argument("--holdout", type=int, default=1,
                   help="clicks held out per user, --protocol last (1)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of clicks (by time) held out, --protocol time (0.1)")
    p.add_argument("-k", type=int, default=10)
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
    p.add_argument("--target", type=float, default=0.95,
                   help="tuner's target recall@k when tuning here (0.95)")
    p.add_argument("--max-users", type=int, default=10_000,
                   help="test users sampled (10000)")
    p.add_argument("--plot", help="write HitRate@1..k per method (with intervals) to this "
                   "PNG, and the embedding report to NAME-embedding.png")
    _train_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)
