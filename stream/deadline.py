"""The request deadline: how long a request may wait for Redis before it is answered
``status: error`` (RECALL_REQUEST_DEADLINE_MS).

A request whose user is in the worker's memory never waits for Redis. One whose user
must be read gets the time left of its deadline, counted from its Kafka timestamp (so
requests queued behind a slow batch do not wait twice), less a margin for answering,
and never less than :data:`REDIS_MIN_WAIT`: a worker running late must not turn a
healthy Redis into errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable

from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: seconds of a request's deadline kept for answering after its Redis read
ANSWER_MARGIN = 0.05
#: seconds a Redis read for requests always gets, however late they were read
REDIS_MIN_WAIT = 0.1


def budget(deadline_ms: int, sent: Iterable[float | None], now: float | None = None) -> float:
    """Seconds a Redis read may take for requests sent at ``sent`` (Kafka timestamps,
    epoch seconds; None = unknown, counted as now)."""
    now = time.time() if now is None else now
    deadline = deadline_ms / 1000.0
    oldest = min([ts for ts in sent if ts] or [now])
    return max(REDIS_MIN_WAIT, min(deadline, oldest + deadline - now) - ANSWER_MARGIN)


async def by_deadline(read: Awaitable[object], seconds: float) -> str | None:
    """Await ``read`` for at most ``seconds``: None when it completed, else the reason
    Redis could not be used (the ``error`` text of the responses)."""
    try:
        await asyncio.wait_for(read, seconds)
    except (TimeoutError, RedisError, OSError) as exc:
        why = ("redis unavailable: no answer within the request deadline"
               if isinstance(exc, TimeoutError) else
               f"redis unavailable: {type(exc).__name__}: {exc}"[:300])
        log.warning("users not in memory could not be read (%s): error responses", why)
        return why
    return None
