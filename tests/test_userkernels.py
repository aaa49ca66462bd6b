"""Click application in a batch (recall.userbatch, compiled sums) against the per-click
reference (RollingUserVectors.apply), row by row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recall.userbatch import apply_batch
from recall.users import RollingUserVectors
from recall.userstate import UserState
from tests.test_users import ATOL, DIM, RTOL, extreme_weight_st, make_table

WEIGHTS = st.sampled_from([0.01, 0.5, 1.0, 2.0, 100.0])


def users_clicks(weights: st.SearchStrategy = WEIGHTS) -> st.SearchStrategy:
    return st.lists(st.tuples(
        st.integers(0, 2),
        st.integers(0, 11).map(lambda j: f"i{j}"),  # 12 items, some without vectors
        st.integers(0, 400).map(float),  # coarse ts: many ties, late clicks, gaps
        weights,
        st.one_of(st.none(), st.integers(0, 15).map(lambda e: f"e{e}"))), max_size=60)


def run_both(clicks, window, half_life, missing, interests, gap, batch_size, stored=None):
    table = make_table(12, missing)
    roll = RollingUserVectors(DIM, window, half_life, lookup=table, interests=interests,
                              session_gap=gap)
    ref = [roll.new_state() if stored is None else UserState.from_bytes(stored, DIM)
           for _ in range(3)]
    got = [roll.new_state() if stored is None else UserState.from_bytes(stored, DIM)
           for _ in range(3)]
    ref_ok = [roll.apply(ref[u], item, ts, w, table.get(item), e)
              for u, item, ts, w, e in clicks]
    got_ok: list[bool] = []
    for start in range(0, len(clicks), batch_size):
        part = clicks[start:start + batch_size]
        got_ok += apply_batch(roll, [(got[u], item, ts, w, e) for u, item, ts, w, e in part])
    return roll, ref, got, ref_ok, got_ok


def assert_same(roll, ref, got) -> None:
    for r, g in zip(ref, got, strict=True):
        assert g.window == r.window  # the same clicks, order, has_vector flags
        assert g.starts == r.starts
        for a, b in zip(g.interests(), r.interests(), strict=True):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
        assert len(g.interests()) == len(r.interests())
        if r.vector() is None:
            assert g.vector() is None
        else:
            np.testing.assert_allclose(g.vector(), r.vector(), rtol=RTOL, atol=ATOL)
        assert len(roll.queries(g)) == len(roll.queries(r))
        if r.clicks:
            assert g.t_ref == r.t_ref
        cached = g.top()  # the heaviest weight kept click by click = a fresh scan's
        g.forget_top()
        assert g.top() == cached
        back = UserState.from_bytes(g.to_bytes(), DIM)  # what Redis gets reads back
        assert back.window == g.window and back.starts == g.starts
        np.testing.assert_array_equal(back.seg_vsum, g.seg_vsum)


@settings(max_examples=300, deadline=None)
@given(clicks=users_clicks(), window=st.integers(1, 8),
       half_life=st.sampled_from([0.0, 0.0, 30.0, 500.0]),
       missing=st.sets(st.integers(0, 11), max_size=4), interests=st.integers(1, 4),
       gap=st.sampled_from([0.0, 10.0, 40.0, 150.0]), batch_size=st.integers(1, 25))
# the heaviest click leaves as a click of the same weight as the next heaviest enters:
# the unit of what stays is the lighter one's, the new click left out
@example(clicks=[(1, "i0", 0.0, 0.5, None), (1, "i0", 0.0, 0.01, None),
                 (1, "i1", 0.0, 1.0, None)],
         window=2, half_life=0.0, missing=set(), interests=1, gap=0.0, batch_size=1)
def test_batch_equals_clicks_applied_one_by_one(clicks, window, half_life, missing,
                                                interests, gap, batch_size) -> None:
    """Any clicks of several users (interleaved, late, duplicate event ids, items
    without vectors, decay, sessions), in batches of any size: the same windows,
    duplicates and vectors as the reference's one click at a time, row by row."""
    roll, ref, got, ref_ok, got_ok = run_both(clicks, window, half_life, missing,
                                              interests, gap, batch_size)
    assert got_ok == ref_ok
    assert_same(roll, ref, got)


@settings(max_examples=150, deadline=None)
@given(clicks=users_clicks(extreme_weight_st), window=st.integers(1, 6),
       half_life=st.sampled_from([0.0, 500.0]), interests=st.integers(1, 3),
       batch_size=st.integers(1, 25))
def test_batch_keeps_extreme_weights(clicks, window, half_life, interests, batch_size
                                     ) -> None:
    roll, ref, got, ref_ok, got_ok = run_both(clicks, window, half_life, {11}, interests,
                                              40.0, batch_size)
    assert got_ok == ref_ok
    assert_same(roll, ref, got)


def test_batch_continues_a_stored_state_of_other_interest_settings() -> None:
    """A state stored with one vector is re-cut into sessions by the batch path too."""
    table = make_table(12, set())
    one = RollingUserVectors(DIM, 6, lookup=table)
    st1 = one.new_state()
    for j, ts in enumerate([0.0, 1.0, 500.0, 501.0]):
        one.apply(st1, f"i{j}", ts, 1.0, table.get(f"i{j}"))
    clicks = [(0, "i5", 502.0, 1.0, None), (1, "i6", 900.0, 2.0, "e1")]
    roll, ref, got, ref_ok, got_ok = run_both(clicks, 6, 0.0, set(), 3, 100.0, 2,
                                              stored=st1.to_bytes())
    assert got_ok == ref_ok
    assert_same(roll, ref, got)
    assert len(got[1].interests()) == 3


def test_a_bad_click_changes_no_state() -> None:
    table = make_table(12, set())
    roll = RollingUserVectors(DIM, 4, lookup=table)
    s = roll.new_state()
    with pytest.raises(ValueError, match="weight > 0"):
        apply_batch(roll, [(s, "i1", 1.0, 1.0, None), (s, "i2", 2.0, 0.0, None)])
    assert s.window == [] and s.vector() is None


def test_an_id_that_cannot_be_stored_changes_no_state() -> None:
    """An id with a lone surrogate cannot be packed (or stored): the batch is refused
    before any click of it is applied, even to a full window whose oldest click would
    leave first."""
    table = make_table(12, set())
    roll = RollingUserVectors(DIM, 2, lookup=table)
    s = roll.new_state()
    apply_batch(roll, [(s, "i1", 1.0, 1.0, "e1"), (s, "i2", 2.0, 1.0, "e2")])
    before = s.to_bytes()
    for bad in ([(s, "i3", 3.0, 1.0, None), (s, "\ud800", 4.0, 1.0, None)],
                [(s, "i3", 3.0, 1.0, "\udfff")]):
        with pytest.raises(ValueError):
            apply_batch(roll, bad)
        assert s.to_bytes() == before
