"""Rolling user vectors: exactness against a from-scratch mean, window rules, encoding."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall.users import RollingUserVectors
from recall.userstate import FORMAT_COLUMNS, FORMAT_JSON, FORMAT_PACKED, UserState

DIM = 8
RTOL, ATOL = 1e-5, 1e-6  # the documented tolerance (float32 output of float64 sums)


class Table:
    """Item vectors as a lookup; counts the ids looked up."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.calls: list[int] = []

    def __call__(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(ids))
        mat = np.zeros((len(ids), DIM), dtype=np.float32)
        present = np.zeros(len(ids), dtype=bool)
        for i, item in enumerate(ids):
            if item in self.vectors:
                mat[i] = self.vectors[item]
                present[i] = True
        return mat, present

    def get(self, item: str) -> np.ndarray | None:
        return self.vectors.get(item)


def make_table(n_items: int, missing: set[int], seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n_items, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return Table({f"i{j}": vecs[j] for j in range(n_items) if j not in missing})


def replay(roll: RollingUserVectors, clicks: list[tuple[str, float, float, str | None]],
           table: Table) -> UserState:
    """A new state after ``clicks`` (item, ts, weight, event_id) applied in order."""
    state = roll.new_state()
    for item, ts, weight, event_id in clicks:
        roll.apply(state, item, ts, weight, table.get(item), event_id)
    return state


def assert_mean(got: np.ndarray | None, want: np.ndarray | None) -> None:
    """The state's vector is the reference mean (None when it has none), finite."""
    if want is None:
        assert got is None
    else:
        assert got is not None and np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


Kept = list[tuple[float, int, str, float, "str | None"]]  # (ts, arrival, item, weight, event)


def reference_window(clicks: list[tuple[str, float, float, str | None]], window: int) -> Kept:
    """The window from scratch: the last N clicks by ts (ties by arrival), duplicates of
    kept event ids skipped."""
    kept: Kept = []
    for arrival, (item, ts, weight, event_id) in enumerate(clicks):
        if event_id is not None and any(k[4] == event_id for k in kept):
            continue
        kept.append((ts, arrival, item, weight, event_id))
        kept.sort(key=lambda k: (k[0], k[1]))
        kept = kept[-window:]
    return kept


def reference_mean(kept: Kept, half_life: float, table: Table, t_now: float
                   ) -> np.ndarray | None:
    """The weighted, decayed mean of the clicks' vectors (None when none has one)."""
    num = np.zeros(DIM)
    den = 0.0
    # weights relative to the heaviest: the same mean, and no overflow at 1e308
    heaviest = max((k[3] for k in kept if table.get(k[2]) is not None), default=1.0)
    for ts, _, item, weight, _ in kept:
        v = table.get(item)
        if v is None:
            continue
        share = weight / heaviest * (2.0 ** (-(t_now - ts) / half_life)
                                     if half_life > 0 else 1.0)
        num += share * v.astype(np.float64)
        den += share
    return num / den if den > 0 else None


def reference(clicks: list[tuple[str, float, float, str | None]], window: int,
              half_life: float, table: Table) -> tuple[list[tuple], np.ndarray | None]:
    """The window (last N by ts, ties by arrival, duplicates of kept event ids skipped)
    and its mean recomputed from scratch."""
    kept = reference_window(clicks, window)
    t_now = max((k[0] for k in kept), default=0.0)
    return [(k[2], k[0], k[4]) for k in kept], reference_mean(kept, half_life, table, t_now)


click_st = st.tuples(
    st.integers(0, 11).map(lambda j: f"i{j}"),  # 12 items, some without vectors
    st.integers(0, 400).map(float),  # coarse ts: many ties
    st.sampled_from([0.01, 0.5, 1.0, 2.0, 100.0]),
    st.one_of(st.none(), st.integers(0, 15).map(lambda e: f"e{e}")),  # duplicates
)


@settings(max_examples=150, deadline=None)
@given(
    clicks=st.lists(click_st, max_size=60),
    window=st.integers(1, 8),
    half_life=st.sampled_from([0.0, 0.0, 30.0, 500.0]),
    missing=st.sets(st.integers(0, 11), max_size=4),
)
def test_vector_equals_from_scratch_mean(clicks, window, half_life, missing) -> None:
    table = make_table(12, missing)
    roll = RollingUserVectors(DIM, window, half_life, lookup=table)
    state = replay(roll, clicks, table)
    want_window, want = reference(clicks, window, half_life, table)
    assert [(c.item_id, c.ts, c.event_id) for c in state.window] == want_window
    assert_mean(state.vector(), want)
    # the encoding round-trips exactly
    back = UserState.from_bytes(state.to_bytes(), DIM)
    assert back.window == state.window
    np.testing.assert_array_equal(back.vsum, state.vsum)
    assert (back.wsum, back.t_ref, back.since_recompute) == (
        state.wsum, state.t_ref, state.since_recompute)


#: valid weights (> 0) at the ends of float64: max, near max, smallest subnormal, tiny
extreme_weight_st = st.one_of(
    st.sampled_from([1e308, 1.7976931348623157e308, 5e-324, 1e-300, 1.0, 3.0]),
    st.floats(min_value=5e-324, max_value=1.7976931348623157e308))
#: up to 40 clicks on 12 items with extreme weights and no event ids
extreme_clicks_st = st.lists(st.tuples(st.integers(0, 11).map(lambda j: f"i{j}"),
                                       st.integers(0, 400).map(float), extreme_weight_st,
                                       st.none()), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    clicks=extreme_clicks_st,
    window=st.integers(1, 6),
    half_life=st.sampled_from([0.0, 0.0, 500.0]),
)
def test_extreme_weights_keep_the_mean(clicks, window, half_life) -> None:
    """Any weight > 0 is valid: the user's vector stays finite and equal to the weighted
    mean (1e308 three times overflowed the sums to inf; a lone 5e-324 click underflowed
    them to a zero vector, and the user fell back to popular items)."""
    table = make_table(12, {11})
    roll = RollingUserVectors(DIM, window, half_life, lookup=table)
    state = replay(roll, clicks, table)
    _, want = reference(clicks, window, half_life, table)
    assert_mean(state.vector(), want)


def test_huge_and_tiny_weights_give_the_items_mean() -> None:
    table = make_table(4, set())
    roll = RollingUserVectors(DIM, 5, lookup=table)
    state = roll.new_state()
    for n, item in enumerate(("i0", "i1", "i2")):
        roll.apply(state, item, float(n), 1e308, table.get(item))
    want = np.mean([table.get(i) for i in ("i0", "i1", "i2")], axis=0)
    np.testing.assert_allclose(state.vector(), want, rtol=RTOL, atol=ATOL)
    lone = roll.new_state()
    roll.apply(lone, "i3", 1.0, 5e-324, table.get("i3"))
    np.testing.assert_allclose(lone.vector(), table.get("i3"), rtol=RTOL, atol=ATOL)


def test_update_is_incremental_between_recomputes() -> None:
    """Per click, at most one item (the evicted one) is looked up; the whole window is
    looked up only on the periodic recompute, once every N applies."""
    table = make_table(100, set())
    window = 10
    roll = RollingUserVectors(DIM, window, lookup=table)
    state = roll.new_state()
    for j in range(100):
        roll.apply(state, f"i{j}", float(j), 1.0, table.get(f"i{j}"))
    assert table.calls.count(window) == 100 // window
    assert all(n in (1, window) for n in table.calls)
    assert len(table.calls) - table.calls.count(window) == 100 - window  # one per eviction


def test_duplicate_event_is_not_applied() -> None:
    table = make_table(3, set())
    roll = RollingUserVectors(DIM, 5, lookup=table)
    state = roll.new_state()
    assert roll.apply(state, "i0", 1.0, 1.0, table.get("i0"), "e1")
    before = state.to_bytes()
    assert not roll.apply(state, "i1", 2.0, 1.0, table.get("i1"), "e1")
    assert state.to_bytes() == before
    # still a duplicate after a round trip through the encoding (a restarted worker)
    again = UserState.from_bytes(before, DIM)
    assert not roll.apply(again, "i0", 1.0, 1.0, table.get("i0"), "e1")


def test_late_click_older_than_the_full_window_does_not_enter() -> None:
    table = make_table(5, set())
    roll = RollingUserVectors(DIM, 2, lookup=table)
    state = roll.new_state()
    roll.apply(state, "i0", 10.0, 1.0, table.get("i0"))
    roll.apply(state, "i1", 20.0, 1.0, table.get("i1"))
    roll.apply(state, "i2", 5.0, 1.0, table.get("i2"))
    assert [c.item_id for c in state.window] == ["i0", "i1"]
    roll.apply(state, "i3", 15.0, 1.0, table.get("i3"))  # evicts i0, lands in the middle
    assert [c.item_id for c in state.window] == ["i3", "i1"]
    assert state.seen() == {"i1", "i3"}


def test_items_without_vectors_count_but_add_nothing() -> None:
    table = make_table(3, {1})
    roll = RollingUserVectors(DIM, 2, lookup=table)
    state = roll.new_state()
    roll.apply(state, "i1", 1.0, 1.0, None)
    assert state.vector() is None and state.seen() == {"i1"}
    roll.apply(state, "i0", 2.0, 3.0, table.get("i0"))
    np.testing.assert_allclose(state.vector(), table.get("i0"), rtol=RTOL, atol=ATOL)
    roll.apply(state, "i1", 3.0, 1.0, None)
    roll.apply(state, "i1", 4.0, 1.0, None)  # i0 evicted: only vector-less clicks remain
    assert state.vector() is None
    assert not state.vsum.any() and state.wsum == 0.0


def test_evicting_a_deleted_item_recomputes() -> None:
    table = make_table(4, set())
    roll = RollingUserVectors(DIM, 2, lookup=table)
    state = roll.new_state()
    roll.apply(state, "i0", 1.0, 1.0, table.get("i0"))
    roll.apply(state, "i1", 2.0, 1.0, table.get("i1"))
    del table.vectors["i0"]
    table.vectors["i1"] = table.vectors["i3"]  # i1's vector changed since the click
    roll.apply(state, "i2", 3.0, 1.0, table.get("i2"))
    want = (table.get("i3").astype(np.float64) + table.get("i2")) / 2
    np.testing.assert_allclose(state.vector(), want, rtol=RTOL, atol=ATOL)


def test_decay_weights_recent_clicks_more() -> None:
    table = make_table(2, set())
    roll = RollingUserVectors(DIM, 10, half_life=10.0, lookup=table)
    state = roll.new_state()
    roll.apply(state, "i0", 0.0, 1.0, table.get("i0"))
    roll.apply(state, "i1", 10.0, 1.0, table.get("i1"))  # i0 now counts half
    want = (0.5 * table.get("i0").astype(np.float64) + table.get("i1")) / 1.5
    np.testing.assert_allclose(state.vector(), want, rtol=RTOL, atol=ATOL)


def test_from_bytes_rejects_other_dimension_and_garbage() -> None:
    roll = RollingUserVectors(DIM, 3)
    state = roll.new_state()
    roll.apply(state, "x", 1.0, 1.0, np.ones(DIM, dtype=np.float32) / np.sqrt(DIM))
    for fmt in (FORMAT_JSON, FORMAT_COLUMNS, FORMAT_PACKED):
        data = state.to_bytes(fmt)
        with pytest.raises(ValueError, match="dimension"):
            UserState.from_bytes(data, DIM + 1)
        for bad in (b"", b"\x01abc", data[:30], data[:-3] + b"}}}", b"\x09" + data[1:],
                    data[:-2]):
            with pytest.raises(ValueError):
                UserState.from_bytes(bad, DIM)


def test_eviction_without_lookup_is_a_clear_error() -> None:
    roll = RollingUserVectors(DIM, 1)
    state = roll.new_state()
    v = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    roll.apply(state, "a", 1.0, 1.0, v)
    with pytest.raises(ValueError, match="lookup"):
        roll.apply(state, "b", 2.0, 1.0, v)


def test_bad_click_values_are_rejected_before_changing_state() -> None:
    roll = RollingUserVectors(DIM, 3)
    state = roll.new_state()
    v = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    for ts, weight, vec in ((float("nan"), 1.0, v), (1.0, 0.0, v), (1.0, -1.0, v),
                            (1.0, 1.0, np.ones(DIM + 1, dtype=np.float32))):
        with pytest.raises(ValueError):
            roll.apply(state, "a", ts, weight, vec)
    assert len(state) == 0 and state.vector() is None
    # an id that cannot be stored (a lone surrogate) neither
    roll.apply(state, "a", 1.0, 1.0, v, "e1")
    before = state.to_bytes()
    for item, event in (("\ud800", "e2"), ("b", "\udfff")):
        with pytest.raises(ValueError):
            roll.apply(state, item, 2.0, 1.0, v, event)
        assert state.to_bytes() == before
        with pytest.raises(ValueError):  # nor a window set whole
            state.clicks = [*state.clicks, (item, 2.0, 1.0, event, True)]
        assert state.to_bytes() == before


def test_window_clicks_leave_the_cyclic_gc() -> None:
    """A worker holds ~50 clicks for each of many users: the window's columns hold no
    object per click that the GC tracks, so full collections do not walk every click
    (they paused the worker for 25-100 ms every few seconds when each click was an
    object), before and after a round trip through Redis's bytes."""
    import gc

    def tracked(state: UserState) -> int:  # GC-tracked objects the state holds
        seen, todo, n = set(), [state], 0
        while todo:
            o = todo.pop()
            if id(o) in seen or isinstance(o, type):  # not into its class (and modules)
                continue
            seen.add(id(o))
            if gc.is_tracked(o):
                n += 1
                todo += gc.get_referents(o)
        return n

    table = make_table(60, set())
    counts = []
    for size in (5, 50):
        roll = RollingUserVectors(DIM, size, lookup=table)
        state = roll.new_state()
        for j in range(size + 3):
            roll.apply(state, f"i{j}", float(j), 1.0, table.get(f"i{j}"), f"e{j}")
        back = UserState.from_bytes(state.to_bytes(), DIM)
        assert back.window == state.window and len(back) == size
        gc.collect()
        counts += [tracked(state), tracked(back)]
        # nor per user beyond the state and its float columns: the segment starts are a
        # tuple of ints, which the GC stops tracking
        assert not gc.is_tracked(state.starts) and not gc.is_tracked(back.starts)
    assert len(set(counts)) == 1, counts  # the same few containers for 5 or 50 clicks


# --- multi-interest users -------------------------------------------------------------


def reference_interests(clicks: list[tuple[str, float, float, str | None]], window: int,
                        half_life: float, table: Table, interests: int, gap: float,
                        ) -> list[np.ndarray]:
    """The window's interest vectors from scratch, newest first: the window cut at its
    last ``interests - 1`` gaps longer than ``gap``, each segment's weighted mean
    (segments without an item vector left out)."""
    kept = reference_window(clicks, window)
    gaps = [i for i in range(1, len(kept)) if kept[i][0] - kept[i - 1][0] > gap]
    cuts = gaps[max(0, len(gaps) - (interests - 1)):] if interests > 1 else []
    edges = [0, *cuts, len(kept)]
    t_now = max((k[0] for k in kept), default=0.0)
    means = [reference_mean(kept[a:b], half_life, table, t_now) for a, b in pairwise(edges)]
    out = [m for m in means if m is not None]
    return out[::-1]


@settings(max_examples=300, deadline=None)
@given(
    clicks=st.lists(click_st, max_size=60),
    window=st.integers(1, 8),
    half_life=st.sampled_from([0.0, 0.0, 30.0, 500.0]),
    missing=st.sets(st.integers(0, 11), max_size=4),
    interests=st.integers(1, 4),
    gap=st.sampled_from([0.0, 10.0, 40.0, 150.0]),
)
def test_interests_equal_from_scratch_sessions(clicks, window, half_life, missing,
                                               interests, gap) -> None:
    """After any clicks (late ones, duplicates, items without vectors, decay), the kept
    interest vectors are the from-scratch session means of the window."""
    table = make_table(12, missing)
    roll = RollingUserVectors(DIM, window, half_life, lookup=table, interests=interests,
                              session_gap=gap)
    state = replay(roll, clicks, table)
    want = reference_interests(clicks, window, half_life, table, interests, gap)
    got = state.interests()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    _, whole = reference(clicks, window, half_life, table)
    assert_mean(state.vector(), whole)
    back = UserState.from_bytes(state.to_bytes(), DIM)
    assert back.window == state.window and back.starts == state.starts
    np.testing.assert_array_equal(back.seg_vsum, state.seg_vsum)
    np.testing.assert_array_equal(back.seg_wsum, state.seg_wsum)
    assert (back.t_ref, back.since_recompute) == (state.t_ref, state.since_recompute)


@settings(max_examples=200, deadline=None)
@given(
    clicks=extreme_clicks_st,
    window=st.integers(1, 6),
    half_life=st.sampled_from([0.0, 0.0, 500.0]),
    interests=st.integers(2, 3),
)
def test_extreme_weights_keep_each_interest(clicks, window, half_life, interests) -> None:
    """Each session's sums are in units of its own heaviest click: a session of 5e-324
    clicks next to one of 1e308 clicks keeps its own interest vector."""
    table = make_table(12, {11})
    roll = RollingUserVectors(DIM, window, half_life, lookup=table, interests=interests,
                              session_gap=50.0)
    state = replay(roll, clicks, table)
    want = reference_interests(clicks, window, half_life, table, interests, 50.0)
    got = state.interests()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    _, whole = reference(clicks, window, half_life, table)
    assert_mean(state.vector(), whole)


def test_interests_update_in_order_looks_up_only_the_evicted_item() -> None:
    """Clicks in time order, sessions opening and merging: per click at most the evicted
    item is looked up (O(M·d)), the whole window only on the periodic recompute."""
    table = make_table(100, set())
    window = 10
    roll = RollingUserVectors(DIM, window, lookup=table, interests=3, session_gap=50.0)
    state = roll.new_state()
    for j in range(100):  # a session of 1-4 clicks every 100 s
        roll.apply(state, f"i{j}", 100.0 * (j // 3) + j % 3, 1.0, table.get(f"i{j}"))
    assert len(state.interests()) == 3
    assert table.calls.count(window) == 100 // window
    assert all(n in (1, window) for n in table.calls)


def test_two_sessions_give_two_interests() -> None:
    table = make_table(4, set())
    roll = RollingUserVectors(DIM, 10, lookup=table, interests=2, session_gap=1800.0)
    state = roll.new_state()
    for item, ts in (("i0", 0.0), ("i1", 60.0), ("i2", 3000.0), ("i3", 3100.0)):
        roll.apply(state, item, ts, 1.0, table.get(item))
    newest, older = state.interests()
    v = {i: table.get(i).astype(np.float64) for i in ("i0", "i1", "i2", "i3")}
    np.testing.assert_allclose(newest, (v["i2"] + v["i3"]) / 2, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(older, (v["i0"] + v["i1"]) / 2, rtol=RTOL, atol=ATOL)
    # a late click closing the gap merges them into one session
    roll.apply(state, "i0", 1500.0, 1.0, table.get("i0"))
    (only,) = state.interests()
    np.testing.assert_allclose(only, state.vector(), rtol=RTOL, atol=ATOL)


#: a user state written by the single-vector code (format 1) of commit 985777c:
#: make_table(12, {3}); RollingUserVectors(DIM, 6, 0.0, lookup=table); OLD_CLICKS applied
OLD_BLOB = bytes.fromhex(
    "01080000000200000000000000000012400000000000c6c14000000000eee4aebf000000c84574e5"
    "3f0000003e128fe63f00000078de7de63f0000006e5ecfa83f000000601956dbbf00000079f7d7e0"
    "3f00000074df7aea3f5b5b226933222c3230302e302c312e302c226532222c66616c73655d2c5b22"
    "6935222c353030302e302c312e302c6e756c6c2c747275655d2c5b226937222c353035302e302c31"
    "2e302c6e756c6c2c747275655d2c5b226936222c353130302e302c302e352c226534222c74727565"
    "5d2c5b226938222c393030302e302c312e302c6e756c6c2c747275655d2c5b226932222c39313030"
    "2e302c312e302c6e756c6c2c747275655d5d"
)
#: the clicks of OLD_BLOB
OLD_CLICKS = [("i0", 100.0, 1.0, "e0"), ("i1", 160.0, 2.0, None), ("i3", 200.0, 1.0, "e2"),
              ("i5", 5000.0, 1.0, None), ("i6", 5100.0, 0.5, "e4"), ("i7", 5050.0, 1.0, None),
              ("i8", 9000.0, 1.0, None), ("i2", 9100.0, 1.0, None)]


def test_state_stored_by_single_vector_workers_is_read() -> None:
    blob = OLD_BLOB
    table = make_table(12, {3})
    state = UserState.from_bytes(blob, DIM)
    want_window, want = reference(OLD_CLICKS, 6, 0.0, table)
    assert [(c.item_id, c.ts, c.event_id) for c in state.window] == want_window
    np.testing.assert_allclose(state.vector(), want, rtol=RTOL, atol=ATOL)
    # one interest, in the JSON formats (what workers before format 3 read): byte for byte
    assert state.to_bytes(FORMAT_JSON) == blob
    assert UserState.from_bytes(state.to_bytes(), DIM).window == state.window
    # a worker with three interests re-cuts it into sessions on first use
    roll = RollingUserVectors(DIM, 6, lookup=table, interests=3, session_gap=1800.0)
    assert roll.conform(state)
    want3 = reference_interests(OLD_CLICKS, 6, 0.0, table, 3, 1800.0)
    assert len(want3) == 2  # the oldest session has one click, on an item without vector
    for g, w in zip(state.interests(), want3, strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    assert state.to_bytes(FORMAT_JSON)[0] == 2
    # and back to one interest without a lookup: the sessions' sums add up
    single = RollingUserVectors(DIM, 6, interests=1)
    assert single.conform(state)
    np.testing.assert_allclose(state.vector(), want, rtol=RTOL, atol=ATOL)
    assert state.to_bytes(FORMAT_JSON)[0] == 1


#: a user state written by the format-3 worker of commit 0dd37fb: make_table(12, {3});
#: RollingUserVectors(DIM, 6, 0.0, lookup=table); OLD_CLICKS and ("é-9", 9200.0, 1.0,
#: "ë1") applied (no vector for "é-9")
FORMAT3_BLOB = bytes.fromhex(
    "0308000000030000000000000000f8c1400100000006000000000000000000000000001240000000"
    "00eee4aebf000000c84574e53f0000003e128fe63f00000078de7de63f0000006e5ecfa83f000000"
    "601956dbbf00000079f7d7e03f00000074df7aea3f000000000088b3400000000000bab340000000"
    "0000ecb340000000000094c1400000000000c6c1400000000000f8c140000000000000f03f000000"
    "000000f03f000000000000e03f000000000000f03f000000000000f03f000000000000f03f010101"
    "0101005b5b226935222c226937222c226936222c226938222c226932222c22c3a92d39225d2c5b6e"
    "756c6c2c6e756c6c2c226534222c6e756c6c2c6e756c6c2c22c3ab31225d5d"
)


def test_state_stored_by_format_3_workers_is_read_and_can_be_written_for_them() -> None:
    """A rolling upgrade from a format-3 worker: its states are read as they were, and
    RECALL_USER_STATE_FORMAT=columns writes what it reads, byte for byte."""
    table = make_table(12, {3})
    state = UserState.from_bytes(FORMAT3_BLOB, DIM)
    clicks = [*OLD_CLICKS, ("é-9", 9200.0, 1.0, "ë1")]
    want_window, want = reference(clicks, 6, 0.0, table)
    assert [(c.item_id, c.ts, c.event_id) for c in state.window] == want_window
    assert [c.has_vector for c in state.window] == [True] * 5 + [False]
    np.testing.assert_allclose(state.vector(), want, rtol=RTOL, atol=ATOL)
    assert state.to_bytes(FORMAT_COLUMNS) == FORMAT3_BLOB
    packed = state.to_bytes()
    assert packed[0] == FORMAT_PACKED
    back = UserState.from_bytes(packed, DIM)
    assert back.window == state.window and back.to_bytes(FORMAT_COLUMNS) == FORMAT3_BLOB
    # clicks redelivered after the upgrade are still recognised by their event ids
    from recall.userbatch import apply_batch

    roll = RollingUserVectors(DIM, 6, 0.0, lookup=table)
    assert apply_batch(roll, [(back, "i6", 5100.0, 0.5, "e4"), (back, "é-9", 9200.0, 1.0,
                                                                "ë1")]) == [False, False]
    assert back.window == state.window


def test_corrupt_packed_id_columns_are_rejected() -> None:
    """Format 4's id columns are checked as they are read: the right number of ids in
    each, and valid UTF-8 (a state that fails is "unreadable", never a wrong window)."""
    state = UserState.from_bytes(FORMAT3_BLOB, DIM)
    data = bytearray(state.to_bytes())
    n_items = int.from_bytes(data[25:29], "little")
    items_at = len(data) - n_items - len(state.events)
    assert data[items_at:items_at + n_items] == state.items
    shifted = bytearray(data)  # the last item id read as the first event's
    shifted[25:29] = (n_items - len(b"\xc3\xa9-9\xff")).to_bytes(4, "little")
    # one byte later: an empty item id more, an event id fewer, both columns well formed
    # (the first event id is missing: its token is the separator alone)
    assert state.events.startswith(b"\xff\xff")
    longer = bytearray(data)
    longer[25:29] = (n_items + 1).to_bytes(4, "little")
    bad_utf8 = bytearray(data)
    bad_utf8[items_at + 1] = 0x80  # a continuation byte where "i5" starts
    for bad in (shifted, longer, bad_utf8, data + b"e9\xff"):
        with pytest.raises(ValueError, match="columns"):
            UserState.from_bytes(bytes(bad), DIM)
    assert UserState.from_bytes(bytes(data), DIM).window == state.window


def test_recutting_needs_a_lookup_when_sessions_split() -> None:
    state = UserState.from_bytes(OLD_BLOB, DIM)
    with pytest.raises(ValueError, match="lookup"):
        RollingUserVectors(DIM, 6, interests=2).conform(state)
    assert state.starts == (0,)  # unchanged


def test_bad_segment_starts_are_rejected() -> None:
    table = make_table(4, set())
    roll = RollingUserVectors(DIM, 10, lookup=table, interests=2, session_gap=10.0)
    state = roll.new_state()
    for item, ts in (("i0", 0.0), ("i1", 100.0)):
        roll.apply(state, item, ts, 1.0, table.get(item))
    for fmt, version, at in ((FORMAT_JSON, 2, 21), (FORMAT_COLUMNS, 3, 25),
                             (FORMAT_PACKED, 4, 29)):
        data = bytearray(state.to_bytes(fmt))
        assert data[0] == version and state.starts == (0, 1)
        data[at + 4:at + 8] = (7).to_bytes(4, "little")  # 2nd segment starts past the window
        with pytest.raises(ValueError, match="segment"):
            UserState.from_bytes(bytes(data), DIM)
        with pytest.raises(ValueError, match="truncated"):
            UserState.from_bytes(bytes(data[:40]), DIM)


def test_late_click_closing_a_gap_splits_the_oldest_segment() -> None:
    """Sessions at 0 | 20 | 40 (gap 15), two interests: [0, 20] and [40]. A late click at
    30 joins 20 and 40 into one session, so the oldest segment splits: [0] and [20, 30, 40]
    (the one case that re-reads the window)."""
    table = make_table(4, set())
    roll = RollingUserVectors(DIM, 10, lookup=table, interests=2, session_gap=15.0)
    state = roll.new_state()
    for item, ts in (("i0", 0.0), ("i1", 20.0), ("i2", 40.0)):
        roll.apply(state, item, ts, 1.0, table.get(item))
    assert state.starts == (0, 2)
    roll.apply(state, "i3", 30.0, 1.0, table.get("i3"))
    assert state.starts == (0, 1)
    v = {i: table.get(i).astype(np.float64) for i in ("i0", "i1", "i2", "i3")}
    newest, older = state.interests()
    np.testing.assert_allclose(newest, (v["i1"] + v["i2"] + v["i3"]) / 3, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(older, v["i0"], rtol=RTOL, atol=ATOL)
    assert table.calls[-1] == 4  # the window re-read


def test_queries_are_the_mean_or_the_interests_and_skip_zero_vectors() -> None:
    table = make_table(4, set())
    v0 = table.get("i0")
    table.vectors["neg"] = -v0
    two = RollingUserVectors(DIM, 10, lookup=table, interests=2, session_gap=100.0)
    state = two.new_state()
    for item, ts in (("i0", 0.0), ("neg", 1.0), ("i1", 500.0)):  # first session sums to 0
        two.apply(state, item, ts, 1.0, table.get(item))
    (only,) = two.queries(state)
    np.testing.assert_allclose(only, table.get("i1"), rtol=RTOL, atol=ATOL)
    one = RollingUserVectors(DIM, 10, lookup=table)
    (mean,) = one.queries(state)  # re-cut to one vector (a lookup is there)
    assert state.starts == (0,)
    np.testing.assert_allclose(mean, table.get("i1") / 3, rtol=RTOL, atol=ATOL)
    assert one.queries(one.new_state()) == []
