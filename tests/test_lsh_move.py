"""A move to a new hash layout a slice at a time (recall/lsh/move.py): what it ends with,
what searches see while it runs, what it holds, and a move stopped half way."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from recall.lsh import LSHIndex, LSHParams
from recall.lsh.move import move_bytes, move_off_loop, slice_items
from recall.lsh.search import QueryResult, union_results

OLD = LSHParams(dim=16, family="pstable", k=3, L=4, T=2, w=0.9)
NEW = LSHParams(dim=16, family="pstable", k=5, L=6, T=3, w=0.9)
#: entries a slice holds in the tests: 100 items at NEW's L, 30 slices
ENTRIES = 600


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def served(n: int = 3000, seed: int = 10) -> tuple[LSHIndex, np.ndarray, list[str]]:
    """An index as a worker serves it: a bulk load, then pending items, updates and
    removals (the move folds them in first)."""
    rng = np.random.default_rng(seed)
    x = unit(rng, n, 16)
    ids = [f"i{j}" for j in range(n)]
    index = LSHIndex(OLD, merge="deferred")
    index.MERGE_MIN, index.MERGE_RATIO = 1000, 10**9
    index.add(ids[: n - 500], x[: n - 500])
    index.add(ids[n - 500:], x[n - 500:])  # pending
    index.add(ids[:40], x[100:140])  # updates
    x[:40] = x[100:140]
    index.remove(ids[200:260])
    assert index.stats()["pending_items"] > 0 and index.stats()["stale_items"] > 0
    return index, x, ids


async def test_a_move_ends_as_a_fresh_build_and_takes_the_vectors_over() -> None:
    old, x, ids = served()
    new = await move_off_loop(old, NEW, ENTRIES)
    fresh = LSHIndex(NEW)
    live = [i for i in ids if i in old]
    fresh.add(live, x[[int(i[1:]) for i in live]])
    q = unit(np.random.default_rng(1), 60, 16)
    for a, b in zip(new.search(q, 10), fresh.search(q, 10), strict=True):
        assert a.ids == b.ids and a.candidates == b.candidates
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    assert new._buckets.size == len(live) * NEW.L and new.stats()["pending_items"] == 0
    assert old._buckets.size == 0  # every entry dropped from the old table on the way
    assert np.shares_memory(new._vecs, old._vecs) and new._ids is old._ids
    with pytest.raises(RuntimeError, match="new layout"):
        old.add(["x"], x[0])
    new.add(["x"], x[0])
    new.remove(ids[:5])
    assert "x" in new and ids[0] not in new


async def test_searches_during_a_move_find_every_item_once_in_about_one_table() -> None:
    """Between every two steps of the move (where the event loop serves requests):
    every live item found by its own vector, and no answer holding an item twice; the
    two tables together hold at most the larger layout's entries plus one slice (a
    table built whole beside the old one held both), and their bytes grow by no more
    than the memory guard's estimate (``move_bytes``)."""
    old, x, ids = served()
    await old.merge_off_loop(force=True)
    live = [i for i in ids if i in old]
    rows = np.array([int(i[1:]) for i in live])
    n = len(live)
    bound = n * max(OLD.L, NEW.L) + slice_items(NEW, ENTRIES) * min(OLD.L, NEW.L)
    built = LSHIndex(NEW)  # the new table's size, as the tuner measures it
    built.stage(live, x[rows])
    built.build()
    before = old._buckets.nbytes()
    guess = move_bytes(old, NEW, built._buckets.nbytes() - before, ENTRIES)
    split = between = grew = 0
    move = asyncio.ensure_future(move_off_loop(old, NEW, ENTRIES))
    while not move.done():
        heir = old._successor
        if heir is not None:
            some = slice(split * 97 % n, split * 97 % n + 200)  # a window, moving on
            for item, r in zip(live[some], old.search(x[rows[some]], 3), strict=True):
                assert item in r.ids and r.scores[0] > 0.999
                assert len(set(r.ids)) == len(r.ids)
            assert old._buckets.size + heir._buckets.size <= bound
            grew = max(grew, old._buckets.nbytes() + heir._buckets.nbytes() - before)
            split += 1
            between += 0 < heir._buckets.size < n * NEW.L
        await asyncio.sleep(0)
    new = move.result()
    assert between >= 50  # searches ran with the items split between the layouts
    assert 0 < grew <= guess
    assert all(item in r.ids for item, r in zip(live, new.search(x[rows], 3), strict=True))


async def test_a_move_stopped_half_way_leaves_the_old_index_as_it_was() -> None:
    old, x, _ = served()
    await old.merge_off_loop(force=True)
    q = unit(np.random.default_rng(2), 40, 16)
    before = old.search(q, 10)
    entries = old._buckets.size
    move = asyncio.ensure_future(move_off_loop(old, NEW, ENTRIES))
    while old._successor is None or old._successor._buckets.size < 10 * ENTRIES:
        await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="new layout"):
        old.add(["x"], x[0])  # no writes while the items are split
    move.cancel()
    with pytest.raises(asyncio.CancelledError):
        await move
    assert old._successor is None and old._buckets.size == entries
    for a, b in zip(old.search(q, 10), before, strict=True):
        assert a.ids == b.ids and a.candidates == b.candidates
    old.add(["x"], x[0])  # writable again
    assert "x" in old


def test_the_union_ranks_as_one_search_and_keeps_an_item_once() -> None:
    index = LSHIndex(LSHParams(dim=2))
    index.add(["a", "b", "c", "d"], np.eye(2, dtype=np.float32)[[0, 0, 1, 1]])
    f = np.float32
    a = [QueryResult(["b", "c"], np.array([0.9, 0.5], f), 3),
         QueryResult([], np.zeros(0, f), 0)]
    b = [QueryResult(["a", "b", "d"], np.array([0.9, 0.9, 0.5], f), 4),
         QueryResult(["d"], np.array([0.1], f), 2)]
    first, second = union_results(index._ids, a, b, [3, 5])
    assert first.ids == ["a", "b", "c"]  # ties by slot; "b" once
    np.testing.assert_array_equal(first.scores, np.array([0.9, 0.9, 0.5], f))
    assert first.candidates == 7
    assert second.ids == ["d"] and second.candidates == 2


def test_move_bytes_counts_a_slice_not_a_second_table() -> None:
    """What the guard weighs for a move in slices: the new table's growth, its
    per-slot arrays and a slice, not a second whole table (``relayout_bytes``): below
    a whole build's estimate with slices of an eighth of the items, and growing with the
    slice."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300_000, 16)).astype(np.float32)
    index = LSHIndex(LSHParams(dim=16, k=6, L=8, w=1.25, T=2))
    index.stage([f"i{i}" for i in range(len(x))], x)
    index.build()
    same = LSHParams(dim=16, k=6, L=8, w=1.25, T=2, seed=7)
    table = index._buckets.nbytes()
    small, large = (move_bytes(index, same, entries=e) for e in (300_000, 2_400_000))
    assert small < index.relayout_bytes(same)
    assert large - small >= 0.5 * table * (2_400_000 - 300_000) / (len(x) * 8)
    bigger = LSHParams(dim=16, k=6, L=16, w=1.25, T=2)
    assert move_bytes(index, bigger, entries=300_000) > table  # its growth: one table
