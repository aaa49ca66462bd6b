"""Rolling user vectors: the weighted (optionally time-decayed) mean of the item vectors of
a user's last N clicks by timestamp, updated in O(d) per click.

The window holds the last N clicks ordered by ``ts`` (ties: arrival order, the later
arrival counts as newer). A late click older than all N kept clicks does not enter.
Each click contributes ``weight * decay * vector``; clicks on items without a vector
count in the window (and are evicted like others) but add nothing. The state keeps
``vsum`` (float64, sum of contributions) and ``wsum`` (sum of ``weight * decay`` over
clicks with a vector), so the user vector is ``vsum / wsum``:

- a new click adds its contribution; the click pushed out of the window has its
  contribution subtracted, its vector coming from ``lookup(item_ids) -> (matrix,
  present_mask)`` (e.g. ``LSHIndex.vectors_of``); O(d) per click;
- a click whose ``event_id`` is already in the window is a duplicate: ``apply`` returns
  False and changes nothing (the window is persisted, so this holds across restarts);
- every N applies (and whenever an evicted item's vector is gone) the sums are
  recomputed from scratch with ``lookup``: bounded float drift, amortised O(d), and
  item vectors that changed since the click are picked up.

Any weight > 0 is valid (1e308 three times, 5e-324 alone), so the sums are kept in
units of the window's largest weight ``W`` (over clicks with a vector): a click adds
``weight / W * decay``, every term is <= 1 and the sums cannot overflow, nor a user's
only click underflow to nothing. ``W`` is not stored: it is read off the window. A
heavier click rescales both sums by ``W_old / weight`` (O(d)); when the heaviest click
leaves, a lighter ``W`` rescales them by ``W_old / W`` -- or, past ``RESCALE_MAX``,
recomputes (the remaining shares would be the rounding error of the evicted one).

Time decay (``half_life > 0`` seconds): a click's share is ``weight * 2**(-(t_ref - ts) /
half_life)``. Only the ratio ``vsum / wsum`` matters, so the sums are kept relative to
``t_ref`` = the newest ts seen; when a newer click arrives both sums are rescaled by
``2**(-(new - old) / half_life)``. Every factor is <= 1, so the numbers stay bounded.

Encoding of :meth:`UserState.to_bytes` (stored in Redis by :mod:`recall.store`)::

    offset  size   field (little-endian)
    0       1      format version = 1
    1       4      uint32  D
    5       4      uint32  applies since the last recompute
    9       8      float64 wsum
    17      8      float64 t_ref (seconds; 0 when empty)
    25      8*D    float64 vsum
    25+8D   ...    JSON array of clicks, oldest first:
                   [item_id, ts, weight, event_id | null, has_vector (bool)]

Tolerance: after any sequence of clicks ``vector()`` matches the from-scratch mean to
``rtol=1e-5, atol=1e-6`` (float32 output; the sums are float64) -- tested with hypothesis.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import orjson

#: ``lookup(item_ids) -> (matrix (n, D), present mask (n,))``
Lookup = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]

_HEADER = struct.Struct("<BIIdd")
#: largest factor the sums are rescaled by when the heaviest click leaves; beyond it the
#: window is recomputed (the remaining shares are too small next to what was subtracted)
RESCALE_MAX = 1e6
_FORMAT_VERSION = 1


class WindowClick(NamedTuple):
    """A click of a window, as :attr:`UserState.window` shows it."""

    item_id: str
    ts: float
    weight: float
    event_id: str | None
    has_vector: bool


#: a click as stored: a plain ``(item_id, ts, weight, event_id, has_vector)`` tuple. Plain
#: tuples of strings and numbers leave the cyclic GC's lists; objects per click (a
#: dataclass, even a NamedTuple) stayed in them, and with 20k users x 50 clicks each full
#: collection walked 1M of them: 25-100 ms pauses of the worker every few seconds.
Click = tuple[str, float, float, "str | None", bool]
ITEM, TS, WEIGHT, EVENT, HAS_VECTOR = range(5)


@dataclass
class UserState:
    """One user's window and running sums (see the module docstring)."""

    dim: int
    clicks: list[Click] = field(default_factory=list)  # oldest first by ts
    vsum: np.ndarray = None  # type: ignore[assignment]
    wsum: float = 0.0
    t_ref: float = 0.0
    since_recompute: int = 0

    def __post_init__(self) -> None:
        if self.vsum is None:
            self.vsum = np.zeros(self.dim, dtype=np.float64)

    def vector(self) -> np.ndarray | None:
        """The user's embedding (float32, not normalised), or None without usable clicks."""
        if self.wsum <= 0.0 or not any(c[HAS_VECTOR] for c in self.clicks):
            return None
        return (self.vsum / self.wsum).astype(np.float32)

    def seen(self) -> set[str]:
        """Item ids in the window."""
        return {c[ITEM] for c in self.clicks}

    def event_ids(self) -> set[str]:
        return {c[EVENT] for c in self.clicks if c[EVENT] is not None}

    @property
    def window(self) -> list[WindowClick]:
        """The window's clicks, oldest first (a copy, for reading)."""
        return [WindowClick(*c) for c in self.clicks]

    def __len__(self) -> int:
        return len(self.clicks)

    def to_bytes(self) -> bytes:
        head = _HEADER.pack(_FORMAT_VERSION, self.dim, self.since_recompute, self.wsum,
                            self.t_ref)
        clicks = orjson.dumps(self.clicks)  # tuples encode as the JSON arrays
        return head + self.vsum.astype("<f8", copy=False).tobytes() + clicks

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> UserState:
        """Decode :meth:`to_bytes`; ValueError when corrupt or of another dimension."""
        if len(data) < _HEADER.size:
            raise ValueError("user state: truncated header")
        version, d, since, wsum, t_ref = _HEADER.unpack_from(data)
        if version != _FORMAT_VERSION:
            raise ValueError(f"user state: unknown format version {version}")
        if d != dim:
            raise ValueError(f"user state: dimension {d}, expected {dim}")
        end = _HEADER.size + 8 * d
        if len(data) < end:
            raise ValueError("user state: truncated vector")
        vsum = np.frombuffer(data, dtype="<f8", count=d, offset=_HEADER.size).astype(np.float64)
        try:
            rows = orjson.loads(data[end:])
            clicks: list[Click] = [(str(i), float(t), float(w), e, bool(h))
                                   for i, t, w, e, h in rows]
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"user state: bad window: {exc}") from None
        return cls(dim, clicks, vsum, float(wsum), float(t_ref), int(since))


