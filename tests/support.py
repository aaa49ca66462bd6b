"""Helpers of the integration tests: polling, and reading a worker's /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from stream.promtext import metric_value, metrics_url, scrape


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
