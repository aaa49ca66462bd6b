"""The pending buckets (recall.lsh.pending, compiled writes and the compiled search's
reads) against a dict of lists, the structure they replace, operation by operation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall.lsh.pending import PendingBuckets

L = 3
#: a few keys (buckets shared by many slots, probe chains) and extreme ones
KEYS = st.one_of(st.integers(-3, 3), st.sampled_from([2**63 - 1, -2**63, 1 << 40, -(1 << 40)]),
                 st.integers(-2**63, 2**63 - 1))
OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 30), st.lists(KEYS, min_size=L, max_size=L)),
    st.tuples(st.just("remove"), st.integers(0, 30), st.none()),
    st.tuples(st.just("clear"), st.none(), st.none())), max_size=80)


def assert_same(pending: PendingBuckets, model: dict[int, list[int]], probe: set[int]) -> None:
    for key in probe:
        assert pending.bucket(key) == model.get(key, []), key
    assert len(pending) == sum(len(v) for v in model.values())
    assert bool(pending) == any(model.values())


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from([2, 4, 1024]))
def test_pending_buckets_hold_what_a_dict_of_lists_holds(ops, cells):
    """Slots in insertion order per key, removal in place (a slot listed twice in one
    bucket loses its first entry, as list.remove), clearing, growth from tiny tables."""
    pending, model = PendingBuckets(cells=cells), {}
    rows: dict[int, list[int]] = {}  # slot -> its keys, as the index keeps them
    seen: set[int] = set()
    for op, slot, keys in ops:
        if op == "add":
            if slot in rows:  # the index takes an item out before it re-adds it
                continue
            pending.add(np.array([slot]), np.array([keys], dtype=np.int64))
            rows[slot] = keys
            for key in keys:
                model.setdefault(key, []).append(slot)
            seen.update(keys)
        elif op == "remove":
            keys = rows.pop(slot, None)
            if keys is None:
                continue
            pending.remove(np.array([slot]), np.array([keys], dtype=np.int64))
            for key in keys:
                model[key].remove(slot)
        else:
            pending.clear()
            model.clear()
            rows.clear()
        assert_same(pending, model, seen | {0, 7})


def test_a_batch_add_equals_adds_one_by_one_and_grows_the_table():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 500, size=(3000, 4))
    slots = np.arange(3000)
    one, batch = PendingBuckets(cells=2), PendingBuckets(cells=2)
    for i in range(3000):
        one.add(slots[i:i + 1], keys[i:i + 1])
    batch.add(slots, keys)
    model: dict[int, list[int]] = {}
    for slot, row in zip(slots.tolist(), keys.tolist(), strict=True):
        for key in row:
            model.setdefault(key, []).append(slot)
    for key in range(500):
        assert one.bucket(key) == batch.bucket(key) == model.get(key, [])
    assert len(batch) == keys.size and len(batch.keys) >= 2 * 500


def test_freed_entries_are_reused():
    """An item re-added while pending (an update) does not grow the entry arrays."""
    pending = PendingBuckets(cells=4)
    keys = np.array([[1, 2, 3]])
    for _ in range(100):
        pending.add(np.array([5]), keys)
        pending.remove(np.array([5]), keys)
    assert len(pending.slots) <= 8 and not pending
    pending.add(np.array([5]), keys)
    assert [pending.bucket(k) for k in (1, 2, 3)] == [[5], [5], [5]]


def test_cells_must_be_a_power_of_two():
    with pytest.raises(ValueError):
        PendingBuckets(cells=3)


def test_removing_a_buckets_last_slot_then_adding_keeps_both_buckets_right():
    """The removed entry is reused by the next add (another bucket here): the emptied
    bucket's tail must not point at it any more."""
    pending = PendingBuckets(cells=4)
    one = np.array([[1]])
    pending.add(np.array([1]), one)
    pending.add(np.array([2]), one)
    pending.remove(np.array([2]), one)
    pending.add(np.array([9]), np.array([[5]]))
    pending.add(np.array([3]), one)
    assert (pending.bucket(1), pending.bucket(5)) == ([1, 3], [9])


def test_the_table_is_sized_by_its_keys_at_most_three_quarters_full():
    """Many slots share a bucket (a merge's worth at 1M x 16: ~1.4 entries a key): the
    cells follow the distinct keys, up to three quarters full, not the entries. Sized by
    entries, half full, a 1M x 16 catalogue's pending table grew to 2M cells (32 MiB,
    while the 1M-cell one was still held) where its ~0.7M keys fit 1M."""
    pending = PendingBuckets(cells=2)
    keys = np.arange(700)
    rows = keys.reshape(175, 4)  # an item's keys in 4 tables
    for rep in range(8):  # 8 slots in each of the 700 buckets, one item an add
        for i in range(175):
            pending.add(np.array([175 * rep + i]), rows[i:i + 1])
            assert 4 * int(pending.meta[0]) <= 3 * len(pending.keys)
    assert len(pending) == 8 * 700
    assert len(pending.keys) == 1024  # 700 keys; 5600 entries would have taken 16384
    assert pending.bucket(699) == [174 + 175 * rep for rep in range(8)]