def _ts(click: Click) -> float:
    return click[TS]


def _heaviest(clicks: Sequence[Click]) -> float | None:
    """``W``: the largest weight of a click with a vector (the sums' unit), if any."""
    return max((c[WEIGHT] for c in clicks if c[HAS_VECTOR]), default=None)


class RollingUserVectors:
    """The policy: dimension, window size N, decay half-life (0 = plain mean).

    ``lookup`` (optional here, or per call) gives the current vectors of items; it is
    needed to evict a click and to recompute.
    """

    def __init__(self, dim: int, window: int, half_life: float = 0.0,
                 lookup: Lookup | None = None) -> None:
        if dim < 1 or window < 1 or half_life < 0:
            raise ValueError("dim and window must be >= 1, half_life >= 0")
        self.dim = dim
        self.window = window
        self.half_life = float(half_life)
        self.lookup = lookup

    def new_state(self) -> UserState:
        return UserState(self.dim)

    def _factor(self, ts: float, t_ref: float) -> float:
        if self.half_life <= 0.0:
            return 1.0
        return float(2.0 ** ((ts - t_ref) / self.half_life))

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
        if event_id is not None and any(c[EVENT] == event_id for c in state.clicks):
            return False
        lookup = lookup or self.lookup
        win = state.clicks
        pos = bisect.bisect_right(win, ts, key=_ts)
        if len(win) >= self.window and pos == 0:
            return True  # late: older than every kept click, never enters
        # time decay: move the reference to the newest ts
        if self.half_life > 0.0:
            if not win:
                state.t_ref = ts
            elif ts > state.t_ref:
                scale = self._factor(state.t_ref, ts)
                state.vsum *= scale
                state.wsum *= scale
                state.t_ref = ts
        elif not win or ts > state.t_ref:
            state.t_ref = ts
        has_vector = vector is not None
        unit = _heaviest(win)  # the sums are in units of it (module docstring)
        if has_vector and (unit is None or weight > unit):
            if unit is not None:
                state.vsum *= unit / weight
                state.wsum *= unit / weight
            unit = weight
        win.insert(pos, (item_id, ts, weight, event_id, has_vector))
        if has_vector:
            share = weight / unit * self._factor(ts, state.t_ref)  # type: ignore[operator]
            state.vsum += share * np.asarray(vector, dtype=np.float64)
            state.wsum += share
        needs_recompute = False
        while len(win) > self.window:
            old = win.pop(0)
            if not old[HAS_VECTOR]:
                continue
            if lookup is None:
                raise ValueError("evicting a click needs a lookup of item vectors")
            mat, present = lookup([old[ITEM]])
            if not bool(present[0]):
                needs_recompute = True  # the item's vector is gone: recompute below
                continue
            share = old[WEIGHT] / unit * self._factor(old[TS], state.t_ref)  # type: ignore[operator]
            state.vsum -= share * np.asarray(mat[0], dtype=np.float64)
            state.wsum -= share
        left = _heaviest(win)
        if unit is not None and left is not None and left < unit:  # the heaviest left
            if unit / left > RESCALE_MAX:
                needs_recompute = True
            else:
                state.vsum *= unit / left
                state.wsum *= unit / left
        if not any(c[HAS_VECTOR] for c in win):
            state.vsum[:] = 0.0
            state.wsum = 0.0
        state.since_recompute += 1
        if lookup is not None and (needs_recompute or state.since_recompute >= self.window):
            self.recompute(state, lookup)
        return True

    def recompute(self, state: UserState, lookup: Lookup | None = None) -> None:
        """Recompute the sums from scratch with the items' current vectors."""
        lookup = lookup or self.lookup
        if lookup is None:
            raise ValueError("recompute needs a lookup of item vectors")
        state.since_recompute = 0
        win = state.clicks
        if not win:
            state.vsum = np.zeros(self.dim, dtype=np.float64)
            state.wsum = 0.0
            return
        mat, present = lookup([c[ITEM] for c in win])
        present = np.asarray(present, dtype=bool)
        ts = np.fromiter((c[TS] for c in win), dtype=np.float64, count=len(win))
        w = np.fromiter((c[WEIGHT] for c in win), dtype=np.float64, count=len(win))
        w = np.where(present, w, 0.0)
        if present.any():
            w /= w.max()  # in units of the heaviest weight (module docstring)
        state.t_ref = float(ts.max())
        if self.half_life > 0.0:
            w = w * np.exp2((ts - state.t_ref) / self.half_life)
        state.vsum = w @ np.asarray(mat, dtype=np.float64)
        state.wsum = float(w.sum())
        state.clicks = [(c[ITEM], c[TS], c[WEIGHT], c[EVENT], p)
                        for c, p in zip(win, present.tolist(), strict=True)]
