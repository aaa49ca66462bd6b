"""Exact search of a batch of queries as one compiled call that holds no GIL.

The recall monitor (``stream/watch.py``) computes the exact top k of its sampled queries in
a thread beside the event loop. Done with numpy (one matrix product per block of items,
then a running shortlist per query) it was ~1,000 numpy calls per batch at 1M items, and
the GIL was held between them: half its CPU time was Python holding the GIL, so each time
the event loop came back from a socket wait it could wait for the GIL up to the 5 ms
switch interval. In-worker p99 at 1M items, 200 requests/s + 2,000 clicks/s, doubled with
the monitor on (22.8 against 11.1 ms) while it took ~0.05 of a core. This kernel is one
call (``nogil``): the loop keeps the GIL whenever it wants it.

Per item it reads the half-precision row once and scores it against every query
(vectorised across the queries), and keeps, per query, the items within 1e-5 of the best
``want`` so far (a buffer compacted when full). That keeps every item the float32 rule of
``recall.lsh.search._shortlist`` keeps over the whole catalogue, so the caller's shortlist,
float64 re-scoring and ranking give the answers exact search of each query alone gives
(tests/test_watch_exact.py checks it row by row).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from recall import jit  # noqa: F401  (numba's cache directory, before any @njit)
from recall.rerankkernels import half

#: float32 scores within this of a query's bar are kept (the shortlist's near-tie margin)
NEAR = np.float32(1e-5)


@njit(cache=True, nogil=True)
def _compact(slots: np.ndarray, scores: np.ndarray, i: int, fill: int, want: int,
             bar: np.ndarray) -> int:
    """Raise query ``i``'s bar to the ``want``-th best score in its buffer and drop what
    fell below it; returns the new fill."""
    tmp = np.sort(scores[i, :fill])
    b = tmp[fill - want]
    if b > bar[i]:
        bar[i] = b
    cut = bar[i] - NEAR
    kept = 0
    for j in range(fill):
        if scores[i, j] >= cut:
            slots[i, kept] = slots[i, j]
            scores[i, kept] = scores[i, j]
            kept += 1
    return kept


@njit(cache=True, nogil=True)
def _excluded(excl: np.ndarray, lo: int, hi: int, slot: int) -> bool:
    """``slot`` is in the sorted ``excl[lo:hi]``."""
    if lo == hi:
        return False
    j = lo + np.searchsorted(excl[lo:hi], slot)
    return j < hi and excl[j] == slot


@njit(cache=True, nogil=True, fastmath=True)
def exact_shortlists(vectors: np.ndarray, alive: np.ndarray, high: int, qt: np.ndarray,
                     want: int, excl_ptr: np.ndarray, excl: np.ndarray, cap: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query, the live, not excluded slots below ``high`` whose float32 score is within
    1e-5 of its ``want``-th best (and possibly a few more).

    ``vectors``: (N, D) uint16, the bits of half-precision unit rows; ``alive``: (N,) bool;
    ``qt``: (D, n) float32, the unit queries as columns; ``excl[excl_ptr[i]:excl_ptr[i +
    1]]``: query i's excluded slots, sorted; ``cap``: the buffer per query (>= 2 * want;
    doubled if near-ties fill it). Returns (slots (n, m), scores (n, m), fill (n,)): query
    i's candidates are the first ``fill[i]`` of its rows, in no order.
    """
    dim, n = qt.shape
    cap = max(cap, 2 * want)
    slots = np.empty((n, cap), dtype=np.int64)
    scores = np.empty((n, cap), dtype=np.float32)
    fill = np.zeros(n, dtype=np.int64)
    bar = np.full(n, -np.inf, dtype=np.float32)
    row = np.empty(dim, dtype=np.float32)
    acc = np.empty(n, dtype=np.float32)
    for r in range(high):
        if not alive[r]:
            continue
        for d in range(dim):
            row[d] = half(vectors[r, d])
        acc[:] = 0.0
        for d in range(dim):
            v = row[d]
            for i in range(n):
                acc[i] += v * qt[d, i]
        for i in range(n):
            s = acc[i]
            if s < bar[i] - NEAR or _excluded(excl, excl_ptr[i], excl_ptr[i + 1], r):
                continue
            f = fill[i]
            if f == cap:
                f = _compact(slots, scores, i, f, want, bar)
                if s < bar[i] - NEAR:
                    fill[i] = f
                    continue
                if f > cap - cap // 4:  # near-ties fill the buffer: more room for all
                    cap *= 2
                    grown_slots = np.empty((n, cap), dtype=np.int64)
                    grown_scores = np.empty((n, cap), dtype=np.float32)
                    grown_slots[:, :cap // 2] = slots
                    grown_scores[:, :cap // 2] = scores
                    slots, scores = grown_slots, grown_scores
            slots[i, f] = r
            scores[i, f] = s
            fill[i] = f + 1
    return slots, scores, fill


def warm_up() -> None:
    """Compile (or load from the cache) the kernel on tiny inputs."""
    v = np.ones((3, 2), dtype=np.float16).view(np.uint16)
    exact_shortlists(v, np.ones(3, dtype=bool), 3, np.ones((2, 2), dtype=np.float32), 1,
                     np.zeros(3, dtype=np.int64), np.zeros(0, dtype=np.int64), 2)
