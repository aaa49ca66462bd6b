"""The clicks consumer: a plain aiokafka consumer that follows the group's request partitions.

Why not a faust agent: at thousands of clicks per second, faust's per-message path (a hop
from the consumer thread to the event loop, tasks and acks per event) cost more than the
click work itself and starved the requests (measured with ``recall bench e2e``).

How it stays correct with many workers: ``clicks`` and ``recall-requests`` have the same
number of partitions and are both keyed by user id, so a user's clicks and requests land
in partitions with the same number. The workers' group (stream.requests) assigns
``recall-requests``; on every assignment this consumer is *assigned* (no group of its
own) the ``clicks`` partitions with the same numbers, and seeks each newly owned one to
the next offset stored in Redis (``{p}:clicks:offsets``), which the worker writes
atomically with the user states of the batch. So one worker owns a user, every click is
applied once, and nothing depends on Kafka's committed offsets for ``clicks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from recall.config import Settings

log = logging.getLogger(__name__)

#: most clicks handled together; the consumer's fetch wait bounds how long the first waits
CLICK_BATCH = 500


class ClicksConsumer:
    """Consumes the ``clicks`` partitions whose numbers this worker owns in the group."""

    def __init__(self, settings: Settings, recaller: Any, client_kwargs: dict | None = None
                 ) -> None:
        self.settings = settings
        self.rec = recaller
        self.topic = settings.topic_clicks
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=max(1, settings.clicks_fetch_wait_ms),
            max_poll_records=CLICK_BATCH, **(client_kwargs or {}))
        self.owned: set[int] = set()
        self.lock = asyncio.Lock()  # held while a batch is applied and while reassigning
        self._task: asyncio.Task | None = None
        self._started = False

    async def start(self) -> None:
        await self.consumer.start()
        self._started = True
        self._task = asyncio.create_task(self._run(), name="clicks-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._started:
            await self.consumer.stop()

    async def own(self, partitions: Iterable[int]) -> None:
        """Consume exactly these partition numbers from now on (after the batch in hand)."""
        wanted = set(partitions)
        async with self.lock:
            gone, new = self.owned - wanted, wanted - self.owned
            if not gone and not new:
                return
            if gone:
                self.rec.on_revoked(gone)
                for p in gone:
                    with contextlib.suppress(KeyError):
                        self.rec.metrics.consumer_lag.remove(self.topic, str(p))
            self.consumer.assign([TopicPartition(self.topic, p) for p in sorted(wanted)])
            if new:
                stored = await self.rec.stored_click_offsets(sorted(new))
                for p in new:
                    # the next offset applied to Redis; 0 = from the start (or the oldest
                    # kept record, auto_offset_reset) for a partition never applied.
                    # handle_clicks skips records below it (a fetch begun before a seek)
                    self.rec.click_offsets[p] = stored.get(p, 0)
                    self.consumer.seek(TopicPartition(self.topic, p), stored.get(p, 0))
            self.owned = wanted
            log.info("clicks partitions owned: %s", sorted(wanted))

    async def _run(self) -> None:
        while True:
            if not self.owned:
                await asyncio.sleep(0.05)
                continue
            try:
                records = await self.consumer.getmany(timeout_ms=200, max_records=CLICK_BATCH)
            except Exception:
                log.exception("fetching clicks failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if not records:
                continue
            async with self.lock:
                batch = [r for tp, rs in records.items() if tp.partition in self.owned
                         for r in rs]
                try:
                    if batch:
                        await self.rec.handle_clicks(batch)
                except Exception:  # a bug, not bad input (that goes to the DLQ): retry
                    log.exception("applying %d clicks failed; retrying them in 1s", len(batch))
                    for tp in records:  # back to the next offset applied to Redis
                        if tp.partition in self.owned:
                            self.consumer.seek(tp, self.rec.click_offsets.get(tp.partition, 0))
                    await asyncio.sleep(1.0)
                    continue
                for tp, rs in records.items():
                    hw = self.consumer.highwater(tp)
                    if hw is not None and tp.partition in self.owned:
                        self.rec.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                            max(0, hw - rs[-1].offset - 1))
            await asyncio.sleep(0)  # let waiting requests in between batches
