"""The requests consumer's offset handling, with a fake Kafka consumer (unit tests)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from recall.config import Settings
from stream.metrics import Metrics
from stream.requests import RequestsConsumer


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


class FakeRecaller:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.owned: list[set[int]] = []

    async def own_partitions(self, partitions: set[int]) -> None:
        self.owned.append(set(partitions))


def consumer() -> tuple[RequestsConsumer, FakeConsumer, FakeRecaller]:
    rec = FakeRecaller()
    rc = RequestsConsumer(Settings(), rec)
    fake = FakeConsumer()
    rc.consumer = fake  # type: ignore[assignment]
    return rc, fake, rec


async def test_offsets_are_committed_only_after_the_responses_are_acknowledged() -> None:
    rc, fake, _ = consumer()
    topic = rc.topic
    delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    rc.track(delivery)
    rc.done = {0: 7, 1: 3}
    committing = asyncio.create_task(rc._commit({0, 1}))
    await asyncio.sleep(0.05)
    assert fake.commits == []  # the response is not acknowledged yet
    delivery.set_result(None)
    await committing
    assert fake.commits == [{TopicPartition(topic, 0): 7, TopicPartition(topic, 1): 3}]
    assert rc.done == {} and rc.in_flight == []


async def test_a_failed_delivery_is_logged_and_does_not_block_the_commit() -> None:
    rc, fake, _ = consumer()
    failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    failed.set_exception(RuntimeError("broker said no"))
    rc.track(failed)
    rc.done = {2: 10}
    await rc._commit({2})
    assert fake.commits == [{TopicPartition(rc.topic, 2): 10}]


async def test_revoked_partitions_are_committed_and_their_clicks_given_up() -> None:
    rc, fake, rec = consumer()
    await rc.on_assigned({0, 1, 2})
    rc.done = {0: 5, 2: 9}
    await rc.on_revoked({0, 1})
    assert fake.commits == [{TopicPartition(rc.topic, 0): 5}]
    assert rc.done == {2: 9}  # a partition still owned waits for the periodic commit
    assert rec.owned == [{0, 1, 2}, {2}]
