"""The compiled part of click application: many users' window sums in one call.

:meth:`recall.users.RollingUserVectors.apply_batch` applies a fetch's clicks to the
windows in Python (list bookkeeping only) and then recomputes the sums of every user it
changed with :func:`window_sums`, one call for the whole batch. Why recompute instead of
compiling the per-click incremental update: the incremental update is O(d) per click but
a long chain of small Python and numpy steps (segment plans, unit rescales, one lookup
per evicted click); at 5,000 clicks/s it was a sixth of a worker core
(``recall bench e2e --pin-worker``, py-spy). A window of N clicks summed in compiled
code is N·d multiply-adds (50 x 64: about a microsecond), cheaper than one of those
Python steps, and it is the reference's own from-scratch formula
(:meth:`~recall.users.RollingUserVectors.recompute`), so there is no second incremental
state machine to keep equal to the first. The numpy reference stays; tests compare the
two row by row.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from recall import jit  # noqa: F401  (numba's cache directory, before any @njit)


@njit(cache=True, nogil=True)
def window_sums(ptr: np.ndarray, ts: np.ndarray, weight: np.ndarray, present: np.ndarray,
                vectors: np.ndarray, interests: int, gap: float, half_life: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each user's segments and sums from its window, as ``RollingUserVectors.recompute``.

    Users' windows are concatenated, user u's rows being ptr[u]:ptr[u+1] (sorted by ts);
    ts, weight (float64), present (bool: the item has a vector), vectors (rows, D)
    float32 (the items' current vectors, any values where not present). A window is cut
    at its last ``interests - 1`` gaps longer than ``gap``; each segment's weights are in
    units of its heaviest click with a vector, times ``2**((ts - t_ref) / half_life)``
    when half_life > 0, t_ref being the window's newest ts.

    Returns (seg_ptr (U+1,), starts (S,) window-relative first index of each segment,
    vsum (S, D) float64, wsum (S,) float64, t_ref (U,) float64; 0 for an empty window).
    """
    n_users = ptr.shape[0] - 1
    dim = vectors.shape[1]
    seg_ptr = np.zeros(n_users + 1, dtype=np.int64)
    starts = np.empty(n_users * max(interests, 1), dtype=np.int64)
    cuts = np.empty(max(interests, 1), dtype=np.int64)
    s = 0
    for u in range(n_users):
        a, b = ptr[u], ptr[u + 1]
        if b > a:
            n_cuts = 0
            i = b - a - 1
            while n_cuts < interests - 1 and i > 0:
                if ts[a + i] - ts[a + i - 1] > gap:
                    cuts[n_cuts] = i
                    n_cuts += 1
                i -= 1
            starts[s] = 0
            s += 1
            for c in range(n_cuts - 1, -1, -1):
                starts[s] = cuts[c]
                s += 1
        seg_ptr[u + 1] = s
    starts = starts[:s].copy()
    vsum = np.zeros((s, dim), dtype=np.float64)
    wsum = np.zeros(s, dtype=np.float64)
    t_ref = np.zeros(n_users, dtype=np.float64)
    for u in range(n_users):
        a, b = ptr[u], ptr[u + 1]
        if b == a:
            continue
        t = ts[a]
        for j in range(a + 1, b):
            t = max(t, ts[j])
        t_ref[u] = t
        for g in range(seg_ptr[u], seg_ptr[u + 1]):
            lo = a + starts[g]
            hi = b if g + 1 == seg_ptr[u + 1] else a + starts[g + 1]
            top = 0.0
            for j in range(lo, hi):
                if present[j] and weight[j] > top:
                    top = weight[j]
            if top == 0.0:
                continue  # no click with a vector: the segment is zero
            acc = 0.0
            for j in range(lo, hi):
                if not present[j]:
                    continue
                share = weight[j] / top
                if half_life > 0.0:
                    share *= 2.0 ** ((ts[j] - t) / half_life)
                acc += share
                for d in range(dim):
                    vsum[g, d] += share * np.float64(vectors[j, d])
            wsum[g] = acc
    return seg_ptr, starts, vsum, wsum, t_ref


