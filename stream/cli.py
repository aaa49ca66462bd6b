"""The online subcommands: ``recall worker``, ``recall demo`` and ``recall bench e2e``.

Only the standard library at module level (``recall --help`` stays fast).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from recall.cli import settings_from_env

log = logging.getLogger(__name__)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the faust worker until SIGINT/SIGTERM (settings from the environment)."""
    import asyncio

    from faust.worker import Worker

    from recall.localstack import create_topics
    from stream.worker import build_worker

    settings = settings_from_env()
    logging.getLogger().setLevel(settings.log_level.upper())
    try:
        # faust does not declare topics here (topic_allow_declare off) and Tansu would
        # auto-create them with 4 partitions: make them with RECALL_TOPIC_PARTITIONS
        asyncio.run(create_topics(settings.kafka_bootstrap, settings.topics.values(),
                                  settings.topic_partitions))
    except Exception as exc:  # e.g. no CreateTopics ACL: the topics may exist already
        log.warning("could not create topics (%s); assuming they exist", exc)
    app, rec = build_worker(settings)
    rec.metrics.serve(settings.metrics_port, settings.metrics_host)
    log.info("metrics on %s:%d/metrics; kafka %s; redis %s", settings.metrics_host,
             settings.metrics_port,
             settings.kafka_bootstrap, settings.redis_url.split("@")[-1])
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True,
                    redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    return run_demo(args)


def cmd_bench_e2e(args: argparse.Namespace) -> int:
    from stream.bench_e2e import run_bench

    return run_bench(args)


def add_parser(sub: Any, bench_sub: Any) -> None:
    p = sub.add_parser("worker", help="run the streaming recall worker (settings: env vars)")
    p.set_defaults(func=cmd_worker)

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
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--external", action="store_true",
                   help="use a running stack and worker (KAFKA_BOOTSTRAP, REDIS_URL, "
                        "RECALL_METRICS_PORT) instead of starting the local one")
    p.add_argument("--freshness", type=int, default=200,
                   help="click-then-recall probes measuring how fast a click shows")
    p.add_argument("--plot", default="", help="write a latency histogram PNG here")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_bench_e2e)
