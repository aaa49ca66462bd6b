"""The recall-requests consumer: the worker group's membership and the request path.

A plain aiokafka group consumer (group id ``RECALL_APP_ID``) in the worker's event loop.
Each fetch's records are parsed (bad ones to the DLQ, with an ``invalid`` response when
their request_id is readable), answered together by :meth:`RecallService.answer`, and
the responses handed to the producer in one go (they leave as one produce request per
partition). A lone request is never held back: the fetch returns as soon as it arrives.

Fetches can be paced (``RECALL_FETCH_INTERVAL_MS``, off by default): after a fetch that
returned records, the consumer's partitions are paused for the interval, so they are
fetched at most that often (a full fetch, a backlog, is not paced). Each fetch costs the
broker CPU whatever it returns, and on Tansu's memory engine more the more batches the
partitions hold (~1.4 ms a fetch of 4 fresh partitions, ~3.5-4 ms with 1,500
single-record batches each); unpaced, at 500 requests/s, fetches come every ~15 ms with
~8 requests each. The pause is set in the turn the fetch returns, before aiokafka's
fetcher can prefetch, so a request waits at most the interval more, and a lone request
after a quiet spell not at all. Off by default because at 20 ms every rate of the
capacity ramp waited longer for no more capacity (README "Capacity").

Why not a faust agent: faust reads in a consumer *thread* and hands each record to the
event loop one event and ack at a time, which costs as much CPU as the recall work
itself (stream.app; figures in docs/design.md).

The group's assignment drives everything else a worker owns: on every rebalance the
``on_assignment`` callback (the worker's) moves the ``clicks`` partitions (and the
``items`` partitions it writes to Redis) to the same numbers.

Commits: each answered batch is remembered per partition with the deliveries of its
responses. About every ``COMMIT_INTERVAL`` seconds, and when partitions are revoked, a
partition's offset is committed up to the end of its oldest batches whose responses were
all acknowledged by the broker; at a batch with a failed delivery the commit stops and the
partition is rewound to that batch, which is answered again. A crash may answer a request
twice, never drop it. The periodic commit takes only what is acknowledged already (the
rest waits for the next one) and holds no lock over the broker's round trip, so answering
never waits for a commit. Only a revocation (and stop) waits for every delivery, so that
the next owner starts after the last response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from recall.config import Settings
from recall.messages import Invalid, parse_request
from stream.metrics import Metrics
from stream.policy import DeadLetters, Send, batch_starts, fetch, rewind
from stream.service import Answer, Ask, RecallService, turn

log = logging.getLogger(__name__)

#: most requests answered together (all that are waiting, up to this many)
REQUEST_BATCH = 500
#: requests searched together before their responses are handed to the producer and the
#: event loop gets a turn (one batched search of 16 costs ~5 ms at 1M items)
REQUEST_CHUNK = 16
#: seconds between offset commits (and lag gauge refreshes)
COMMIT_INTERVAL = 1.0


@dataclass
class Answered:
    """A batch's records of one partition, [start, end), and its responses' deliveries."""

    start: int
    end: int
    deliveries: list[asyncio.Future] = field(default_factory=list)


def group_consumer(settings: Settings, client_kwargs: dict | None = None) -> AIOKafkaConsumer:
    """The workers' group consumer of ``recall-requests`` (not started)."""
    session_ms = int(settings.kafka_session_timeout * 1000)
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=settings.app_id,
        enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=max(1, settings.fetch_max_wait_ms),
        max_poll_records=REQUEST_BATCH, session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(100, session_ms // 5),
        rebalance_timeout_ms=max(session_ms, 2000),
        **(client_kwargs or {}))


