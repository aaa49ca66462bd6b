"""Rolling user vectors: the weighted (optionally time-decayed) mean of the item vectors of
a user's last N clicks by timestamp, updated in O(d) per click; optionally split into up
to M interest vectors, one per recent session, updated in O(M·d) per click.

The window holds the last N clicks ordered by ``ts`` (ties: arrival order, the later
arrival counts as newer). A late click older than all N kept clicks does not enter.
Each click contributes ``weight * decay * vector``; clicks on items without a vector
count in the window (and are evicted like others) but add nothing. The state keeps, per
interest segment, ``vsum`` (float64, sum of contributions) and ``wsum`` (sum of
``weight * decay`` over clicks with a vector), so an interest vector is ``vsum / wsum``
and the user vector (all segments together) ``sum(vsum) / sum(wsum)``:

- a new click adds its contribution; the click pushed out of the window has its
  contribution subtracted, its vector coming from ``lookup(item_ids) -> (matrix,
  present_mask)`` (e.g. ``LSHIndex.vectors_of``); O(d) per click;
- a click whose ``event_id`` is already in the window is a duplicate: ``apply`` returns
  False and changes nothing (the window is persisted, so this holds across restarts);
- every N applies (and whenever an evicted item's vector is gone) the sums are
  recomputed from scratch with ``lookup``: bounded float drift, amortised O(d), and
  item vectors that changed since the click are picked up.

Multi-interest users (``interests`` = M > 1): the window is cut at its M - 1 most recent
session boundaries, a boundary being a gap of more than ``session_gap`` seconds between
two consecutive window clicks. Segments, newest first: the latest session, the one
before, ..., and the last segment holds every older click of the window. M = 1 is the
plain window mean. Why sessions and not an online clustering of the window (k-means
and the like): a clustering's result depends on the order it saw the clicks and on
float ties, so an online clustering cannot equal the offline one after the same clicks,
and re-clustering per click costs O(N·M·d). Session cuts are a pure function of the
window's timestamps, so the offline twin (``offline.userwin``) computes exactly what
the worker holds, and a click changes the segments only by

- adding to one segment, or opening a new one (the two oldest segments then merge);
- evicting the oldest click (it leaves the oldest segment);
- a late click closing a gap (two segments merge; the oldest segment may then have to
  split at an older gap, the only case that re-reads the window with ``lookup``);

each an O(M·d) sum of the old segments' sums, except that rare split. Each interest
vector is queried on its own and the results merged by score (best score per item);
sessions are the usual unit of one intent in session-based recommendation.

Any weight > 0 is valid (1e308 three times, 5e-324 alone), so each segment's sums are
kept in units of its largest weight ``W`` (over clicks with a vector): a click adds
``weight / W * decay``, every term is <= 1 and the sums cannot overflow, nor a user's
only click underflow to nothing. ``W`` is not stored: it is read off the window. A
heavier click rescales the segment's sums by ``W_old / weight`` (O(d)); segments that
merge are brought to the larger unit; when the heaviest click leaves, a lighter ``W``
rescales them by ``W_old / W`` -- or, past ``RESCALE_MAX``, recomputes (the remaining
shares would be the rounding error of the evicted one).

Time decay (``half_life > 0`` seconds): a click's share is ``weight * 2**(-(t_ref - ts) /
half_life)``. Only the ratios ``vsum / wsum`` matter, so the sums are kept relative to
``t_ref`` = the newest ts seen; when a newer click arrives all sums are rescaled by
``2**(-(new - old) / half_life)``. Every factor is <= 1, so the numbers stay bounded.

How a state is held and encoded (formats 1-3, rolling upgrades): :mod:`recall.userstate`.

A state stored under other interest settings is re-cut by :meth:`RollingUserVectors.conform`.

Tolerance: after any sequence of clicks ``vector()`` and ``interests()`` match the
from-scratch means to ``rtol=1e-5, atol=1e-6`` (float32 output; the sums are float64)
-- tested with hypothesis.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np

from recall.packedids import token
from recall.userstate import (
    EVENT,
    HAS_VECTOR,
    ITEM,
    ONE_SEGMENT,
    TS,
    WEIGHT,
    Click,
    UserState,
)

#: ``lookup(item_ids) -> (matrix (n, D), present mask (n,))``
Lookup = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]
#: largest factor the sums are rescaled by when the heaviest click leaves; beyond it the
#: window is recomputed (the remaining shares are too small next to what was subtracted)
RESCALE_MAX = 1e6
#: a gap longer than this (seconds) between two clicks starts a new session by default
DEFAULT_SESSION_GAP = 1800.0


def _heaviest(clicks: Sequence[Click], a: int = 0, b: int | None = None) -> float:
    """``W`` of ``clicks[a:b]``: the largest weight of a click with a vector (the unit of
    that segment's sums), 0 when none has a vector."""
    return max((c[WEIGHT] for c in clicks[a:b] if c[HAS_VECTOR]), default=0.0)


def session_starts(ts: Sequence[float], interests: int, gap: float) -> list[int]:
    """First window index of each interest segment, oldest first, for a window sorted by
    ts: 0, then the last ``interests - 1`` indices i with ``ts[i] - ts[i-1] > gap``."""
    if not len(ts):
        return []
    cuts: list[int] = []
    i = len(ts) - 1
    while len(cuts) < interests - 1 and i > 0:
        if ts[i] - ts[i - 1] > gap:
            cuts.append(i)
        i -= 1
    return [0, *reversed(cuts)]


def _ts(click: Click) -> float:
    return click[TS]


class RollingUserVectors:
    """The policy: dimension, window size N, decay half-life (0 = plain mean), interests M
    (1 = one vector) and the session gap (seconds) that cuts them.

    ``lookup`` (optional here, or per call) gives the current vectors of items; it is
    needed to evict a click and to recompute.
    """

    def __init__(self, dim: int, window: int, half_life: float = 0.0,
                 lookup: Lookup | None = None, interests: int = 1,
                 session_gap: float = DEFAULT_SESSION_GAP) -> None:
        if dim < 1 or window < 1 or half_life < 0:
            raise ValueError("dim and window must be >= 1, half_life >= 0")
        if interests < 1 or not session_gap >= 0:
            raise ValueError("interests must be >= 1, session_gap >= 0")
        self.dim = dim
        self.window = window
        self.half_life = float(half_life)
        self.lookup = lookup
        self.interests = int(interests)
        self.session_gap = float(session_gap)

    def new_state(self) -> UserState:
        return UserState(self.dim)

    def starts_of(self, clicks: Sequence[Click]) -> tuple[int, ...]:
        """The segment starts this policy cuts a window into."""
        if not clicks:
            return ()
        if self.interests == 1:
            return ONE_SEGMENT
        return self.starts_of_ts([c[TS] for c in clicks])

    def starts_of_ts(self, ts: Sequence[float]) -> tuple[int, ...]:
        """:meth:`starts_of` a window given by its timestamps."""
        if not len(ts):
            return ()
        if self.interests == 1:
            return ONE_SEGMENT
        return tuple(session_starts(ts, self.interests, self.session_gap))

    def queries(self, state: UserState, lookup: Lookup | None = None) -> list[np.ndarray]:
        """A request's query vectors: the window mean, or (interests > 1) the interest
        vectors, newest first; a state stored under other settings is re-cut first (when
        a lookup is there). Zero vectors (a mean of opposite ones) are left out, so [] =
        no usable clicks."""
        if (self.interests > 1 or len(state.starts) > 1) and (lookup or self.lookup):
            self.conform(state, lookup)
        vecs = [state.vector()] if self.interests == 1 else state.interests()
        return [v for v in vecs if v is not None and bool(np.any(v))]

    def _factor(self, ts: float, t_ref: float) -> float:
        if self.half_life <= 0.0:
            return 1.0
        return float(2.0 ** ((ts - t_ref) / self.half_life))

    def conform(self, state: UserState, lookup: Lookup | None = None) -> bool:
        """Re-cut a state stored under other interest settings (True if it was): segments
        that are unions of the stored ones are summed, otherwise recomputed."""
        want = self.starts_of_ts(state.ts)  # (one interest: nothing made; requests call this)
        if state.starts == want:
            return False
        if want and set(want) <= set(state.starts):  # fewer segments: sum neighbours
            idx = [state.starts.index(a) for a in want] + [len(state.starts)]
            units = [_heaviest(state.clicks, a, b) for a, b in state._bounds()]
            vsum = np.zeros((len(want), self.dim), dtype=np.float64)
            wsum = np.zeros(len(want), dtype=np.float64)
            for s, (i, j) in enumerate(pairwise(idx)):
                top = max(units[i:j])
                for p in range(i, j):
                    if units[p] > 0:
                        vsum[s] += state.seg_vsum[p] * (units[p] / top)
                        wsum[s] += state.seg_wsum[p] * (units[p] / top)
            state.seg_vsum, state.seg_wsum, state.starts = vsum, wsum, want
            return True
        lookup = lookup or self.lookup
        if lookup is None:
            raise ValueError("re-cutting a user's interests needs a lookup of item vectors")
        self.recompute(state, lookup)
        return True

    def apply(self, state: UserState, item_id: str, ts: float, weight: float,
              vector: np.ndarray | None, event_id: str | None = None,
              lookup: Lookup | None = None) -> bool:
        """Add one click; False (and nothing changed) if ``event_id`` is in the window.

        ``vector`` is the item's normalised vector, or None when the item has none.
        """
        if not (math.isfinite(ts) and math.isfinite(weight) and weight > 0):
            raise ValueError(f"click needs a finite ts and weight > 0, got {ts!r}, {weight!r}")
        if vector is not None and np.shape(vector) != (self.dim,):
            raise ValueError(f"item vector of shape {np.shape(vector)}, expected ({self.dim},)")
        token(item_id), token(event_id)  # an id that cannot be stored raises here, not later
        if event_id is not None and any(c[EVENT] == event_id for c in state.clicks):
            return False
        lookup = lookup or self.lookup
        win = state.clicks
        pos = bisect.bisect_right(win, ts, key=_ts)
        if len(win) >= self.window and pos == 0:
            return True  # late: older than every kept click, never enters
        self.conform(state, lookup)
        has_vector = vector is not None
        click: Click = (item_id, ts, weight, event_id, has_vector)
        # the new window: the click inserted, then (if full) the oldest click out; pos > 0
        # when full, so the evicted click is the old win[0]
        evict = 1 if len(win) >= self.window else 0
        new = [*win[evict:pos], click, *win[pos:]]
        starts = self.starts_of(new)
        # each new segment as old segments ("pieces") + maybe the new click: a new window
        # index j < q is old j + evict, j > q is old j - 1 + evict (q: the new click's)
        n_old, q = len(win), pos - evict
        old_starts = state.starts
        pieces = [evict, *old_starts[1:], n_old] if old_starts else []
        plan: list[tuple[int, int, bool]] = []  # (first piece, end piece, has the click)
        split = False
        for a, b in pairwise([*starts, len(new)]):
            oa = a + evict if a <= q else a - 1 + evict
            ob = b + evict if b <= q else b - 1 + evict
            if oa == ob:
                plan.append((0, 0, True))
                continue
            i0 = bisect.bisect_right(pieces, oa) - 1  # skips an emptied first piece
            i1 = bisect.bisect_left(pieces, ob)
            if i0 < 0 or i1 >= len(pieces) or pieces[i0] != oa or pieces[i1] != ob:
                split = True  # a late click closed a gap: an old segment splits
            plan.append((i0, i1, a <= q < b))
        old_has_vector = evict and win[0][HAS_VECTOR]
        if lookup is None and (split or old_has_vector):
            raise ValueError("evicting a click needs a lookup of item vectors")
        # time decay: move the reference to the newest ts
        if self.half_life > 0.0:
            if not win:
                state.t_ref = ts
            elif ts > state.t_ref:
                scale = self._factor(state.t_ref, ts)
                state.seg_vsum = state.seg_vsum * scale
                state.seg_wsum = state.seg_wsum * scale
                state.t_ref = ts
        elif not win or ts > state.t_ref:
            state.t_ref = ts
        needs_recompute = split
        # piece sums = old segment sums (each in units of its heaviest click) ...
        pv, pw = state.seg_vsum.copy(), state.seg_wsum.copy()
        units = [_heaviest(win, a, b) for a, b in pairwise([*old_starts, n_old])]
        if old_has_vector:  # ... the first one without the evicted click
            assert lookup is not None
            old = win[0]
            mat, present = lookup([old[ITEM]])
            if bool(present[0]):
                share = old[WEIGHT] / units[0] * self._factor(old[TS], state.t_ref)
                pv[0] -= share * np.asarray(mat[0], dtype=np.float64)
                pw[0] -= share
            else:
                needs_recompute = True  # the item's vector is gone: recompute below
            left = _heaviest(win, 1, pieces[1])
            if left == 0.0:  # no usable click left: exactly zero, not float residue
                pv[0], pw[0] = 0.0, 0.0
            elif left < units[0]:  # the heaviest left
                if units[0] / left > RESCALE_MAX:
                    needs_recompute = True  # (lookup is there: old_has_vector)
                else:
                    pv[0] *= units[0] / left
                    pw[0] *= units[0] / left
            units[0] = left
        vsum = np.zeros((len(starts), self.dim), dtype=np.float64)
        wsum = np.zeros(len(starts), dtype=np.float64)
        if not split:
            vec = np.asarray(vector, dtype=np.float64) if has_vector else None
            for s, (i0, i1, with_click) in enumerate(plan):
                top = max(units[i0:i1], default=0.0)
                if with_click and has_vector:
                    top = max(top, weight)
                if top == 0.0:
                    continue  # no usable click: the segment is zero
                for p in range(i0, i1):
                    if units[p] == top:
                        vsum[s] += pv[p]
                        wsum[s] += pw[p]
                    elif units[p] > 0.0:
                        vsum[s] += pv[p] * (units[p] / top)
                        wsum[s] += pw[p] * (units[p] / top)
                if with_click and vec is not None:
                    share = weight / top * self._factor(ts, state.t_ref)
                    vsum[s] += share * vec
                    wsum[s] += share
        state.clicks, state.starts = new, starts
        state.seg_vsum, state.seg_wsum = vsum, wsum
        state.since_recompute += 1
        if lookup is not None and (needs_recompute or state.since_recompute >= self.window):
            self.recompute(state, lookup)
        return True

    def recompute(self, state: UserState, lookup: Lookup | None = None) -> None:
        """Recompute the sums (and segments) from scratch with the items' current vectors."""
        lookup = lookup or self.lookup
        if lookup is None:
            raise ValueError("recompute needs a lookup of item vectors")
        state.since_recompute = 0
        win = state.clicks
        state.starts = self.starts_of(win)
        if not win:
            state.seg_vsum = np.zeros((0, self.dim), dtype=np.float64)
            state.seg_wsum = np.zeros(0, dtype=np.float64)
            return
        mat, present = lookup([c[ITEM] for c in win])
        present = np.asarray(present, dtype=bool)
        ts = np.fromiter((c[TS] for c in win), dtype=np.float64, count=len(win))
        w = np.fromiter((c[WEIGHT] for c in win), dtype=np.float64, count=len(win))
        state.t_ref = float(ts.max())
        w = np.where(present, w, 0.0)
        bounds = list(pairwise([*state.starts, len(win)]))
        for a, b in bounds:  # each segment in units of its heaviest weight
            top = w[a:b].max()
            if top > 0:
                w[a:b] /= top
        if self.half_life > 0.0:
            w = w * np.exp2((ts - state.t_ref) / self.half_life)
        mat = np.asarray(mat, dtype=np.float64)
        state.seg_vsum = np.stack([w[a:b] @ mat[a:b] for a, b in bounds])
        state.seg_wsum = np.array([float(w[a:b].sum()) for a, b in bounds])
        state.clicks = [(c[ITEM], c[TS], c[WEIGHT], c[EVENT], p)
                        for c, p in zip(win, present.tolist(), strict=True)]
