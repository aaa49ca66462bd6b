"""A Kafka client of the worker: produces items, clicks and recall requests, awaits responses.

A dev tool, used by ``recall demo``, ``recall bench e2e`` and the integration tests; it
speaks only the contract's topics and JSON messages (../shared/CONTRACT.md), as any back end would.
Latency settings match the worker's: producer linger 0 and a short consumer fetch wait
(the broker would otherwise hold a fetch for aiokafka's default 500 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from recall.config import Settings, kafka_client_kwargs


@dataclass
class Response:
    """A response record plus when it was seen (``time.monotonic()``)."""

    value: dict[str, Any]
    received: float
    sent: float = 0.0

    @property
    def latency(self) -> float:
        """Seconds from producing the request to consuming this response."""
        return self.received - self.sent

    @property
    def item_ids(self) -> list[str]:
        return [i["item_id"] for i in self.value.get("items", [])]


class ResponseReader:
    """Reads ``topics`` from their end (every partition, no group) and hands each fetch's
    records to ``on_records(records)``: the response side of :class:`RecallClient` and of
    ``recall bench e2e``. The end offsets are resolved in :meth:`start`, so a response to
    a request sent after it returns is never missed."""

    def __init__(self, settings: Settings, topics: Sequence[str],
                 on_records: Callable[[list[Any]], None], fetch_max_wait_ms: int = 5) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.on_records = on_records
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        s = self.settings
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=max(1, self.fetch_max_wait_ms), auto_offset_reset="latest",
            **kafka_client_kwargs(s))
        await self._consumer.start()
        parts: list[TopicPartition] = []
        for topic in self.topics:
            found = None
            for _ in range(100):
                found = self._consumer.partitions_for_topic(topic)
                if found:
                    break
                await self._consumer._client.force_metadata_update()
                await asyncio.sleep(0.1)
            if not found:
                raise RuntimeError(f"topic {topic!r} not found on {s.kafka_bootstrap}")
            parts += [TopicPartition(topic, p) for p in sorted(found)]
        self._consumer.assign(parts)
        await self._consumer.seek_to_end(*parts)
        for tp in parts:  # resolve the end offsets now, before any request is sent
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._read(), name="recall-response-reader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=10_000)
            records = [r for rs in batches.values() for r in rs]
            if records:
                self.on_records(records)


@dataclass
class RecallClient:
    """Async producer of the worker's input topics and reader of its output topics."""

    settings: Settings
    fetch_max_wait_ms: int = 5
    _producer: AIOKafkaProducer | None = None
    _reader: ResponseReader | None = None
    _waiting: dict[str, asyncio.Future] = field(default_factory=dict)
    _sent_at: dict[str, float] = field(default_factory=dict)
    #: responses nobody waited for (e.g. requests sent with send_request)
    unclaimed: dict[str, Response] = field(default_factory=dict)
    #: DLQ records seen, when started with read_dlq=True
    dlq: list[dict[str, Any]] = field(default_factory=list)

    async def start(self, read_dlq: bool = False) -> None:
        s = self.settings
        self._producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, linger_ms=0,
                                          acks=1, max_batch_size=1 << 20,
                                          **kafka_client_kwargs(s))
        await self._producer.start()
        topics = [s.topic_responses] + ([s.topic_dlq] if read_dlq else [])
        self._reader = ResponseReader(s, topics, self._on_records, self.fetch_max_wait_ms)
        await self._reader.start()

    async def stop(self) -> None:
        """Stop the reader, then the producer, even when the reader's stop fails or is
        interrupted (a Ctrl-C that lands in it left the producer unclosed: asyncio's
        "Unclosed AIOKafkaProducer" at the demo's exit)."""
        try:
            if self._reader is not None:
                await self._reader.stop()
        finally:
            if self._producer is not None:
                await self._producer.stop()

    async def __aenter__(self) -> RecallClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_records(self, records: list[Any]) -> None:
        now = time.monotonic()
        dlq_topic = self.settings.topic_dlq
        for rec in records:
            value = orjson.loads(rec.value)
            if rec.topic == dlq_topic:
                self.dlq.append(value)
                continue
            rid = value.get("request_id")
            resp = Response(value, now, self._sent_at.pop(rid, now))
            fut = self._waiting.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(resp)
            else:
                self.unclaimed[rid] = resp

    # --- producing -----------------------------------------------------------

    async def send_raw(self, topic: str, key: bytes | str | None, value: bytes | None) -> None:
        """One record as it is (also for bad input), sent and acknowledged."""
        assert self._producer is not None
        if isinstance(key, str):
            key = key.encode()
        await self._producer.send_and_wait(topic, value, key=key)

    async def _send_many(self, topic: str, records: Iterable[tuple[str, bytes]]) -> int:
        assert self._producer is not None
        futures = [await self._producer.send(topic, value, key=key.encode())
                   for key, value in records]
        if futures:
            await asyncio.gather(*futures)
        return len(futures)

    async def upsert_items(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        vectors = np.asarray(vectors, dtype=np.float32)
        return await self._send_many(self.settings.topic_items, (
            (item_id, orjson.dumps({"item_id": item_id, "vector": row},
                                   option=orjson.OPT_SERIALIZE_NUMPY))
            for item_id, row in zip(ids, vectors, strict=True)))

    async def delete_items(self, ids: Sequence[str]) -> int:
        return await self._send_many(self.settings.topic_items, (
            (item_id, orjson.dumps({"item_id": item_id, "deleted": True})) for item_id in ids))

    async def clicks(self, clicks: Iterable[dict[str, Any]]) -> int:
        """Send click messages (dicts with user_id, item_id, and optional ts, event_id,
        weight), keyed by user id."""
        return await self._send_many(self.settings.topic_clicks, (
            (c["user_id"], orjson.dumps(c)) for c in clicks))

    async def send_request(self, user_id: str, k: int = 10, exclude_seen: bool = True,
                           request_id: str | None = None) -> str:
        """Produce a request without waiting for its response; returns its request id."""
        rid = request_id or uuid.uuid4().hex
        assert self._producer is not None
        self._sent_at[rid] = time.monotonic()
        await self._producer.send(self.settings.topic_requests, orjson.dumps(
            {"request_id": rid, "user_id": user_id, "k": k, "exclude_seen": exclude_seen}),
            key=user_id.encode())
        return rid

    def expect(self, request_id: str) -> asyncio.Future:
        """A future of the response of ``request_id`` (register before sending)."""
        if request_id in self.unclaimed:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(self.unclaimed.pop(request_id))
            return fut
        fut = self._waiting.get(request_id)
        if fut is None:
            fut = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        return fut

    async def recall(self, user_id: str, k: int = 10, exclude_seen: bool = True,
                     timeout: float = 10.0) -> Response:
        """Send a request and wait for its response."""
        rid = uuid.uuid4().hex
        fut = self.expect(rid)
        await self.send_request(user_id, k, exclude_seen, request_id=rid)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(rid, None)

    async def wait_ready(self, timeout: float = 60.0, user_id: str = "__probe__") -> float:
        """Wait until the worker answers a request; returns the seconds it took."""
        t0 = time.monotonic()
        while True:
            try:
                await self.recall(user_id, k=1, timeout=2.0)
                return time.monotonic() - t0
            except asyncio.TimeoutError:
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"the worker did not answer within {timeout:.0f}s"
                                       ) from None