def warm_up() -> None:
    """Compile (or load from numba's disk cache) :func:`window_sums` and :func:`add_clicks`
    before traffic: one user's first click, the arrays typed as ``apply_batch`` has them."""
    ts = np.frombuffer(np.array([0.0, 1.0]).tobytes())  # read-only, as apply_batch's are
    window_sums(np.array([0, 2], dtype=np.int64), ts, np.frombuffer(np.ones(2).tobytes()),
                np.ones(2, dtype=bool), np.ones((2, 2), dtype=np.float32), 2, 0.5, 1.0)
    one, no, yes = np.ones(1), np.zeros(1, dtype=bool), np.ones(1, dtype=bool)
    vec = np.ones((1, 2), dtype=np.float32)
    add_clicks(np.zeros((1, 2)), np.zeros(1), np.zeros(1), no.copy(), np.zeros(1, dtype=np.int64),
               one.copy(), one.copy(), vec, yes.copy(), yes.copy(), no.copy(), no.copy(),
               no.copy(), vec.copy(), one.copy(), one.copy(), one.copy(), one.copy(), 0.0, 8.0)


@njit(cache=True, nogil=True)
def add_clicks(vsum: np.ndarray, wsum: np.ndarray, t_ref: np.ndarray, redo: np.ndarray,
               user: np.ndarray, ts: np.ndarray, weight: np.ndarray, new_vecs: np.ndarray,
               new_has: np.ndarray, empty: np.ndarray, evict: np.ndarray,
               ev_has: np.ndarray, ev_present: np.ndarray, ev_vecs: np.ndarray,
               ev_weight: np.ndarray, ev_ts: np.ndarray, unit_old: np.ndarray,
               unit_left: np.ndarray, half_life: float, rescale_max: float) -> None:
    """One-segment users' sums after each click, in order: the incremental update of
    ``RollingUserVectors.apply`` (see recall.users for the rules), O(d) per click.

    Per user row u: vsum (U, D), wsum, t_ref (the window's reference time), redo (set
    when the user's sums must be recomputed from its window: an evicted item's vector
    is gone, or the heaviest click left by more than rescale_max; its later clicks in the
    batch are then skipped here). Per click j: user[j], ts, weight, its item's vector
    new_vecs[j] when new_has[j]; empty[j]: the window was empty; evict[j]: the oldest
    click leaves (ev_has: it had a vector, ev_present: its item still has one, ev_vecs,
    ev_weight, ev_ts); unit_old[j]: the heaviest weight with a vector of the window before
    the click (the unit of the sums), unit_left[j]: that of what stays of it."""
    dim = vsum.shape[1]
    for j in range(user.shape[0]):
        u = user[j]
        if redo[u]:
            continue
        t = ts[j]
        if half_life > 0.0:
            if empty[j]:
                t_ref[u] = t
            elif t > t_ref[u]:
                scale = 2.0 ** ((t_ref[u] - t) / half_life)
                for d in range(dim):
                    vsum[u, d] *= scale
                wsum[u] *= scale
                t_ref[u] = t
        elif empty[j] or t > t_ref[u]:
            t_ref[u] = t
        unit = unit_old[j]
        if evict[j] and ev_has[j]:
            if not ev_present[j]:
                redo[u] = True
                continue
            share = ev_weight[j] / unit
            if half_life > 0.0:
                share *= 2.0 ** ((ev_ts[j] - t_ref[u]) / half_life)
            for d in range(dim):
                vsum[u, d] -= share * np.float64(ev_vecs[j, d])
            wsum[u] -= share
            left = unit_left[j]
            if left == 0.0:
                for d in range(dim):
                    vsum[u, d] = 0.0
                wsum[u] = 0.0
            elif left < unit:
                if unit / left > rescale_max:
                    redo[u] = True
                    continue
                for d in range(dim):
                    vsum[u, d] *= unit / left
                wsum[u] *= unit / left
            unit = left
        top = unit
        if new_has[j] and weight[j] > top:
            top = weight[j]
        if unit == 0.0 or top == 0.0:  # nothing usable kept: the old sums count zero
            for d in range(dim):
                vsum[u, d] = 0.0
            wsum[u] = 0.0
        elif unit != top:
            for d in range(dim):
                vsum[u, d] *= unit / top
            wsum[u] *= unit / top
        if new_has[j]:
            share = weight[j] / top
            if half_life > 0.0:
                share *= 2.0 ** ((t - t_ref[u]) / half_life)
            for d in range(dim):
                vsum[u, d] += share * np.float64(new_vecs[j, d])
            wsum[u] += share
