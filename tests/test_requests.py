"""The requests consumer's commits, with a fake Kafka consumer and producer (unit tests).

What users rely on: an offset is committed only once every response of the requests
before it was acknowledged by the broker; a request whose response was not delivered is
answered again, never committed past.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import TopicPartition

from recall.config import Settings
from stream.metrics import Metrics
from stream.policy import DeadLetters
from stream.requests import Membership, RequestsConsumer
from stream.service import Answer, Ask


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


class FakeService:
    """Answers every request ok (the service itself is tested in test_service.py)."""

    def answer_from_memory(self, asks: list[Ask]) -> tuple[list[tuple[Ask, Answer]], list]:
        return [(a, Answer(a.request.request_id.encode(), b"{}", "ok")) for a in asks], []

    async def answer_after_load(self, asks: list[Ask]) -> list[tuple[Ask, Answer]]:
        return []

    def invalid(self, exc: Any, produced_at: float | None = None) -> Answer | None:
        return None


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp: int = 0


class Deliveries:
    """The producer: each send returns a delivery future the test settles."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future] = []

    async def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


def consumer() -> tuple[RequestsConsumer, FakeConsumer, Deliveries, list[set[int]]]:
    settings, metrics = Settings(), Metrics()
    producer = Deliveries()
    owned: list[set[int]] = []

    async def on_assignment(partitions: set[int]) -> None:
        owned.append(set(partitions))

    rc = RequestsConsumer(settings, FakeService(), DeadLetters(settings, metrics, producer.send),
                          producer.send, metrics, on_assignment)  # type: ignore[arg-type]
    fake = FakeConsumer()
    rc.consumer = fake  # type: ignore[assignment]
    return rc, fake, producer, owned


def batch(rc: RequestsConsumer, partition: int, offsets: range) -> dict[TopicPartition, list]:
    tp = TopicPartition(rc.topic, partition)
    return {tp: [Record(rc.topic, partition, o, orjson.dumps(
        {"request_id": f"r{partition}-{o}", "user_id": "u1", "k": 3})) for o in offsets]}


async def test_offsets_are_committed_only_after_the_responses_are_acknowledged() -> None:
    rc, fake, producer, _ = consumer()
    await rc.handle({**batch(rc, 0, range(5, 7)), **batch(rc, 1, range(0, 3))})
    assert len(producer.futures) == 5  # one response per request
    committing = asyncio.create_task(rc._commit({0, 1}))
    await asyncio.sleep(0.05)
    assert fake.commits == []  # not acknowledged yet
    for fut in producer.futures:
        fut.set_result(None)
    await committing
    assert fake.commits == [{TopicPartition(rc.topic, 0): 7, TopicPartition(rc.topic, 1): 3}]
    assert rc.answered == {} and rc.delivered == {}


async def test_a_failed_delivery_is_never_committed_past_and_is_answered_again() -> None:
    rc, fake, producer, _ = consumer()
    await rc.handle(batch(rc, 2, range(10, 12)))  # delivered
    await rc.handle(batch(rc, 2, range(12, 15)))  # one of its responses fails
    await rc.handle(batch(rc, 2, range(15, 16)))  # delivered, but after the failure
    for i, fut in enumerate(producer.futures):
        if i == 3:
            fut.set_exception(RuntimeError("broker said no"))
        else:
            fut.set_result(None)
    await rc._commit({2})
    tp = TopicPartition(rc.topic, 2)
    assert fake.commits == [{tp: 12}]  # up to the failed batch, not past it
    assert fake.seeks == [(tp, 12)]  # rewound: the failed batch is answered again
    assert rc.expected[2] == 12
    await rc.handle(batch(rc, 2, range(12, 16)))  # the batch answered again
    for fut in producer.futures[-4:]:
        fut.set_result(None)
    await rc._commit({2})
    assert fake.commits[-1] == {tp: 16}


async def test_records_fetched_before_a_rewind_are_dropped() -> None:
    rc, _, _, _ = consumer()
    rc.expected[0] = 12
    assert rc.current(batch(rc, 0, range(15, 17))) == {}  # fetched before the rewind to 12
    again = batch(rc, 0, range(12, 14))
    assert rc.current({**again, **batch(rc, 1, range(3, 4))}).keys() == {
        TopicPartition(rc.topic, 0), TopicPartition(rc.topic, 1)}


async def test_revoked_partitions_are_committed_and_their_clicks_given_up() -> None:
    rc, fake, producer, owned = consumer()
    await rc.on_assigned({0, 1, 2})
    await rc.handle({**batch(rc, 0, range(0, 5)), **batch(rc, 2, range(0, 9))})
    for fut in producer.futures:
        fut.set_result(None)
    await rc.on_revoked({0, 1})
    assert fake.commits == [{TopicPartition(rc.topic, 0): 5}]
    assert set(rc.answered) == {2}  # a partition still owned waits for the periodic commit
    assert owned == [{0, 1, 2}, {2}]


