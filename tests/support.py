"""Helpers of the integration tests: polling, and reading a worker's /metrics."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from typing import Any


def metric(port: int, name: str) -> float:
    """Sum of a metric's samples on the worker's /metrics (0 if absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


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
