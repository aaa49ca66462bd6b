"""The e2e benchmark's view of ``recall-responses``: latency per bench request, probes'
responses by id. Records come from :class:`devtools.client.ResponseReader`, the same
reader the client uses."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from devtools.client import ResponseReader


class BenchResponses:
    """Bench responses (request ids ``{run}.{seq}.{send time in us}``) by run prefix;
    freshness probes by request id (``waiting``)."""

    def __init__(self, settings: Any, run: str) -> None:
        self.run = run
        self.latencies: list[float] = []
        #: per bench response: request sent -> the response's Kafka timestamp (the
        #: worker's send), and that timestamp -> read here: where e2e went, either side
        #: of the worker's producer
        self.to_worker: list[float] = []
        self.from_worker: list[float] = []
        self.ids: set[int] = set()
        self.statuses: dict[str, int] = {}
        self.sources: dict[str, int] = {}
        self.duplicates = 0
        self.waiting: dict[str, asyncio.Future] = {}
        self._reader = ResponseReader(settings, [settings.topic_responses], self._on_records,
                                      settings.fetch_max_wait_ms)

    async def start(self) -> None:
        await self._reader.start()

    async def stop(self) -> None:
        await self._reader.stop()

    def _on_records(self, records: list[Any]) -> None:
        now = time.time()
        prefix = self.run + "."
        for rec in records:
            rid = rec.key.decode() if rec.key else ""
            if rid.startswith(prefix):
                _, seq, sent_us = rid.split(".")
                if int(seq) in self.ids:
                    self.duplicates += 1
                    continue
                self.ids.add(int(seq))
                sent = int(sent_us) / 1e6
                self.latencies.append(now - sent)
                if rec.timestamp:
                    self.to_worker.append(rec.timestamp / 1000 - sent)
                    self.from_worker.append(now - rec.timestamp / 1000)
                value = orjson.loads(rec.value)
                st, src = value.get("status", "?"), value.get("source", "?")
                self.statuses[st] = self.statuses.get(st, 0) + 1
                self.sources[src] = self.sources.get(src, 0) + 1
            elif rid in self.waiting:
                fut = self.waiting.pop(rid)
                if not fut.done():
                    fut.set_result((now, orjson.loads(rec.value)))
