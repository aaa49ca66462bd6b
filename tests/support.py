"""Helpers of the integration tests: settings of their own, a worker and a client on
them, polling, reading /metrics and the stored user states."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from devtools.client import RecallClient
from devtools.localstack import LocalStack, Service, create_topics, free_port, start_worker
from devtools.scrape import metric_value, metrics_url, scrape
from recall.config import Settings
from recall.userstate import UserState


def isolated_settings(stack: LocalStack, name: str, own_topics: bool = True,
                      **overrides: Any) -> Settings:
    """Settings for a worker on the test stack that shares nothing with other tests: its
    own consumer group, Redis prefix, metrics port and (``own_topics``) topic names; web
    server off; a 2 s session timeout, so a worker is ready (and fails over) quickly."""
    tag = uuid.uuid4().hex[:8]
    topics = ({f"topic_{t}": f"{t}-{tag}" for t in ("clicks", "items", "requests",
                                                     "responses", "dlq")}
              if own_topics else {})
    values: dict[str, Any] = {
        "kafka_bootstrap": stack.bootstrap, "redis_url": stack.redis_url,
        "metrics_port": free_port(), "metrics_host": "127.0.0.1", "web_port": 0,
        "kafka_session_timeout": 2.0,
        "app_id": f"recall-{name}-{tag}", "redis_prefix": f"{name}-{tag}",
        "log_level": "INFO", **topics}
    values.update(overrides)
    return Settings(**values)


def metric(port: int, name: str) -> float:
    """Sum of a metric's samples on the worker's /metrics (0 if absent or unreachable)."""
    return metric_value(scrape(metrics_url(port)), name)


async def eventually(check: Callable[[], Any], timeout: float = 15.0, every: float = 0.1) -> Any:
    """Poll an async or sync ``check`` until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


def running_worker(settings: Settings, workdir: Path, log_tail: int = 4000
                   ) -> Iterator[Service]:
    """A module fixture's worker: its topics created (RECALL_TOPIC_PARTITIONS each), one
    ``recall worker`` process on ``settings``, stopped afterwards by its process id (a
    test may swap in a new process as ``.proc``) and the tail of its log printed."""
    asyncio.run(create_topics(settings.kafka_bootstrap, settings.topics.values(),
                              settings.topic_partitions))
    log = workdir / "worker.log"
    svc = start_worker(settings.environ(), log, settings.metrics_port)
    yield svc
    svc.stop()
    print(log.read_text()[-log_tail:])


@contextlib.asynccontextmanager
async def ready_client(settings: Settings, ids: Sequence[str] = (),
                       vectors: np.ndarray | None = None, read_dlq: bool = False
                       ) -> AsyncIterator[RecallClient]:
    """A client once the worker answers, with the catalogue ``ids``/``vectors`` (if any)
    sent to the items topic and in the worker's index."""
    client = RecallClient(settings)
    await client.start(read_dlq=read_dlq)
    try:
        await client.wait_ready(60)
        if len(ids):
            await client.upsert_items(ids, vectors)
            await eventually(lambda: metric(settings.metrics_port, "recall_index_items")
                             >= len(ids), 30)
        yield client
    finally:
        await client.stop()


def stored_user(r: redis.Redis, settings: Settings, uid: str) -> UserState | None:
    """A user's state as the worker stored it in Redis (the documented key), or None."""
    raw = r.get(f"{settings.redis_prefix}:user:{uid}")
    return None if raw is None else UserState.from_bytes(raw, settings.dim)