class Membership(ConsumerRebalanceListener):
    """The worker's membership of the group, and the rebalances it hands to the
    :class:`RequestsConsumer` once that is attached.

    :meth:`join` can be called before the worker can answer (Worker.start joins while a
    small index loads: the broker's join takes about a second anyway). Until
    :meth:`attach`, an assignment is only kept by the consumer: nothing is fetched,
    answered or owned, and the callback returns at once (aiokafka sends no heartbeats
    while it runs)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self.owner: RequestsConsumer | None = None
        self.started = False

    async def join(self) -> None:
        """Start the consumer and subscribe: the join goes on in the background."""
        await self.consumer.start()
        self.started = True
        self.consumer.subscribe([self.topic], listener=self)

    async def attach(self, owner: RequestsConsumer) -> None:
        """From now on rebalances go to ``owner``; the partitions assigned so far too."""
        self.owner = owner
        assigned = {tp.partition for tp in self.consumer.assignment()}
        if assigned:
            await owner.on_assigned(assigned)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.owner is not None:
            await self.owner.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self.owner is not None:
            await self.owner.on_assigned({tp.partition for tp in assigned})


class RequestsConsumer:
    """Reads ``recall-requests`` as a member of the workers' group and answers them."""

    def __init__(self, settings: Settings, service: RecallService, dead_letters: DeadLetters,
                 send: Send, metrics: Metrics,
                 on_assignment: Callable[[set[int]], Awaitable[None]],
                 client_kwargs: dict | None = None, membership: Membership | None = None
                 ) -> None:
        """``membership``: the group, if already joined (:class:`Membership`); else
        :meth:`start` joins it."""
        self.settings = settings
        self.service = service
        self.dead_letters = dead_letters
        self.send = send
        self.metrics = metrics
        self.on_assignment = on_assignment
        self.topic = settings.topic_requests
        self.membership = membership or Membership(group_consumer(settings, client_kwargs),
                                                   self.topic)
        self.consumer = self.membership.consumer
        self.owned: set[int] = set()
        #: partition -> answered batches not committed yet, oldest first
        self.answered: dict[int, list[Answered]] = {}
        #: partition -> offset all of whose earlier responses were delivered, not committed
        self.delivered: dict[int, int] = {}
        #: partition -> the offset the next batch must start at (None: any); records
        #: fetched before a rewind are dropped by it
        self.expected: dict[int, int] = {}
        #: held while a batch is answered, while the answered batches are settled, and
        #: over a revocation's commit
        self.lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Join the group (unless joined already), take what it assigned, answer."""
        if not self.membership.started:
            await self.membership.join()
        await self.membership.attach(self)
        self._tasks = [asyncio.create_task(self._run(), name="requests-consumer"),
                       asyncio.create_task(self._commit_loop(), name="requests-commit")]

    async def stop(self) -> None:
        """Finish the batch in hand, commit, and leave the group (others take over now)."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.membership.started:
            async with self.lock:
                await self._commit(set(self.answered) | set(self.delivered))
            await self.consumer.stop()

    async def on_assigned(self, partitions: set[int]) -> None:
        self.owned = set(partitions)
        log.info("recall-requests partitions assigned: %s", sorted(partitions))
        await self.on_assignment(set(partitions))

    async def on_revoked(self, partitions: set[int]) -> None:
        async with self.lock:  # the batch in hand is answered first
            await self._commit(partitions)
        for p in partitions:
            self.answered.pop(p, None)
            self.delivered.pop(p, None)
            self.expected.pop(p, None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(self.topic, str(p))
        self.owned -= partitions
        # stop applying their clicks now: the next owner may start before our assignment
        await self.on_assignment(set(self.owned))

    async def _run(self) -> None:
        while True:
            batches = await fetch(self.consumer, "requests", timeout_ms=1000,
                                  max_records=REQUEST_BATCH)
            if not batches:
                continue
            fetched_at = time.time()
            self._pace(batches)
            async with self.lock:
                batches = self.current(batches)
                if not batches:
                    continue
                try:
                    await self.handle(batches, fetched_at)
                except Exception:  # e.g. Redis down: answer the batch again later
                    await rewind(self.consumer, batch_starts(batches), "requests",
                                 sum(len(rs) for rs in batches.values()))

    def _pace(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """After a fetch that returned records and was not full, pause every assigned
        partition for the fetch interval (module docstring): all of them, so that the
        next fetch asks for them together rather than the quiet ones alone in fetches of
        their own. Nothing to do when pacing is off (the default)."""
        interval = self.settings.fetch_interval_ms / 1000.0
        if interval <= 0 or sum(len(rs) for rs in batches.values()) >= REQUEST_BATCH:
            return
        assigned = list(self.consumer.assignment())
        if not assigned:
            return
        self.consumer.pause(*assigned)
        asyncio.get_running_loop().call_later(interval, self._resume, assigned)

    def _resume(self, paused: list[TopicPartition]) -> None:
        """Resume the paused partitions still assigned (a revoked one is not ours; one
        assigned again since starts unpaused)."""
        assigned = self.consumer.assignment()
        still = [tp for tp in paused if tp in assigned]
        if still:
            self.consumer.resume(*still)

    def current(self, batches: dict[TopicPartition, list[Any]]
                ) -> dict[TopicPartition, list[Any]]:
        """The part of a fetch that starts where its partition is expected to (a fetch
        begun before a rewind returns records past the rewind point: dropped)."""
        return {tp: rs for tp, rs in batches.items()
                if self.expected.get(tp.partition, rs[0].offset) == rs[0].offset}

    async def handle(self, batches: dict[TopicPartition, list[Any]],
                     fetched_at: float | None = None) -> None:
        """Answer one fetch (returned by the consumer at ``fetched_at``, wall time): every
        request gets exactly one response, handed to the producer; the deliveries are
        remembered for the commit."""
        t0 = time.perf_counter()
        began = time.time()
        limit = self.settings.max_message_bytes
        self.metrics.batch_size.labels("requests").observe(
            sum(len(rs) for rs in batches.values()))
        in_kafka = self.metrics.request_stage.labels("kafka").observe
        queued = self.metrics.request_stage.labels("queued").observe
        asks: list[Ask] = []
        answers: list[tuple[int, Answer]] = []
        for tp, rs in batches.items():
            for r in rs:
                ts = r.timestamp / 1000.0 if r.timestamp else None
                if fetched_at is not None:
                    queued(max(0.0, began - fetched_at))
                    if ts is not None:
                        in_kafka(max(0.0, fetched_at - ts))
                try:
                    asks.append(Ask(parse_request(r.value, limit), tp.partition, ts))
                except Invalid as exc:
                    await self.dead_letters.send(r, exc)
                    invalid = self.service.invalid(exc, ts)
                    if invalid is not None:
                        answers.append((tp.partition, invalid))
        done = {tp.partition: Answered(rs[0].offset, rs[-1].offset + 1)
                for tp, rs in batches.items()}
        for partition, ans in answers:
            done[partition].deliveries.append(await self._respond(ans, t0))
        # users in memory first: their answers need no Redis, and never wait for it; a
        # chunk at a time, each chunk's responses on their way before the next is searched
        waiting: list[Ask] = []
        for start in range(0, len(asks), REQUEST_CHUNK):
            if start:
                await turn()  # the producer sends the chunk's responses meanwhile
            ready, later = self.service.answer_from_memory(asks[start:start + REQUEST_CHUNK])
            waiting += later
            for a, ans in ready:
                done[a.partition].deliveries.append(await self._respond(ans, t0))
        for a, ans in await self.service.answer_after_load(waiting):
            done[a.partition].deliveries.append(await self._respond(ans, t0))
        for tp, rs in batches.items():
            self.answered.setdefault(tp.partition, []).append(done[tp.partition])
            self.expected[tp.partition] = rs[-1].offset + 1
            self._lag(tp, rs[-1].offset + 1)

    async def _respond(self, ans: Answer, t0: float) -> asyncio.Future:
        delivery = await self.send(self.settings.topic_responses, ans.key, ans.value)
        m = self.metrics
        m.requests.labels(ans.status).inc()
        sent = time.perf_counter()
        m.request_duration.observe(sent - t0)
        if ans.produced_at:
            m.end_to_end.observe(max(0.0, time.time() - ans.produced_at))
        acked = m.request_stage.labels("delivery").observe
        delivery.add_done_callback(lambda _: acked(time.perf_counter() - sent))
        return delivery

    def _lag(self, tp: TopicPartition, position: int) -> None:
        hw = self.consumer.highwater(tp)
        if hw is not None:
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, hw - position))

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            try:
                await self._commit_acknowledged()
                # an idle partition's lag too (the gauge must not freeze at its last value)
                for tp in self.consumer.assignment():
                    if tp.partition not in self.answered:
                        self._lag(tp, await self.consumer.position(tp))
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. a partition revoked meanwhile; commit next time
                log.warning("requests commit/lag refresh failed; retrying", exc_info=True)

    def _settle(self, partition: int) -> None:
        """Move the partition's oldest answered batches whose responses were all
        delivered into ``delivered``, up to the first with a response in flight; at one
        with a failed delivery, rewind the partition to it (answered again) and forget it
        and the later ones."""
        batches = self.answered.get(partition, [])
        while batches:
            batch = batches[0]
            if not all(d.done() for d in batch.deliveries):
                break
            failed = ["cancelled" if d.cancelled() else d.exception()
                      for d in batch.deliveries if d.cancelled() or d.exception() is not None]
            if failed:
                log.error("%d responses of %s[%d]@%d-%d were not delivered (%s); answering "
                          "them again", len(failed), self.topic, partition, batch.start,
                          batch.end - 1, failed[0])
                self.consumer.seek(TopicPartition(self.topic, partition), batch.start)
                self.expected[partition] = batch.start
                batches.clear()
                break
            self.delivered[partition] = batch.end
            batches.pop(0)
        if not batches:
            self.answered.pop(partition, None)

    async def _commit(self, partitions: set[int]) -> None:
        """Commit ``partitions`` once every response in flight was acknowledged (a
        revocation, stop: the caller holds the lock, so nothing is answered meanwhile)."""
        await asyncio.gather(*(d for p in partitions for b in self.answered.get(p, [])
                               for d in b.deliveries), return_exceptions=True)
        await self._commit_offsets(self._settled(partitions))

    async def _commit_acknowledged(self) -> None:
        """The periodic commit: up to what is acknowledged now, answering meanwhile."""
        async with self.lock:  # not while a batch is half answered (its rewind point)
            offsets = self._settled(set(self.answered) | set(self.delivered))
        await self._commit_offsets(offsets)

    def _settled(self, partitions: set[int]) -> dict[TopicPartition, int]:
        for p in partitions:
            self._settle(p)
        return {TopicPartition(self.topic, p): self.delivered[p]
                for p in partitions if p in self.delivered}

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # e.g. a rebalance began: the new owner answers again
            log.warning("committing requests offsets failed (%s)", exc)
            return
        for tp, o in offsets.items():  # unless delivered further meanwhile
            if self.delivered.get(tp.partition) == o:
                del self.delivered[tp.partition]
