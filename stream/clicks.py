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
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from recall.config import Settings
from recall.messages import Invalid, parse_click
from stream.metrics import Metrics
from stream.policy import DeadLetters, fetch, rewind
from stream.service import CLICK_CHUNK, ClickAt, RecallService, turn

log = logging.getLogger(__name__)

#: most clicks handled together; the consumer's fetch wait bounds how long the first waits
CLICK_BATCH = 500


class ClicksConsumer:
    """Consumes the ``clicks`` partitions whose numbers this worker owns in the group."""

    def __init__(self, settings: Settings, service: RecallService, dead_letters: DeadLetters,
                 metrics: Metrics, client_kwargs: dict | None = None) -> None:
        self.settings = settings
        self.service = service
        self.dead_letters = dead_letters
        self.metrics = metrics
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
                self.service.drop_partitions(gone)
                for p in gone:
                    with contextlib.suppress(KeyError):
                        self.metrics.consumer_lag.remove(self.topic, str(p))
            self.consumer.assign([TopicPartition(self.topic, p) for p in sorted(wanted)])
            if new:
                # from the next offset applied to Redis; 0 = from the start (or the oldest
                # kept record, auto_offset_reset) for a partition never applied. apply()
                # skips records below it (a fetch begun before the seek)
                for p, offset in (await self.service.take_partitions(new)).items():
                    self.consumer.seek(TopicPartition(self.topic, p), offset)
            self.owned = wanted
            log.info("clicks partitions owned: %s", sorted(wanted))

    async def _run(self) -> None:
        while True:
            if not self.owned:
                await asyncio.sleep(0.05)
                continue
            records = await fetch(self.consumer, "clicks", timeout_ms=200,
                                  max_records=CLICK_BATCH)
            if not records:
                continue
            async with self.lock:
                mine = {tp: rs for tp, rs in records.items() if tp.partition in self.owned}
                try:
                    if mine:
                        await self._apply(mine)
                except Exception:  # Redis or a bug (bad input went to the DLQ): retry
                    try:
                        stored = await self.service.take_partitions(tp.partition for tp in mine)
                    except Exception:  # Redis still down: its offsets are read next time
                        stored = {tp.partition: rs[0].offset for tp, rs in mine.items()}
                    await rewind(self.consumer, {tp: stored[tp.partition] for tp in mine},
                                 "clicks", sum(len(rs) for rs in mine.values()))
                    continue
                for tp, rs in mine.items():
                    hw = self.consumer.highwater(tp)
                    if hw is not None:
                        self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                            max(0, hw - rs[-1].offset - 1))
            await asyncio.sleep(0)  # let waiting requests in between batches

    async def _apply(self, records: dict[TopicPartition, list[Any]]) -> None:
        """Parse (bad clicks to the DLQ) and apply one fetch's clicks."""
        limit = self.settings.max_message_bytes
        clicks: list[ClickAt] = []
        through: dict[int, int] = {}
        n = 0
        for tp, rs in records.items():
            through[tp.partition] = rs[-1].offset + 1
            for r in rs:
                n += 1
                if not n % CLICK_CHUNK:
                    await turn()  # waiting requests go first (stream.service)
                ts = r.timestamp / 1000.0 if r.timestamp else time.time()
                try:
                    clicks.append(ClickAt(r.partition, r.offset, parse_click(r.value, ts, limit)))
                except Invalid as exc:
                    await self.dead_letters.send(r, exc)
        await self.service.apply(clicks, through)
