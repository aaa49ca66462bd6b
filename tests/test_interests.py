"""Multi-interest users: the offline twin (offline.userwin) computes exactly what the
worker's online state (recall.users) holds after the same clicks."""

from __future__ import annotations

import numpy as np
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
