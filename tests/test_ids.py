"""The compact id store (recall/lsh/ids.py) against a plain dict model: slots handed out,
looked up, removed, reused, and ids read back, through growth, compaction and rehashing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall.lsh import LSHIndex, LSHParams
from recall.lsh.ids import IdStore


def test_round_trip_of_slots_and_ids() -> None:
    store = IdStore()
    slots, new = store.add(["a", "bb", "ccc"])
    assert slots.tolist() == [0, 1, 2] and new.all()
    assert store.slots(["ccc", "a", "bb"]).tolist() == [2, 0, 1]
    assert store.ids_of([1, 2, 0]) == ["bb", "ccc", "a"]
    assert len(store) == 3 and store.high == 3
    assert "bb" in store and "b" not in store and "bbb" not in store and 7 not in store


def test_unknown_ids_are_minus_one_and_unknown_slots_raise() -> None:
    store = IdStore()
    assert store.slots(["x"]).tolist() == [-1]  # empty store
    store.add(["x", "y"])
    assert store.slots(["y", "nope", "", "x"]).tolist() == [1, -1, -1, 0]
    with pytest.raises(KeyError, match="slot 5"):
        store.ids_of([0, 5])
    store.remove(["x"])
    with pytest.raises(KeyError, match="slot 0"):
        store.ids_of([0])


def test_known_ids_keep_their_slot_and_repeats_get_one() -> None:
    store = IdStore()
    store.add(["a", "b"])
    slots, new = store.add(["b", "c", "c", "a", "d"])
    assert slots.tolist() == [1, 2, 2, 0, 3]
    assert new.tolist() == [False, True, False, False, True]
    assert len(store) == 4 and store.high == 4


def test_removed_slots_are_reused_last_freed_first() -> None:
    store = IdStore()
    store.add([f"i{n}" for n in range(6)])
    assert store.remove(["i1", "zz", "i4", "i1"]).tolist() == [1, 4]  # unknown, repeat
    assert len(store) == 4 and store.slots(["i1", "i4"]).tolist() == [-1, -1]
    slots, new = store.add(["new1", "i1", "new3"])
    assert slots.tolist() == [4, 1, 6] and new.all()
    assert store.ids_of([4, 1, 6]) == ["new1", "i1", "new3"]
    assert store.high == 7 and len(store) == 7
    assert store.remove([]).tolist() == []


def test_non_ascii_and_odd_ids_round_trip() -> None:
    ids = ["é", "e\u0301", "日本語", "🙂x", "", "a\x00b", "\udcff", "x" * 1000, "a b"]
    store = IdStore()
    slots, _ = store.add(ids)
    assert store.ids_of(slots) == ids
    assert store.slots(ids).tolist() == slots.tolist()
    assert store.slots(["e", "日本", "a"]).tolist() == [-1, -1, -1]  # prefixes are others
    assert sorted(store.ids()) == sorted(ids)


def test_growth_keeps_every_id() -> None:
    store = IdStore()
    n = 50_000
    ids = [f"item-{k}" for k in range(n)]
    for start in range(0, n, 7_000):  # many table doublings and blob growths
        store.add(ids[start:start + 7_000])
    assert len(store) == n
    assert store.slots(ids).tolist() == list(range(n))
    assert store.ids_of(np.arange(n)) == ids
    assert store.ids() == ids


def test_churn_compacts_and_rehashes_without_losing_ids() -> None:
    store = IdStore()
    live: dict[str, int] = {}
    for rnd in range(30):  # removals leave removed cells and dead bytes behind
        batch = [f"r{rnd}-{k}-{'x' * (k % 13)}" for k in range(400)]
        slots, _ = store.add(batch)
        live.update(zip(batch, slots.tolist(), strict=True))
        gone = list(live)[: 380]
        store.remove(gone)
        for g in gone:
            del live[g]
    assert len(store) == len(live)
    assert store.slots(list(live)).tolist() == list(live.values())
    assert store.ids_of(list(live.values())) == list(live)
    assert store.high < 1000  # freed slots were reused
    assert store.nbytes() < 200_000  # the blob was compacted, not grown per round


def test_reserve_then_load() -> None:
    store = IdStore()
    store.reserve(10_000)
    slots, _ = store.add([str(k) for k in range(10_000)])
    assert slots.tolist() == list(range(10_000)) and store.high == 10_000


names = st.text(max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(names, max_size=12)), max_size=25))
def test_matches_a_dict_model(ops: list[tuple[bool, list[str]]]) -> None:
    store = IdStore()
    model: dict[str, int] = {}
    free: list[int] = []
    high = 0
    for is_add, ids in ops:
        if is_add:
            slots, new = store.add(ids)
            want, want_new = [], []
            for i in ids:
                if i not in model:
                    if free:
                        model[i] = free.pop()
                    else:
                        model[i], high = high, high + 1
                    want_new.append(True)
                else:
                    want_new.append(False)
                want.append(model[i])
            assert slots.tolist() == want and new.tolist() == want_new
        else:
            removed = store.remove(ids)
            want = []
            for i in ids:
                if i in model:
                    want.append(model.pop(i))
            free.extend(want)
            assert removed.tolist() == want
        assert len(store) == len(model) and store.high == high
    assert store.slots(list(model)).tolist() == list(model.values())
    assert store.ids_of(list(model.values())) == list(model)


def test_index_answers_with_the_ids_it_was_given() -> None:
    rng = np.random.default_rng(3)
    index = LSHIndex(LSHParams(dim=8, k=3, L=4, T=2, seed=1))
    ids = [f"é{k}" for k in range(300)]
    vecs = rng.standard_normal((300, 8)).astype(np.float32)
    index.add(ids, vecs)
    index.remove(ids[:50])
    index.add(["новый"], vecs[:1])  # takes a freed slot
    for compiled in (True, False):
        index.compiled = compiled
        res = index.search(vecs[0], 5, exclude=[{"é1", "unknown"}])[0]
        assert res.ids[0] == "новый" and "é1" not in res.ids
        exact = index.search(vecs[60], 3, exact=True)[0]
        assert exact.ids[0] == "é60"
    got, present = index.vectors_of(["é60", "é0", "новый"])
    assert present.tolist() == [True, False, True]
    unit = vecs[[60, 0]] / np.linalg.norm(vecs[[60, 0]], axis=1, keepdims=True)
    # stored in half precision (recall.lsh.params.VECTOR_DTYPE)
    assert np.allclose(got[[0, 2]], unit, atol=3e-4) and not got[1].any()


def test_a_sample_of_vectors_is_of_distinct_live_items() -> None:
    rng = np.random.default_rng(5)
    index = LSHIndex(LSHParams(dim=8, k=3, L=4, T=2, seed=1))
    assert index.sample_vectors(5, rng).shape == (0, 8)
    ids = [f"i{k}" for k in range(100)]
    index.add(ids, rng.standard_normal((100, 8)).astype(np.float32))
    index.remove(ids[:60])
    live, _ = index.vectors_of(ids[60:])
    got = index.sample_vectors(25, rng)
    assert got.shape == (25, 8) and got.dtype == np.float32
    rows = {tuple(r) for r in live.tolist()}
    assert all(tuple(r) in rows for r in got.tolist())  # live items only
    assert len({tuple(r) for r in got.tolist()}) == 25  # without replacement
    every = index.sample_vectors(1000, rng)  # more than there are: all of them
    assert sorted(map(tuple, every.tolist())) == sorted(rows)
