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
from itertools import compress

import numpy as np

from recall.packedids import drop_first, first, has_token, insert, token
from recall.userkernels import add_clicks, window_sums
from recall.users import RESCALE_MAX, Lookup, RollingUserVectors
from recall.userstate import _F8, ONE_SEGMENT, UserState

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
    ValueError for a bad click, before any state changes.

    Per click the Python part is a few C-level steps on the window's columns (an event id
    searched for in the packed ids, a ``bisect`` of an ``array('d')``, appends and
    cuts): nothing loops over the window in Python, and the heaviest weight (the sums'
    unit) is kept by :meth:`UserState.top` instead of being searched for."""
    lookup = lookup or policy.lookup
    if lookup is None:
        raise ValueError("apply_batch needs a lookup of item vectors")
    tokens = []  # the ids as they are packed (an id that cannot be encoded raises here)
    for _, item_id, ts, weight, event_id in clicks:
        if not (math.isfinite(ts) and math.isfinite(weight) and weight > 0):
            raise ValueError(f"click needs a finite ts and weight > 0, got {ts!r}, "
                             f"{weight!r}")
        tokens.append((token(item_id), token(event_id)))
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
    ev_item: list[str] = []  # the evicted click of each fed click (the new one if none)
    ev_ts: list[float] = []
    ev_weight: list[float] = []
    ev_has: list[bool] = []
    unit_old: list[float] = []
    unit_left: list[float] = []
    for j, (state, item_id, ts, weight, event_id) in enumerate(clicks):
        events = state.events
        tok_item, tok_event = tokens[j]
        if event_id and has_token(events, tok_event):
            out.append(False)
            continue
        out.append(True)
        tsa = state.ts
        n = len(tsa)
        pos = n if not n or ts >= tsa[-1] else bisect.bisect_right(tsa, ts)
        full = n >= size
        if full and pos == 0:
            continue  # late: older than every kept click, never enters
        has = has_list[j]
        key = id(state)
        fed = key not in recut and one and len(state.starts) <= 1 and \
            state.since_recompute + 1 < size
        if fed:
            top, n_top = state.top()
        items, weights, hass = state.items, state.weight, state.has
        if full:  # the oldest click leaves (pos > 0)
            o_item, o_ts, o_weight, o_has = first(items), tsa[0], weights[0], hass[0]
            items, events = drop_first(items), drop_first(events)
            del tsa[0], weights[0], hass[0]
            pos -= 1
        if pos == n - full:
            state.items, state.events = items + tok_item, events + tok_event
            tsa.append(ts)
            weights.append(weight)
            hass.append(has)
        else:
            state.items = insert(items, pos, tok_item)
            state.events = insert(events, pos, tok_event)
            tsa.insert(pos, ts)
            weights.insert(pos, weight)
            hass.insert(pos, has)
        state.since_recompute += 1
        if not fed:
            state.forget_top()
            recut[key] = state
            continue
        row = rows.get(key)
        if row is None:
            row = rows[key] = len(states)
            states.append(state)
        feed.append(j)
        user.append(row)
        empty.append(not n)
        evict.append(full)
        unit_old.append(top)
        left = top
        if full:
            ev_item.append(o_item)
            ev_ts.append(o_ts)
            ev_weight.append(o_weight)
            ev_has.append(bool(o_has))
            if o_has and o_weight == top:
                n_top -= 1
                if not n_top:  # the heaviest left: the next heaviest of what stays,
                    # the new click (at pos, already in the window) left out: it is
                    # counted below
                    state.forget_top()
                    if has:
                        left = _heaviest_but(state, pos)
                        n_top = _count(state, left, pos)
                    else:
                        left, n_top = state.top()
        else:
            ev_item.append(item_id)
            ev_ts.append(ts)
            ev_weight.append(weight)
            ev_has.append(False)
        unit_left.append(left)
        if has:
            if weight > left:
                left, n_top = weight, 1
            elif weight == left:
                n_top += 1
        state._top, state._n_top = left, n_top
    if feed:
        _add_clicks(policy, states, rows, recut, feed, user, empty, evict, ev_item, ev_ts,
                    ev_weight, ev_has, unit_old, unit_left, clicks, new_vecs, new_has,
                    lookup)
    recompute_many(policy, list(recut.values()), lookup)
    return out


def _heaviest_but(state: UserState, skip: int) -> float:
    """The heaviest weight with a vector of the window without its click ``skip``."""
    w, h = state.weight, state.has
    return max(max(compress(w[:skip], h[:skip]), default=0.0),
               max(compress(w[skip + 1:], h[skip + 1:]), default=0.0))


def _count(state: UserState, top: float, skip: int) -> int:
    """Clicks with a vector weighing ``top``, but click ``skip``."""
    if not top:
        return 0
    return sum(1 for i, (w, h) in enumerate(zip(state.weight, state.has, strict=True))
               if h and w == top and i != skip)


def _add_clicks(policy: RollingUserVectors, states: list[UserState], rows: dict[int, int],
                recut: dict[int, UserState], feed: list[int], user: list[int],
                empty: list[bool], evict: list[bool], ev_item: list[str],
                ev_ts: list[float], ev_weight: list[float], ev_has: list[bool],
                unit_old: list[float], unit_left: list[float],
                clicks: Sequence[UserClick],
                new_vecs: np.ndarray, new_has: np.ndarray, lookup: Lookup) -> None:
    """The one-segment states' part of :meth:`apply_batch` (userkernels.add_clicks)."""
    # the users' sums gathered by one C call each, from their bytes (UserState: why; an
    # empty window has no row: zeros), into writable float64 arrays
    dim = policy.dim
    zero_v, zero_w = bytes(8 * dim), bytes(8)
    vsum = _floats(bytearray().join([st._vsum if st.starts else zero_v for st in states]))
    vsum = vsum.reshape(len(states), dim)
    wsum = _floats(bytearray().join([st._wsum if st.starts else zero_w for st in states]))
    t_ref = np.array([st.t_ref for st in states], dtype=np.float64)
    # due a recompute later in the batch: skipped here
    redo = np.array([id(st) in recut for st in states], dtype=bool)
    n = len(feed)
    ev_vecs = np.zeros((n, policy.dim), dtype=np.float32)
    ev_present = np.zeros(n, dtype=bool)
    evicting = [k for k, e in enumerate(evict) if e]  # only clicks that evict one
    if evicting:
        mat, present = lookup([ev_item[k] for k in evicting])
        ev_vecs[evicting], ev_present[evicting] = mat, present
    idx = np.asarray(feed, dtype=np.int64)
    add_clicks(vsum, wsum, t_ref, redo, np.asarray(user, dtype=np.int64),
               np.array([clicks[j][2] for j in feed], dtype=np.float64),
               np.array([clicks[j][3] for j in feed], dtype=np.float64),
               np.ascontiguousarray(np.asarray(new_vecs)[idx], dtype=np.float32),
               new_has[idx], np.array(empty, dtype=bool), np.array(evict, dtype=bool),
               np.array(ev_has, dtype=bool), ev_present, ev_vecs,
               np.array(ev_weight, dtype=np.float64), np.array(ev_ts, dtype=np.float64),
               np.array(unit_old, dtype=np.float64), np.array(unit_left, dtype=np.float64),
               policy.half_life, RESCALE_MAX)
    refs = t_ref.tolist()
    # scattered back as bytes slices (one allocation per user, no numpy call)
    vb, wb = vsum.astype(_F8, copy=False).tobytes(), wsum.astype(_F8, copy=False).tobytes()
    row = 8 * dim
    for r, (st, again) in enumerate(zip(states, redo.tolist(), strict=True)):
        if again:
            recut[id(st)] = st
            continue
        st.starts = ONE_SEGMENT
        st._vsum, st._wsum = vb[r * row:(r + 1) * row], wb[8 * r:8 * r + 8]
        st.t_ref = refs[r]


