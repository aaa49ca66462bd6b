"""The recall-requests consumer: the worker group's membership and its hot path.

A plain aiokafka group consumer (group id ``RECALL_APP_ID``) in the worker's event loop.
Each fetch's records are answered together (:meth:`stream.worker.Recaller.handle_requests`):
one Redis read for the users not in memory, then every request from memory, the
responses handed to the producer in one go (they leave as one produce request per
partition). A lone request is never held back: the fetch returns as soon as it arrives.

Why not a faust agent: faust reads in a consumer *thread* and hands each record to the
event loop, through a stream, one event and ack at a time. At 500 requests/s with 5,000
clicks/s flowing that path cost as much CPU as the recall work itself, the two threads
fought over the GIL, and requests queued for hundreds of ms before a 1 ms answer
(``recall bench e2e``, see the README).

The group's assignment drives everything else a worker owns: on every rebalance
:meth:`Recaller.own_partitions` moves the ``clicks`` partitions (and the ``items``
partitions it writes to Redis) to the same numbers. Offsets are committed about every
``COMMIT_INTERVAL`` seconds and when partitions are revoked, always *after* the responses
of the committed requests were acknowledged by the broker: a crash may answer a request
twice, never drop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from recall.config import Settings

log = logging.getLogger(__name__)

#: most requests answered together (all that are waiting, up to this many)
REQUEST_BATCH = 500
#: seconds between offset commits (and lag gauge refreshes)
COMMIT_INTERVAL = 1.0


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: RequestsConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.owner.on_assigned({tp.partition for tp in assigned})


class RequestsConsumer:
    """Reads ``recall-requests`` as a member of the workers' group and answers them."""

    def __init__(self, settings: Settings, recaller: Any, client_kwargs: dict | None = None
                 ) -> None:
        self.settings = settings
        self.rec = recaller
        self.topic = settings.topic_requests
        session_ms = int(settings.kafka_session_timeout * 1000)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=settings.app_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=max(1, settings.fetch_max_wait_ms),
            max_poll_records=REQUEST_BATCH, session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 5),
            rebalance_timeout_ms=max(session_ms, 2000),
            **(client_kwargs or {}))
        self.owned: set[int] = set()
        self.done: dict[int, int] = {}  # partition -> next offset answered, not committed
        self.in_flight: list[asyncio.Future] = []  # deliveries of responses since a commit
        self.lock = asyncio.Lock()  # held while a batch is answered and while committing
        self._tasks: list[asyncio.Task] = []
        self._started = False

    def track(self, delivery: asyncio.Future) -> None:
        """A response's (or DLQ record's) delivery, awaited before the next commit."""
        self.in_flight.append(delivery)

    async def start(self) -> None:
        await self.consumer.start()
        self._started = True
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        self._tasks = [asyncio.create_task(self._run(), name="requests-consumer"),
                       asyncio.create_task(self._commit_loop(), name="requests-commit")]

    async def stop(self) -> None:
        """Finish the batch in hand, commit, and leave the group (others take over now)."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._started:
            async with self.lock:
                await self._commit(set(self.done))
            await self.consumer.stop()

    async def on_assigned(self, partitions: set[int]) -> None:
        self.owned = set(partitions)
        log.info("recall-requests partitions assigned: %s", sorted(partitions))
        await self.rec.own_partitions(set(partitions))

    async def on_revoked(self, partitions: set[int]) -> None:
        async with self.lock:  # the batch in hand is answered first
            await self._commit(partitions)
        for p in partitions:
            self.done.pop(p, None)
            with contextlib.suppress(KeyError):
                self.rec.metrics.consumer_lag.remove(self.topic, str(p))
        self.owned -= partitions
        # stop applying their clicks now: the next owner may start before our assignment
        await self.rec.own_partitions(set(self.owned))

    async def _run(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=1000,
                                                      max_records=REQUEST_BATCH)
            except Exception:  # a broker error must not end the task that answers requests
                log.exception("fetching requests failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if not batches:
                continue
            async with self.lock:
                records = [r for rs in batches.values() for r in rs]
                try:
                    await self.rec.handle_requests(records)
                except Exception:  # handle_requests answers each; this is a last resort
                    log.exception("%d requests could not be answered", len(records))
                for tp, rs in batches.items():
                    self.done[tp.partition] = rs[-1].offset + 1
                    self._lag(tp, rs[-1].offset + 1)

    def _lag(self, tp: TopicPartition, position: int) -> None:
        hw = self.consumer.highwater(tp)
        if hw is not None:
            self.rec.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, hw - position))

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            try:
                async with self.lock:
                    await self._commit(set(self.done))
                # an idle partition's lag too (the gauge must not freeze at its last value)
                for tp in self.consumer.assignment():
                    if tp.partition not in self.done:
                        self._lag(tp, await self.consumer.position(tp))
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. a partition revoked meanwhile; commit next time
                log.warning("requests commit/lag refresh failed; retrying", exc_info=True)

    async def _commit(self, partitions: set[int]) -> None:
        """Commit the answered offsets of ``partitions`` once their responses are acked."""
        offsets = {TopicPartition(self.topic, p): self.done[p]
                   for p in partitions if p in self.done}
        if not offsets:
            return
        pending, self.in_flight = self.in_flight, []
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                log.error("%d responses were not delivered: %s", len(failed), failed[0])
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # e.g. a rebalance began: the new owner answers again
            log.warning("committing requests offsets failed (%s)", exc)
            return
        for tp, o in offsets.items():  # unless answered further meanwhile
            if self.done.get(tp.partition) == o:
                del self.done[tp.partition]
