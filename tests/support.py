"""Helpers of the integration tests: settings of their own, polling, reading /metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from devtools.localstack import LocalStack, free_port
from devtools.scrape import metric_value, metrics_url, scrape
from recall.config import Settings


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
