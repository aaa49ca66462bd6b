"""Users' rolling windows over a whole log at once: the batch twin of recall.users.

For every user, the last ``window`` clicks by ts and the (weighted, optionally
time-decayed) mean of their items' vectors, computed with one sparse product instead of
a Python loop per click; with ``interests`` = M > 1 also the M interest vectors (the
window cut at its M - 1 latest gaps longer than ``session_gap``, one mean per segment).
Matches :class:`recall.users.RollingUserVectors` applied to the same clicks in ts order
(tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from offline.clicklog import ClickLog


def vector_rows(clicks: ClickLog, ids: list[str]) -> np.ndarray:
    """For each item code of ``clicks``, its row in the vector matrix of ``ids`` (-1: none)."""
    row_of = {item_id: r for r, item_id in enumerate(ids)}
    return np.fromiter((row_of.get(i, -1) for i in clicks.item_ids), dtype=np.int64,
                       count=len(clicks.item_ids))


def window_mask(clicks: ClickLog, window: int) -> np.ndarray:
    """Rows of ``clicks`` (sorted by user, ts) among their user's last ``window`` clicks."""
    bounds = clicks.user_bounds()
    ends = np.repeat(bounds[1:], np.diff(bounds))
    return (ends - np.arange(len(clicks)) - 1) < window


def session_segment(clicks: ClickLog, interests: int, gap: float) -> np.ndarray:
    """For each click of ``clicks`` (sorted by user, ts): its interest segment counted
    from the newest (0 = the user's latest session, ``interests - 1`` = the oldest segment,
    which holds every older click): the number of its user's later gaps > ``gap``, capped."""
    n = len(clicks)
    if interests <= 1 or n == 0:
        return np.zeros(n, dtype=np.int64)
    brk = np.zeros(n, dtype=bool)
    brk[1:] = (np.diff(clicks.ts) > gap) & (clicks.user[1:] == clicks.user[:-1])
    csum = np.cumsum(brk)
    bounds = clicks.user_bounds()
    last = np.repeat(bounds[1:] - 1, np.diff(bounds))
    return np.minimum(csum[last] - csum, interests - 1)


@dataclass
class Windows:
    users: np.ndarray  # (m,) user codes, ascending
    vectors: np.ndarray  # (m, D) float32 user embeddings (not normalised); 0 where unusable
    usable: np.ndarray  # (m,) bool: at least one window click has a vector
    clicks: ClickLog  # the window clicks themselves, sorted by (user, ts)
    #: (m, M, D) float32 interest vectors, newest session first (recall.users
    #: UserState.interests()); 0 where unusable. M = 1: the same as ``vectors``
    interests: np.ndarray | None = None
    interest_ok: np.ndarray | None = None  # (m, M) bool: the segment has a usable click


def user_windows(clicks: ClickLog, ids: list[str], vectors: np.ndarray, window: int,
                 half_life: float = 0.0, rows: np.ndarray | None = None,
                 interests: int = 1, session_gap: float = 1800.0) -> Windows:
    """Every user's window, embedding and ``interests`` interest vectors. ``clicks``
    sorted by (user, ts); ``rows`` = :func:`vector_rows` (computed when not given)."""
    rows = vector_rows(clicks, ids) if rows is None else rows
    win = clicks.take(window_mask(clicks, window))
    bounds = win.user_bounds()
    users = win.user[bounds[:-1]]
    local = np.repeat(np.arange(len(users)), np.diff(bounds))
    r = rows[win.item]
    has = r >= 0
    w = win.weight.astype(np.float64)
    if half_life > 0:
        t_ref = np.repeat(win.ts[bounds[1:] - 1], np.diff(bounds))
        w = w * np.exp2((win.ts - t_ref) / half_life)
    w = np.where(has, w, 0.0)
    m, n = len(users), len(ids)
    s = sparse.csr_matrix((w[has], (local[has], r[has])), shape=(m, n))
    wsum = np.asarray(s.sum(axis=1)).ravel()
    usable = wsum > 0
    vec64 = vectors.astype(np.float64)
    out = np.asarray(s @ vec64)
    out[usable] /= wsum[usable, None]
    if interests <= 1:
        out32 = out.astype(np.float32)
        return Windows(users, out32, usable, win, out32[:, None, :], usable[:, None].copy())
    # interests: the same sums per (user, segment) row
    seg = session_segment(win, interests, session_gap)
    rows_m = local * interests + seg
    si = sparse.csr_matrix((w[has], (rows_m[has], r[has])), shape=(m * interests, n))
    iw = np.asarray(si.sum(axis=1)).ravel()
    ok = iw > 0
    iv = np.asarray(si @ vec64)
    iv[ok] /= iw[ok, None]
    return Windows(users, out.astype(np.float32), usable, win,
                   iv.reshape(m, interests, -1).astype(np.float32), ok.reshape(m, interests))