def _floats(buf: bytearray) -> np.ndarray:
    """Little-endian float64 bytes as a writable native float64 array (no copy on a
    little-endian machine)."""
    arr = np.frombuffer(buf, dtype=_F8)
    return arr if arr.dtype.isnative else arr.astype(np.float64)


def recompute_many(policy: RollingUserVectors, states: Sequence[UserState],
                   lookup: Lookup | None = None) -> None:
    """:meth:`RollingUserVectors.recompute` of several states: one lookup, one
    compiled call."""
    lookup = lookup or policy.lookup
    if lookup is None:
        raise ValueError("recompute needs a lookup of item vectors")
    lens = [len(st) for st in states]
    if not any(lens):
        for st in states:
            policy.recompute(st, lookup)
        return
    ptr = np.zeros(len(states) + 1, dtype=np.int64)
    np.cumsum(lens, out=ptr[1:])
    # the columns by C-level copies (a Python loop cost as much as the update it replaces)
    mat, present = lookup([i for st in states for i in st.item_ids()])
    present = np.asarray(present, dtype=bool)
    ts = np.frombuffer(b"".join([st.ts.tobytes() for st in states]), dtype=np.float64)
    weight = np.frombuffer(b"".join([st.weight.tobytes() for st in states]),
                           dtype=np.float64)
    seg_ptr, starts, vsum, wsum, t_ref = window_sums(
        ptr, ts, weight, present, np.ascontiguousarray(mat, dtype=np.float32),
        policy.interests, policy.session_gap, policy.half_life)
    bounds, refs = seg_ptr.tolist(), t_ref.tolist()
    starts_l = starts.tolist()
    flags = present.view(np.uint8).tobytes()  # has_vector as found now
    first = ptr.tolist()
    vb, wb = vsum.astype(_F8, copy=False).tobytes(), wsum.astype(_F8, copy=False).tobytes()
    row = 8 * policy.dim
    for u, st in enumerate(states):
        a, b = bounds[u], bounds[u + 1]
        seg = starts_l[a:b]
        st.starts = ONE_SEGMENT if seg == [0] else tuple(seg)
        st._vsum, st._wsum = vb[a * row:b * row], wb[8 * a:8 * b]
        if lens[u]:
            st.t_ref = refs[u]
        st.since_recompute = 0
        st.has[:] = flags[first[u]:first[u + 1]]
        st.forget_top()
