"""The recall monitor's exact search runs beside the event loop without taking its turn:
in one thread at the lowest OS priority (stream/watch.py), so on a busy or pinned core the
loop's thread runs first whenever it has work (at equal priority the scheduler gave a 0.3 s
batch half of the worker's core while requests waited)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from recall.config import Settings
from recall.lsh import LSHIndex, LSHParams
from stream import watch as watch_mod
from stream.metrics import Metrics
from stream.samples import EXACT_NICE
from stream.state import IndexSlot
from stream.watch import RecallWatch


async def test_exact_search_runs_in_one_lowest_priority_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    index = LSHIndex(LSHParams(dim=8, k=4, L=2, T=2, seed=1))
    index.add([f"i{i}" for i in range(len(x))], x)
    seen: list[tuple[int, int]] = []
    exact = watch_mod._exact

    def spy(samples):  # type: ignore[no-untyped-def]
        tid = threading.get_native_id()
        seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        return exact(samples)

    monkeypatch.setattr(watch_mod, "_exact", spy)

    async def positions() -> dict[int, int]:
        return {}

    w = RecallWatch(Settings(dim=8, recall_sample_per_s=1000.0, recall_sample_cpu=1.0),
                    IndexSlot(index, 1), Metrics(), None, positions,  # type: ignore[arg-type]
                    exact_max_items=0)
    try:
        for _ in range(3):
            q = x[0]
            w.offer(q, 5, (), index.search(q, 5)[0].ids, index)
            await w.step(timeout=0.01)
    finally:
        await w.stop()
    assert len(seen) == 3
    assert {tid for tid, _ in seen} != {threading.get_native_id()}
    assert len({tid for tid, _ in seen}) == 1  # one thread: the priority is set once
    assert {nice for _, nice in seen} == {EXACT_NICE}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < EXACT_NICE
    assert w.metrics.lsh_recall_queries._value.get() == 3
