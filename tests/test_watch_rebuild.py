"""stream.watch.RecallWatch on a real index, without a broker: what it measures, when it
rebuilds the index with new parameters, and that a rebuild keeps every item."""

from __future__ import annotations

import asyncio

import numpy as np

from offline.synthetic import clustered_catalogue
from recall.config import Settings
from recall.lsh import LSHIndex, LSHParams
from recall.monitor import query_recall
from recall.tuner import exact_topk, user_like_queries
from stream.metrics import Metrics
from stream.state import IndexSlot
from stream.watch import RecallWatch

DIM = 16


def world(n: int, params: LSHParams, **settings: object
          ) -> tuple[IndexSlot, Metrics, asyncio.Lock, RecallWatch, np.ndarray, np.ndarray]:
    x, _ = clustered_catalogue(n, DIM, seed=1)
    index = LSHIndex(params)
    index.add([f"i{i}" for i in range(n)], x)
    slot, metrics, lock = IndexSlot(index, 1), Metrics(), asyncio.Lock()
    s = Settings(dim=DIM, recall_sample_per_s=10_000.0, **settings)  # type: ignore[arg-type]
    watch = RecallWatch(s, slot, metrics, lock, exact_max_items=1000)
    return slot, metrics, lock, watch, x, user_like_queries(x, 400, seed=2)


def served_recall(slot: IndexSlot, x: np.ndarray, q: np.ndarray) -> float:
    truth = exact_topk(x, q, 10)
    return float(np.mean([query_recall(slot.index.query(qi, 10).ids,
                                       [f"i{t}" for t in ti]) for qi, ti in zip(q, truth,
                                                                                strict=True)]))


async def serve(slot: IndexSlot, watch: RecallWatch, q: np.ndarray, rounds: int,
                until: object = None) -> None:
    """Answer the queries as the worker does (offer every LSH answer), letting it act."""
    for _ in range(rounds):
        for qi in q[:50]:
            res = slot.index.query(qi, 10)
            watch.offer(qi, 10, (), res.ids, slot.index)
        await watch.step(timeout=0.01)
        if callable(until) and until():
            return


async def test_the_estimate_is_the_recall_the_index_serves() -> None:
    slot, metrics, _, watch, x, q = world(3000, LSHParams(dim=DIM, k=8, L=4, T=2, seed=3),
                                          lsh_max_probes=2, retune_items=0)
    await serve(slot, watch, q, 8)
    est = watch.controller.estimate()
    assert est is not None and est.n >= 100
    true = served_recall(slot, x, q)
    assert est.low - 0.02 <= true <= est.high + 0.02, (est, true)
    assert metrics.lsh_recall._value.get() == est.mean
    assert true < 0.95  # (the setting of the next test: probes alone cannot help)


async def test_probes_that_cannot_reach_the_target_get_a_retuned_index() -> None:
    slot, metrics, _, watch, x, q = world(3000, LSHParams(dim=DIM, k=8, L=4, T=2, seed=3),
                                          lsh_max_probes=2, retune_items=3000)
    before = slot.index
    assert served_recall(slot, x, q) < 0.9
    retunes = metrics.lsh_retunes.labels("recall")
    await serve(slot, watch, q, 400, until=lambda: retunes._value.get() >= 1)
    assert retunes._value.get() == 1
    assert slot.index is not before and slot.index.params != before.params
    assert sorted(slot.index.ids()) == sorted(before.ids())
    await serve(slot, watch, q, 40)  # the controller settles on the new layout
    assert served_recall(slot, x, q) >= 0.94


async def test_a_catalogue_outgrowing_its_parameters_gets_new_ones() -> None:
    slot, metrics, _, watch, _, _ = world(1500, LSHParams(dim=DIM, k=12, L=4, T=1, seed=3))
    watch.chosen_for = 0  # a version the worker created empty
    before = slot.index
    await watch.step(timeout=0.01)
    assert metrics.lsh_retunes.labels("size")._value.get() == 1
    assert slot.index is not before and slot.index.params.k != 12
    assert watch.chosen_for == 1500
    await watch.step(timeout=0.01)  # not again until it grows 4x
    assert metrics.lsh_retunes.labels("size")._value.get() == 1


async def test_explicit_parameters_are_kept() -> None:
    _, metrics, _, watch, _, _ = world(1500, LSHParams(dim=DIM, k=12, L=4, T=1, seed=3))
    watch.chosen_for, watch.repick = 0, False
    await watch.step(timeout=0.01)
    assert metrics.lsh_retunes.labels("size")._value.get() == 0


async def test_a_sample_whose_catalogue_changed_is_not_counted() -> None:
    slot, metrics, _, watch, _, q = world(2000, LSHParams(dim=DIM, k=6, L=8, T=4, seed=3),
                                          retune_items=0)
    res = slot.index.query(q[0], 10)
    watch.offer(q[0], 10, (), res.ids, slot.index)
    slot.index.add(["new"], q[0])  # the exact answer would now include it
    await watch.step(timeout=0.01)
    assert metrics.lsh_recall_queries._value.get() == 0
    res = slot.index.query(q[0], 10)
    watch.offer(q[0], 10, (), res.ids, slot.index)
    await watch.step(timeout=0.01)
    assert metrics.lsh_recall_queries._value.get() == 1


async def test_a_rebuild_waits_for_the_items_lock() -> None:
    slot, _, lock, watch, _, _ = world(1500, LSHParams(dim=DIM, k=12, L=4, T=1, seed=3))
    watch.chosen_for = 0
    before = slot.index
    async with lock:  # an item batch being applied
        step = asyncio.create_task(watch.step(timeout=0.01))
        await asyncio.sleep(0.3)
        assert slot.index is before and not step.done()
    await step
    assert slot.index is not before