class JoiningConsumer(FakeConsumer):
    """A consumer of the group, whose assignment the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.assigned: set[TopicPartition] = set()
        self.subscribed: Any = None

    async def start(self) -> None:
        pass

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.subscribed = listener

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)


async def test_partitions_assigned_while_the_worker_loads_are_owned_once_it_can_answer(
) -> None:
    """A restarting worker joins the group while its index loads (Worker.start): an
    assignment that comes first must be taken when the consumer starts answering, and
    nothing owned before (its clicks consumer and items follower do not exist yet)."""
    settings, metrics = Settings(), Metrics()
    producer = Deliveries()
    owned: list[set[int]] = []

    async def on_assignment(partitions: set[int]) -> None:
        owned.append(set(partitions))

    fake = JoiningConsumer()
    membership = Membership(fake, settings.topic_requests)  # type: ignore[arg-type]
    await membership.join()
    tps = {TopicPartition(settings.topic_requests, p) for p in (0, 2)}
    fake.assigned = tps
    await fake.subscribed.on_partitions_assigned(tps)
    assert owned == []  # not before the worker can answer
    rc = RequestsConsumer(settings, FakeService(), DeadLetters(settings, metrics, producer.send),
                          producer.send, metrics, on_assignment,  # type: ignore[arg-type]
                          membership=membership)

    async def idle() -> None:  # no fetching or committing in this test
        await asyncio.sleep(3600)

    rc._run = rc._commit_loop = idle  # type: ignore[method-assign]
    await rc.start()
    assert owned == [{0, 2}] and rc.owned == {0, 2}
    # later rebalances reach it directly
    await fake.subscribed.on_partitions_revoked({TopicPartition(settings.topic_requests, 2)})
    assert owned[-1] == {0}
    fake.stop = fake.start  # type: ignore[method-assign]
    await rc.stop()


async def test_a_large_batch_is_answered_a_chunk_at_a_time_with_the_loop_turning_between() -> None:
    """The first requests of a big fetch do not wait for the last ones to be searched:
    each chunk's responses are handed to the producer, and the event loop (the producer's
    sender, other consumers) gets a turn, before the next chunk is searched."""
    from stream.requests import REQUEST_CHUNK

    rc, _, producer, _ = consumer()
    searched: list[tuple[int, int, bool]] = []  # (requests, responses sent before, turned)
    turned = False
    answer = rc.service.answer_from_memory

    def recorded(asks: list[Ask]) -> tuple[list[tuple[Ask, Answer]], list]:
        nonlocal turned
        searched.append((len(asks), len(producer.futures), turned))
        turned = False
        return answer(asks)

    rc.service.answer_from_memory = recorded  # type: ignore[method-assign]

    async def watcher() -> None:
        nonlocal turned
        while True:
            turned = True
            await asyncio.sleep(0)

    watching = asyncio.create_task(watcher())
    await asyncio.sleep(0)
    n = 2 * REQUEST_CHUNK + 3
    await rc.handle(batch(rc, 0, range(n)))
    watching.cancel()
    assert len(producer.futures) == n  # one response per request
    assert [size for size, _, _ in searched] == [REQUEST_CHUNK, REQUEST_CHUNK, 3]
    assert [sent for _, sent, _ in searched] == [0, REQUEST_CHUNK, 2 * REQUEST_CHUNK]
    assert all(t for _, _, t in searched[1:])  # the loop turned before each later chunk


class SlowCommits(FakeConsumer):
    """A broker whose commit round trip lasts until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        await self.release.wait()

    def assignment(self) -> set[TopicPartition]:
        return set()


async def test_the_periodic_commit_never_holds_up_answering(monkeypatch: Any) -> None:
    """Requests are answered while the periodic commit is on: it commits what the broker
    acknowledged already (a response still in flight waits for the next commit) and does
    not keep the consumer's lock over the commit's round trip. It used to wait for every
    response in flight and for the round trip with the lock held: no request of the
    worker was answered meanwhile (15-60 ms a second at 500 requests/s on Tansu)."""
    import stream.requests as requests

    monkeypatch.setattr(requests, "COMMIT_INTERVAL", 0.0)
    rc, _, producer, _ = consumer()
    slow = SlowCommits()
    rc.consumer = slow  # type: ignore[assignment]
    tp = TopicPartition(rc.topic, 0)
    await rc.handle(batch(rc, 0, range(0, 3)))
    for fut in producer.futures:
        fut.set_result(None)
    await rc.handle(batch(rc, 0, range(3, 5)))  # its responses are in flight
    committing = asyncio.create_task(rc._commit_loop())
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert slow.commits == [{tp: 3}]  # what was acknowledged, not waiting for the rest
        assert not rc.lock.locked()  # the round trip is on: a fetch is answered meanwhile
        async with rc.lock:
            await rc.handle(batch(rc, 0, range(5, 6)))
        for fut in producer.futures[3:]:
            fut.set_result(None)
        slow.release.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert slow.commits[-1] == {tp: 6}  # the next commit takes the rest
    finally:
        committing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await committing


