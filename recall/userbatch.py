"""Click application in batches: :func:`apply_batch` applies a fetch's clicks with the
same rules as :meth:`recall.users.RollingUserVectors.apply` (the reference, kept: tests
compare the two row by row), the arithmetic in compiled kernels (:mod:`recall.userkernels`).

Why: one click through the reference is ~20-40 us of small Python and numpy steps
(segment plans, unit rescales, a lookup per evicted click); at 5,000 clicks/s that was a
sixth of a worker core (``recall bench e2e --pin-worker``, py-spy). Here the Python part
per click is the window's list bookkeeping, the items are looked up once per batch, and
the sums of all one-segment users are updated in one compiled call; multi-interest users
(and users due a recompute) are recomputed from their windows in one compiled call.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from operator import itemgetter

import numpy as np

from recall.userkernels import add_clicks, window_sums
from recall.users import (
    EVENT,
    HAS_VECTOR,
    ITEM,
    RESCALE_MAX,
    TS,
    WEIGHT,
    Click,
    Lookup,
    RollingUserVectors,
    UserState,
    _ts,
)

_GET_ITEM, _GET_TS, _GET_WEIGHT, _GET_EVENT, _GET_HAS_VECTOR = map(itemgetter, range(5))


#: a click given to :func:`apply_batch`: (state, item_id, ts, weight, event_id)
UserClick = tuple[UserState, str, float, float, "str | None"]


def apply_batch(policy: RollingUserVectors, clicks: Sequence[UserClick],
                lookup: Lookup | None = None) -> list[bool]:
    """Apply ``(state, item_id, ts, weight, event_id)`` clicks in order: the same
    windows, duplicates and (to the documented tolerance) vectors as
    :meth:`RollingUserVectors.apply` one by one, the arithmetic compiled
    (:mod:`recall.userkernels`): one-segment users' sums updated click by click in one
    call, the others (and any due a recompute) recomputed from their windows in one
    call at the end. One lookup for the batch's items, one for the evicted ones.
    ValueError for a bad click, before any state changes."""
    lookup = lookup or policy.lookup
    if lookup is None:
        raise ValueError("apply_batch needs a lookup of item vectors")
    for _, _, ts, weight, _ in clicks:
        if not (math.isfinite(ts) and math.isfinite(weight) and weight > 0):
            raise ValueError(f"click needs a finite ts and weight > 0, got {ts!r}, "
                             f"{weight!r}")
    out: list[bool] = []
    if not clicks:
        return out
    new_vecs, new_has = lookup([c[1] for c in clicks])
    new_has = np.asarray(new_has, dtype=bool)
    has_list = new_has.tolist()
    size, one = policy.window, policy.interests == 1
    rows: dict[int, int] = {}  # id(state) -> row of the one-segment states
    states: list[UserState] = []
    recut: dict[int, UserState] = {}  # recomputed from their windows at the end
    feed: list[int] = []  # the clicks given to the kernel
    user: list[int] = []
    empty: list[bool] = []
    evict: list[bool] = []
    ev: list[Click] = []  # the evicted click of each fed click (the new one if none)
    unit_old: list[float] = []
    unit_left: list[float] = []
    for j, (state, item_id, ts, weight, event_id) in enumerate(clicks):
        win = state.clicks
        if event_id is not None and event_id in map(_GET_EVENT, win):
            out.append(False)
            continue
        out.append(True)
        pos = bisect.bisect_right(win, ts, key=_ts)
        full = len(win) >= size
        if full and pos == 0:
            continue  # late: older than every kept click, never enters
        click: Click = (item_id, ts, weight, event_id, has_list[j])
        state.clicks = [*win[1 if full else 0:pos], click, *win[pos:]]
        state.since_recompute += 1
        key = id(state)
        if key in recut:
            continue
        if not one or len(state.starts) > 1 or state.since_recompute >= size:
            recut[key] = state
            continue
        row = rows.get(key)
        if row is None:
            row = rows[key] = len(states)
            states.append(state)
        feed.append(j)
        user.append(row)
        empty.append(not win)
        evict.append(full)
        top = max(map(_GET_WEIGHT, filter(_GET_HAS_VECTOR, win)), default=0.0)
        unit_old.append(top)
        if full:
            old = win[0]
            ev.append(old)
            unit_left.append(max(map(_GET_WEIGHT, filter(_GET_HAS_VECTOR, win[1:])),
                                 default=0.0)
                             if old[HAS_VECTOR] and old[WEIGHT] >= top else top)
        else:
            ev.append(click)
            unit_left.append(top)
    if feed:
        _add_clicks(policy, states, rows, recut, feed, user, empty, evict, ev, unit_old,
                         unit_left, clicks, new_vecs, new_has, lookup)
    recompute_many(policy, list(recut.values()), lookup)
    return out


def _add_clicks(policy: RollingUserVectors, states: list[UserState], rows: dict[int, int],
                recut: dict[int, UserState], feed: list[int], user: list[int],
                empty: list[bool], evict: list[bool], ev: list[Click],
                unit_old: list[float], unit_left: list[float],
                clicks: Sequence[UserClick],
                new_vecs: np.ndarray, new_has: np.ndarray, lookup: Lookup) -> None:
    """The one-segment states' part of :meth:`apply_batch` (userkernels.add_clicks)."""
    n_users = len(states)
    vsum = np.zeros((n_users, policy.dim), dtype=np.float64)
    wsum = np.zeros(n_users, dtype=np.float64)
    t_ref = np.zeros(n_users, dtype=np.float64)
    redo = np.zeros(n_users, dtype=bool)
    for r, st in enumerate(states):
        if st.starts:
            vsum[r] = st.seg_vsum[0]
            wsum[r] = st.seg_wsum[0]
        t_ref[r] = st.t_ref
        redo[r] = id(st) in recut
    ev_vecs, ev_present = lookup(list(map(_GET_ITEM, ev)))
    idx = np.asarray(feed, dtype=np.int64)
    n = len(feed)
    add_clicks(vsum, wsum, t_ref, redo, np.asarray(user, dtype=np.int64),
               np.fromiter((clicks[j][2] for j in feed), dtype=np.float64, count=n),
               np.fromiter((clicks[j][3] for j in feed), dtype=np.float64, count=n),
               np.ascontiguousarray(np.asarray(new_vecs)[idx], dtype=np.float32),
               new_has[idx], np.asarray(empty, dtype=bool),
               np.asarray(evict, dtype=bool),
               np.fromiter(map(_GET_HAS_VECTOR, ev), dtype=bool, count=n),
               np.asarray(ev_present, dtype=bool),
               np.ascontiguousarray(ev_vecs, dtype=np.float32),
               np.fromiter(map(_GET_WEIGHT, ev), dtype=np.float64, count=n),
               np.fromiter(map(_GET_TS, ev), dtype=np.float64, count=n),
               np.asarray(unit_old, dtype=np.float64),
               np.asarray(unit_left, dtype=np.float64), policy.half_life, RESCALE_MAX)
    refs = t_ref.tolist()
    for r, st in enumerate(states):
        if redo[r]:
            recut[id(st)] = st
            continue
        st.starts = [0]
        st.seg_vsum, st.seg_wsum = vsum[r:r + 1].copy(), wsum[r:r + 1].copy()
        st.t_ref = refs[r]


