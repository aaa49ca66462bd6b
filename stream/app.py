"""The faust application: the worker's process, services and producer (no agents).

faust runs the worker (``faust.worker.Worker``: signals, logging, the service tree that
starts and stops :class:`stream.worker.Worker`) and owns the Kafka producer of responses
and DLQ records. Its own group consumer is turned off: the topics are read by plain
aiokafka consumers in the same event loop (stream.requests, stream.clicks, stream.items),
because faust's consumer reads in a thread and passes each record through a stream, an
event and an ack: at the design load that costs as much CPU as the recall itself, and the
two threads fight over the GIL (measurements: docs/design.md, "Why no faust agents").
A fetch's requests are answered together instead.

- producer linger 0: a lone response is sent at once;
- ``stream_publish_on_commit`` off: a response does not wait for the next commit;
- values are decoded by recall.messages from raw bytes, so a bad value goes to the DLQ
  instead of crashing.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.app.base import BootStrategy

from recall.config import Settings
from stream.kafka import faust_credentials


def broker_url(bootstrap: str) -> list[str]:
    return [f"kafka://{hp.strip()}" for hp in bootstrap.split(",") if hp.strip()]


def build_app(settings: Settings) -> faust.App:
    """A faust App configured for low latency from ``settings`` (see module docstring)."""
    session = float(settings.kafka_session_timeout)
    web: dict[str, Any] = (
        {"web_enabled": False} if settings.web_port == 0
        else {"web_host": settings.web_host, "web_port": settings.web_port,
              "web_bind": settings.web_host}
    )
    app = faust.App(
        settings.app_id,
        broker=broker_url(settings.kafka_bootstrap),
        broker_credentials=faust_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        autodiscover=False,
        processing_guarantee="at_least_once",
        producer_linger=0.0,
        producer_acks=1,
        stream_publish_on_commit=False,
        stream_wait_empty=False,
        stream_recovery_delay=0.0,
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session,
        broker_heartbeat_interval=max(0.1, session / 5),
        broker_rebalance_timeout=max(session, 2.0),
        broker_request_timeout=max(40.0, session * 2),
        broker_commit_interval=1.0,
        consumer_max_fetch_size=4 * 1024 * 1024,
        **web,
    )
    # no faust group consumer: stream.requests reads recall-requests (see the docstring)
    app.boot_strategy = BootStrategy(app, enable_kafka_consumer=False)
    return app
