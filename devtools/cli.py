"""The dev tools' subcommands: ``recall demo``, ``recall bench e2e | index | store | ...``.

Only the standard library at module level (``recall --help`` stays fast).
"""

from __future__ import annotations

import argparse
from typing import Any

from devtools import (
    bench_clicks,
    bench_index,
    bench_restart,
    bench_store,
    bench_watch_live,
    realdata,
)
from devtools.e2e import capacity
from devtools.e2e.traffic import add_warm_clicks_argument
from devtools.localstack import add_broker_argument


def cmd_demo(args: argparse.Namespace) -> int:
    from devtools.demo import run_demo

    return run_demo(args)


def cmd_bench_e2e(args: argparse.Namespace) -> int:
    from devtools.e2e.run import run_bench

    return run_bench(args)


def add_parser(sub: Any, bench_sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="local broker + Redis + worker + demo traffic; prints recalls and latency")
    p.add_argument("--external", action="store_true",
                   help="use the broker/Redis/worker of the environment (KAFKA_BOOTSTRAP, "
                        "REDIS_URL) instead of starting a local stack")
    p.add_argument("--items", type=int, default=20_000, help="catalogue size (default 20000)")
    p.add_argument("--users", type=int, default=2_000, help="users (default 2000)")
    p.add_argument("--rate", type=float, default=50.0, help="recall requests per second")
    p.add_argument("--click-rate", type=float, default=200.0, help="clicks per second")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--metrics-url", default="",
                   help="the worker's /metrics, for worker-side figures (default: "
                        "http://127.0.0.1:RECALL_METRICS_PORT/metrics)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = bench_sub.add_parser(
        "e2e", help="end-to-end latency through Kafka: requests at a steady rate, clicks flowing")
    p.add_argument("--items", type=int, default=100_000, help="catalogue size")
    p.add_argument("--rate", type=float, default=500.0, help="recall requests per second")
    p.add_argument("--click-rate", type=float, default=5000.0, help="clicks per second")
    p.add_argument("--seconds", type=float, default=20.0, help="measured duration")
    p.add_argument("--users", type=int, default=20_000)
    add_warm_clicks_argument(p)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--external", action="store_true",
                   help="use a running stack and worker (KAFKA_BOOTSTRAP, REDIS_URL, "
                        "RECALL_METRICS_PORT) instead of starting the local one")
    p.add_argument("--freshness", type=int, default=200,
                   help="click-then-recall probes measuring how fast a click shows")
    p.add_argument("--plot", default="", help="write a latency histogram PNG here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pin-worker", type=int, default=None, metavar="CPU",
                   help="run the worker alone on this CPU, the broker, Redis and the load "
                        "on the others (figures per worker core)")
    p.add_argument("--py-spy", default="", metavar="FILE",
                   help="record the worker with py-spy (200 Hz, not pausing it) during the "
                        "measured phase into this speedscope JSON file (local stack only)")
    p.add_argument("--settle", type=float, default=180.0, metavar="SECONDS",
                   help="before the phase, requests (at most 25/s) until the worker's recall "
                        "monitor holds its target, for at most this long: the phase is then "
                        "measured at the probes the worker settles on (0: measure at once)")
    p.add_argument("--broker-floor", action="store_true",
                   help="after the phase, the broker alone under the same request traffic "
                        "(single records at --rate for --seconds, the worker idle): its "
                        "produce -> fetch latency, the floor of a request's way in (local "
                        "stack only)")
    add_broker_argument(p)
    p.set_defaults(func=cmd_bench_e2e)

    bench_index.add_parser(sub, bench_sub)
    bench_clicks.add_parser(sub, bench_sub)
    bench_store.add_parser(sub, bench_sub)
    bench_restart.add_parser(sub, bench_sub)
    capacity.add_parser(sub, bench_sub)
    bench_watch_live.add_parser(sub, bench_sub)

    realdata.add_parser(sub)
