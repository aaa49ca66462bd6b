"""``recall load``: a vector file into a new live index version in Redis (offline.load),
or onto the items topic; with a click log, the users' windows and popularity too."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from offline.cli.common import format_arg, log_format, run_args, user_settings
from offline.errors import OfflineError
from recall.config import Settings, redacted_url


def add_parser(sub: Any) -> None:
    p = sub.add_parser("load", help="load vectors into Redis and switch the live index",
                       description="Write a new index version to Redis (pipelined), switch "
                       "it live atomically, delete the old one; or publish the vectors to "
                       "the items topic. With --log, bootstrap user windows and popularity.")
    p.add_argument("vectors", help="vector file from `recall train`")
    p.add_argument("--params", help="LSH parameter file (default <vectors stem>.lsh.json)")
    p.add_argument("--log", help="click log: store users' last RECALL_USER_WINDOW clicks "
                   "and replace the popularity counts")
    format_arg(p)
    p.add_argument("--to-kafka", "--to-topic", dest="to_topic", action="store_true",
                   help="publish the vectors to RECALL_TOPIC_ITEMS instead of writing an "
                   "index version")
    p.add_argument("--keep-old", action="store_true", help="keep the previous version")
    p.add_argument("--batch", type=int, default=5000, help="items per pipeline (5000)")
    p.add_argument("--redis-url", help="default REDIS_URL")
    run_args(p, seed=False)
    p.set_defaults(func=run)


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
    chosen, user, source = user_settings(args.vectors, settings)
    clicks = read_log(args.log, log_format(args)) if args.log else None
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
                session_gap=float(user.extra.get("session_gap", settings.user_session_gap)),
                state_format=settings.user_state_format)
            out["popular_items"] = await replace_popular(store, clicks)
            out["users_seconds"] = round(time.perf_counter() - t0, 3)
    finally:
        await store.close()
    return out


def run(args: argparse.Namespace) -> int:
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
