"""The online subcommand: ``recall worker``.

Only the standard library at module level (``recall --help`` stays fast).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the faust worker until SIGINT/SIGTERM (settings from the environment).

    Logs the start-up's steps ("start-up: ..."): ``recall bench restart`` reads their
    times to split a restart into the process's own start and the wait for the group."""
    import asyncio

    log.info("start-up: interpreter and command line ready")
    from faust.worker import Worker

    from recall.config import Settings, kafka_client_kwargs, redacted_url
    from stream.kafka import create_topics
    from stream.preflight import preflight
    from stream.worker import build_worker

    settings = Settings.from_env()
    logging.getLogger().setLevel(settings.log_level.upper())
    log.info("start-up: modules imported")
    try:
        # faust does not declare topics here (topic_allow_declare off) and Tansu would
        # auto-create them with 4 partitions: make them with RECALL_TOPIC_PARTITIONS
        asyncio.run(create_topics(settings.kafka_bootstrap, settings.topics.values(),
                                  settings.topic_partitions, **kafka_client_kwargs(settings)))
    except Exception as exc:  # e.g. no CreateTopics ACL: the topics may exist already
        log.warning("could not create topics (%s); checking they exist", exc)
    # fail here, with the reason (StartupError: exit 2), not log Ready and answer nothing
    asyncio.run(preflight(settings, kafka_client_kwargs(settings)))
    log.info("start-up: topics, broker and redis checked")
    app, metrics = build_worker(settings)
    metrics.serve(settings.metrics_port, settings.metrics_host)
    log.info("metrics on %s:%d/metrics; kafka %s; redis %s", settings.metrics_host,
             settings.metrics_port,
             settings.kafka_bootstrap, redacted_url(settings.redis_url))
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True,
                    redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def add_parser(sub: Any, bench_sub: Any) -> None:
    p = sub.add_parser("worker", help="run the streaming recall worker (settings: env vars)")
    p.set_defaults(func=cmd_worker)
