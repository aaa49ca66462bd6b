"""Multi-interest users: the offline twin (offline.userwin) computes exactly what the
worker's online state (recall.users) holds after the same clicks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offline.clicklog import ClickLog
from offline.userwin import user_windows
from recall.users import RollingUserVectors

DIM = 8
N_ITEMS = 10


def item_vectors(missing: set[int]) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    keep = [j for j in range(N_ITEMS) if j not in missing]
    return [f"i{j}" for j in keep], vecs[keep]


clicks_st = st.lists(st.tuples(st.integers(0, 3), st.integers(0, N_ITEMS - 1),
                               st.integers(0, 300).map(float),
                               st.sampled_from([0.5, 1.0, 3.0])), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None)
@given(clicks=clicks_st, window=st.integers(1, 12), interests=st.integers(1, 4),
       gap=st.sampled_from([0.0, 5.0, 20.0, 60.0]), half_life=st.sampled_from([0.0, 50.0]),
       missing=st.sets(st.integers(0, N_ITEMS - 1), max_size=3))
def test_offline_interests_equal_online_state(clicks, window, interests, gap, half_life,
                                              missing) -> None:
    ids, vectors = item_vectors(missing)
    row = {item_id: r for r, item_id in enumerate(ids)}
    log = ClickLog([f"u{u}" for u in range(4)], [f"i{j}" for j in range(N_ITEMS)],
                   np.array([c[0] for c in clicks], dtype=np.int32),
                   np.array([c[1] for c in clicks], dtype=np.int32),
                   np.array([c[2] for c in clicks], dtype=np.float64),
                   np.array([c[3] for c in clicks], dtype=np.float32)).sort()
    win = user_windows(log, ids, vectors, window, half_life, interests=interests,
                       session_gap=gap)
    assert win.interests.shape == (len(win.users), interests, DIM)

    def lookup(items):
        r = np.array([row.get(i, -1) for i in items], dtype=np.int64)
        out = np.zeros((len(items), DIM), np.float32)
        out[r >= 0] = vectors[r[r >= 0]]
        return out, r >= 0

    policy = RollingUserVectors(DIM, window, half_life, lookup=lookup, interests=interests,
                                session_gap=gap)
    for j, u in enumerate(win.users.tolist()):
        state = policy.new_state()
        for k in np.flatnonzero(log.user == u).tolist():  # in ts order, ties in log order
            name = log.item_ids[log.item[k]]
            policy.apply(state, name, float(log.ts[k]), float(log.weight[k]),
                         vectors[row[name]] if name in row else None)
        online = state.interests()
        offline = win.interests[j][win.interest_ok[j]]
        assert len(online) == len(offline)
        for a, b in zip(online, offline, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


# --- merging per-interest results ---------------------------------------------------------


def test_merge_keeps_each_items_best_score_and_the_k_best() -> None:
    from recall.interests import merge_by_score

    ids, scores = merge_by_score([["a", "b", "c"], ["d", "a", "e"]],
                                 [np.array([0.9, 0.5, 0.1]), np.array([0.95, 0.7, 0.2])], 4)
    assert ids == ["d", "a", "b", "e"]
    np.testing.assert_allclose(scores, [0.95, 0.9, 0.5, 0.2], rtol=1e-6)
    assert merge_by_score([["x"], []], [np.array([0.3]), np.zeros(0)], 5)[0] == ["x"]
    assert merge_by_score([[], []], [np.zeros(0), np.zeros(0)], 5)[0] == []
    one, s1 = merge_by_score([["a", "b"]], [np.array([0.5, 0.4])], 1)  # M = 1: unchanged
    assert one == ["a"] and s1.tolist() == [0.5]


# --- evaluation with interests -------------------------------------------------------------


def two_interest_log(n_users: int = 30, seed: int = 0):
    """Items in three tight clusters: A along e0, B along e1, C along (e0 + e1)/√2 (what a
    mean of A and B points at). Each user clicks 4 of A's 8 items, then 2 h later 4 of
    B's 8, then comes back to an A item they had not clicked (held out by split_last)."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((3, DIM))
    centres[0, 0] = centres[1, 1] = 1.0
    centres[2, :2] = 1 / np.sqrt(2)
    sizes = (8, 8, 30)
    cl = np.repeat(np.arange(3), sizes)
    vecs = centres[cl] + 0.03 * rng.normal(size=(len(cl), DIM))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"i{j}" for j in range(len(cl))]
    a_items, b_items = np.flatnonzero(cl == 0), np.flatnonzero(cl == 1)
    users, items, ts = [], [], []
    for u in range(n_users):
        a = rng.permutation(a_items)
        seq = [*a[:4], *rng.choice(b_items, 4, replace=False), a[4]]
        t = [0.0, 60.0, 120.0, 180.0, 7200.0, 7260.0, 7320.0, 7380.0, 7440.0]
        users += [u] * len(seq)
        items += seq
        ts += t
    log = ClickLog([f"u{u}" for u in range(n_users)], ids,
                   np.array(users, dtype=np.int32), np.array(items, dtype=np.int32),
                   np.array(ts), np.ones(len(ts), dtype=np.float32)).sort()
    return log, ids, vecs


def test_eval_merges_interests_for_exact_and_lsh() -> None:
    """The mean of a user's two interests points at a third cluster; with two interests
    both searches find the items of the interest the user comes back to."""
    from offline.evaluate import EvalConfig, evaluate, split_last
    from recall.lsh import LSHParams

    log, ids, vecs = two_interest_log()
    train, test = split_last(log, 1)
    params = LSHParams(dim=DIM, k=2, L=16, w=1.0, T=4)
    got = {}
    for m in (1, 2):
        cfg = EvalConfig(k=10, window=50, interests=m, session_gap=1800.0, bootstrap=0)
        res = evaluate(train, test, ids, vecs, cfg, ("exact", "lsh", "popular"),
                       params=params)
        got[m] = {name: r["hit_rate"] for name, r in res["methods"].items()}
        assert res["users_evaluated"] == 30 and res["interests"] == m
    assert got[1]["exact"] == 0.0 and got[1]["lsh"] == 0.0  # the mean finds cluster C
    assert got[2]["exact"] == 1.0 and got[2]["lsh"] == 1.0


def test_merge_results_drops_seen_items_before_merging() -> None:
    from recall.interests import merge_results

    items, each = merge_results([(["s", "a", "b"], np.array([0.99, 0.8, 0.3])),
                                 (["c", "s", "a"], np.array([0.9, 0.85, 0.7]))], {"s"}, 2)
    assert items == [("c", pytest.approx(0.9)), ("a", pytest.approx(0.8))]
    assert each == [["a", "b"], ["c", "a"]]
