"""The dev tools' Kafka client (devtools.client.RecallClient), its parts mocked: what a
user of the demo or the benches relies on at exit."""

from __future__ import annotations

import asyncio

import pytest

from devtools.client import RecallClient
from recall.config import Settings


class _Part:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail, self.stopped = fail, False

    async def stop(self) -> None:
        self.stopped = True
        if self.fail is not None:
            raise self.fail


@pytest.mark.parametrize("fail", [asyncio.CancelledError(), KeyboardInterrupt(),
                                  RuntimeError("broker gone")])
async def test_the_producer_is_closed_even_when_the_reader_stop_is_interrupted(
        fail: BaseException) -> None:
    client = RecallClient(Settings())
    reader, producer = _Part(fail), _Part()
    client._reader, client._producer = reader, producer  # type: ignore[assignment]
    with pytest.raises(type(fail)):
        await client.stop()
    assert reader.stopped and producer.stopped
