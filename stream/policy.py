"""The consumers' one error policy.

- A bad message (unparseable, invalid, too big) goes to the DLQ through
  :meth:`DeadLetters.send`, which never raises: a message that cannot be dead-lettered is
  logged and skipped, so it cannot hold up its partition; the rest of its batch is handled.
- A failing batch (Redis down, a bug) is logged, its partitions are rewound to where the
  batch began (:func:`rewind`: nothing after the last durable position is skipped) and
  retried after a pause. A broker error while fetching is logged and the fetch retried.
  No error ends a consumer's task, so nothing blocks a partition for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import TopicPartition

from recall.config import Settings
from recall.messages import Invalid, dlq_record
from stream.metrics import Metrics

log = logging.getLogger(__name__)

#: async (topic, key, value) -> the record's delivery future (acknowledged by the broker)
Send = Callable[[str, bytes | None, bytes], Awaitable["asyncio.Future[Any]"]]

#: longest Kafka key copied onto a DLQ record (a longer one is in the record, truncated)
MAX_DLQ_KEY_BYTES = 1024
#: seconds before a failed batch is fetched again
RETRY_PAUSE = 1.0
#: seconds before a failed fetch is tried again
FETCH_PAUSE = 0.5


class DeadLetters:
    """Writes unusable messages to the DLQ topic (one function for all three consumers)."""

    def __init__(self, settings: Settings, metrics: Metrics, send: Send) -> None:
        self.topic = settings.topic_dlq
        self.metrics = metrics
        self._send = send

    async def send(self, record: Any, exc: Invalid) -> None:
        """Dead-letter one Kafka record (``topic``, ``partition``, ``offset``, ``key``,
        ``value``) that failed with ``exc``. Never raises (see the module docstring)."""
        topic, partition, offset = record.topic, record.partition, record.offset
        raw, key = record.value, record.key
        self.metrics.invalid.labels(topic, exc.reason).inc()
        log.info("DLQ %s[%d]@%d: %s", topic, partition, offset, exc.reason)
        try:
            value = dlq_record(topic, partition, offset, exc.reason, exc.message, raw, key)
            dlq_key = key if key is None or len(key) <= MAX_DLQ_KEY_BYTES else None
            await self._send(self.topic, dlq_key, value)
        except Exception:
            log.exception("could not write %s[%d]@%d (%d bytes) to the DLQ; skipped",
                          topic, partition, offset, len(raw or b""))


def batch_starts(records: Mapping[TopicPartition, list[Any]]) -> dict[TopicPartition, int]:
    """Where each partition's part of a fetched batch begins."""
    return {tp: rs[0].offset for tp, rs in records.items() if rs}


async def rewind(consumer: Any, positions: Mapping[TopicPartition, int], what: str,
                 n: int) -> None:
    """A batch of ``n`` records failed: log it, seek its partitions back to
    ``positions`` (the last durable ones) and pause before it is fetched again."""
    log.exception("%s: a batch of %d failed; retrying it in %.0fs", what, n, RETRY_PAUSE)
    for tp, offset in positions.items():
        try:
            consumer.seek(tp, offset)
        except Exception:  # e.g. no longer assigned: its next owner starts from Redis
            log.warning("%s: cannot rewind %s[%d]", what, tp.topic, tp.partition)
    await asyncio.sleep(RETRY_PAUSE)


async def fetch(consumer: Any, what: str, **kwargs: Any) -> dict[TopicPartition, list[Any]]:
    """``consumer.getmany(**kwargs)``; a broker error is logged and gives an empty fetch
    after a pause (it must not end the task)."""
    try:
        return await consumer.getmany(**kwargs)
    except Exception:
        log.exception("fetching %s failed; retrying", what)
        await asyncio.sleep(FETCH_PAUSE)
        return {}