def recompute_many(policy: RollingUserVectors, states: Sequence[UserState],
                   lookup: Lookup | None = None) -> None:
    """:meth:`RollingUserVectors.recompute` of several states: one lookup, one
    compiled call."""
    lookup = lookup or policy.lookup
    if lookup is None:
        raise ValueError("recompute needs a lookup of item vectors")
    flat = [c for st in states for c in st.clicks]
    if not flat:
        for st in states:
            policy.recompute(st, lookup)
        return
    ptr = np.zeros(len(states) + 1, dtype=np.int64)
    np.cumsum([len(st.clicks) for st in states], out=ptr[1:])
    n = len(flat)  # the fields by C-level iteration (a Python loop cost as much as
    # the incremental update it replaces)
    mat, present = lookup(list(map(_GET_ITEM, flat)))
    present = np.asarray(present, dtype=bool)
    had = np.fromiter(map(_GET_HAS_VECTOR, flat), dtype=bool, count=n)
    seg_ptr, starts, vsum, wsum, t_ref = window_sums(
        ptr, np.fromiter(map(_GET_TS, flat), dtype=np.float64, count=n),
        np.fromiter(map(_GET_WEIGHT, flat), dtype=np.float64, count=n),
        present, np.ascontiguousarray(mat, dtype=np.float32), policy.interests,
        policy.session_gap, policy.half_life)
    bounds, refs = seg_ptr.tolist(), t_ref.tolist()
    starts_l = starts.tolist()
    for u, st in enumerate(states):
        a, b = bounds[u], bounds[u + 1]
        st.starts = starts_l[a:b]
        st.seg_vsum, st.seg_wsum = vsum[a:b].copy(), wsum[a:b].copy()
        if st.clicks:
            st.t_ref = refs[u]
        st.since_recompute = 0
    # has_vector as found now, where it differs (mostly the batch's new clicks)
    differs = np.flatnonzero(present != had)
    owners = np.searchsorted(ptr, differs, side="right") - 1
    first = ptr.tolist()
    for j, u, p in zip(differs.tolist(), owners.tolist(), present[differs].tolist(),
                       strict=True):
        win, at = states[u].clicks, j - first[u]
        c = win[at]
        win[at] = (c[ITEM], c[TS], c[WEIGHT], c[EVENT], p)