async def test_where_a_request_waited_is_measured_by_stage() -> None:
    """recall_request_stage_seconds: Kafka timestamp -> fetched, fetched -> handled,
    response handed over -> acknowledged (one observation per request and stage)."""
    import time

    rc, _, producer, _ = consumer()
    now = time.time()
    fetch = batch(rc, 0, range(0, 4))
    for r in fetch[TopicPartition(rc.topic, 0)]:
        r.timestamp = int((now - 2.0) * 1000)  # produced two seconds before the fetch
    await rc.handle(fetch, fetched_at=now)
    for fut in producer.futures[:3]:
        fut.set_result(None)
    await asyncio.sleep(0)

    def stage(name: str) -> tuple[float, float]:
        value = rc.metrics.registry.get_sample_value
        return (value("recall_request_stage_seconds_count", {"stage": name}) or 0.0,
                value("recall_request_stage_seconds_sum", {"stage": name}) or 0.0)

    count, total = stage("kafka")
    assert count == 4 and 4 * 1.9 < total < 4 * 2.1
    assert stage("queued")[0] == 4
    assert stage("delivery")[0] == 3  # the fourth response is not acknowledged yet


class PausingConsumer(FakeConsumer):
    """aiokafka's pause semantics over a broker whose partitions always hold new requests:
    a fetch returns two new records from every partition not paused, and waits while all
    are; resuming a partition no longer assigned raises, as aiokafka's does."""

    def __init__(self, topic: str, partitions: range) -> None:
        super().__init__()
        self.tps = {TopicPartition(topic, p) for p in partitions}
        self.paused: set[TopicPartition] = set()
        self.next = dict.fromkeys(self.tps, 0)
        self.fetched_at: list[float] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.tps)

    def pause(self, *tps: TopicPartition) -> None:
        assert set(tps) <= self.tps
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        if not set(tps) <= self.tps:
            raise RuntimeError(f"No current assignment for partitions {set(tps) - self.tps}")
        self.paused -= set(tps)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list]:
        while not self.tps - self.paused:
            await asyncio.sleep(0.001)
        self.fetched_at.append(asyncio.get_running_loop().time())
        out = {}
        for tp in sorted(self.tps - self.paused):
            o = self.next[tp]
            out[tp] = [Record(tp.topic, tp.partition, i, orjson.dumps(
                {"request_id": f"r{tp.partition}-{i}", "user_id": "u1", "k": 3}))
                for i in range(o, o + 2)]
            self.next[tp] = o + 2
        await asyncio.sleep(0)  # the broker's round trip
        return out


async def test_requests_are_fetched_at_most_once_per_fetch_interval_and_all_answered() -> None:
    """Each fetch costs the broker CPU whatever it returns (on Tansu more the more batches
    a partition holds): while requests keep arriving, the consumer's partitions are
    fetched together at most once per RECALL_FETCH_INTERVAL_MS, and every request fetched
    is answered once."""
    from dataclasses import replace

    rc, _, producer, _ = consumer()
    rc.settings = replace(rc.settings, fetch_interval_ms=40)
    fake = PausingConsumer(rc.topic, range(3))
    rc.consumer = fake  # type: ignore[assignment]
    running = asyncio.create_task(rc._run())
    await asyncio.sleep(0.3)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    gaps = [b - a for a, b in zip(fake.fetched_at, fake.fetched_at[1:], strict=False)]
    assert 3 <= len(fake.fetched_at) <= 9, fake.fetched_at
    assert min(gaps) >= 0.039, gaps
    assert len(producer.futures) == sum(fake.next.values())  # each fetched one answered


async def test_a_partition_revoked_while_paused_is_not_resumed() -> None:
    """The pause outlives an assignment: a partition revoked before the interval ends
    must not be resumed (aiokafka raises for a partition not assigned), the rest must."""
    from dataclasses import replace

    rc, _, _, _ = consumer()
    rc.settings = replace(rc.settings, fetch_interval_ms=20)
    fake = PausingConsumer(rc.topic, range(2))
    rc.consumer = fake  # type: ignore[assignment]
    rc._pace({TopicPartition(rc.topic, 0): [b"a request"]})  # a fetch, not full
    assert fake.paused == fake.tps
    fake.tps = {TopicPartition(rc.topic, 1)}  # partition 0 revoked meanwhile
    await asyncio.sleep(0.05)
    assert fake.paused == {TopicPartition(rc.topic, 0)}  # 1 resumed; 0 left alone
