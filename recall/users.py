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

Encoding of :meth:`UserState.to_bytes` (stored in Redis by :mod:`recall.store`). Three
formats are read; the worker writes format 3 unless ``RECALL_USER_STATE_FORMAT=json``.

Format 3, the window as columns (why: encoding is buffer copies; JSON of the window's
floats cost ~100 ns a number, every batch, for each changed user)::

    offset  size   field (little-endian)
    0       1      format version = 3
    1       4      uint32  D
    5       4      uint32  applies since the last recompute
    9       8      float64 t_ref (seconds; 0 when empty)
    17      4      uint32  S segments (0 when the window is empty)
    21      4      uint32  n clicks
    25      4*S    uint32  first window index of each segment, oldest segment first
    ...     8*S    float64 wsum per segment
    ...     8*S*D  float64 vsum per segment (rows)
    ...     8*n    float64 ts of each click, oldest first
    ...     8*n    float64 weight
    ...     n      uint8   has_vector (0 or 1)
    ...     ...    JSON [[item_id, ...], [event_id | null, ...]]

Workers before format 3 do not read it: such a worker logs "stored state unreadable"
and starts the user empty (its window is lost when it writes). So a rolling upgrade
from such a version runs with ``RECALL_USER_STATE_FORMAT=json`` until every worker is
upgraded; that setting writes the formats below, which every version reads.

With at most one segment, format 1, byte for byte what single-vector workers wrote and
read (so states stored before multi-interest users stay readable)::

    offset  size   field (little-endian)
    0       1      format version = 1
    1       4      uint32  D
    5       4      uint32  applies since the last recompute
    9       8      float64 wsum
    17      8      float64 t_ref (seconds; 0 when empty)
    25      8*D    float64 vsum
    25+8D   ...    JSON array of clicks, oldest first:
                   [item_id, ts, weight, event_id | null, has_vector (bool)]

With S > 1 segments, format 2::

    0       1      format version = 2
    1       4      uint32  D
    5       4      uint32  applies since the last recompute
    9       8      float64 t_ref
    17      4      uint32  S
    21      4*S    uint32  first window index of each segment, oldest segment first
    ...     8*S    float64 wsum per segment
    ...     8*S*D  float64 vsum per segment (rows)
    ...     ...    JSON array of clicks, as in format 1

A state stored under other interest settings is re-cut by :meth:`RollingUserVectors.conform`.

Tolerance: after any sequence of clicks ``vector()`` and ``interests()`` match the
from-scratch means to ``rtol=1e-5, atol=1e-6`` (float32 output; the sums are float64)
-- tested with hypothesis.
"""

from __future__ import annotations

import bisect
import math
import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import compress, pairwise
from typing import NamedTuple

import numpy as np
import orjson

#: ``lookup(item_ids) -> (matrix (n, D), present mask (n,))``
Lookup = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]

_HEADER = struct.Struct("<BIIdd")
_HEADER2 = struct.Struct("<BIIdI")
_HEADER3 = struct.Struct("<BIIdII")
#: ``array('d')`` is native-endian; stored states are little-endian
_SWAP = sys.byteorder != "little"
_F8 = np.dtype("<f8")
#: largest factor the sums are rescaled by when the heaviest click leaves; beyond it the
#: window is recomputed (the remaining shares are too small next to what was subtracted)
RESCALE_MAX = 1e6
_FORMAT_VERSION = 1
_FORMAT_SEGMENTS = 2
#: :meth:`UserState.to_bytes` formats: 3, the columns (the default), or "json" (1 or 2)
FORMAT_COLUMNS = 3
FORMAT_JSON = 1
#: a gap longer than this (seconds) between two clicks starts a new session by default
DEFAULT_SESSION_GAP = 1800.0


class WindowClick(NamedTuple):
    """A click of a window, as :attr:`UserState.window` shows it."""

    item_id: str
    ts: float
    weight: float
    event_id: str | None
    has_vector: bool


#: a click as :attr:`UserState.clicks` gives and takes it: a plain ``(item_id, ts, weight,
#: event_id, has_vector)`` tuple (held by columns: objects per click that the cyclic GC
#: tracks made full collections walk 1M of them at 20k users x 50 clicks: 25-100 ms
#: pauses of the worker every few seconds)
Click = tuple[str, float, float, "str | None", bool]
ITEM, TS, WEIGHT, EVENT, HAS_VECTOR = range(5)


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


class UserState:
    """One user's window and running sums (see the module docstring).

    The window is held by columns, oldest first by ts: ``items`` and ``events`` (lists
    of str / None), ``ts`` and ``weight`` (``array('d')``), ``has`` (``bytearray`` of 0/1:
    the item had a vector). Why columns: a window of tuples cost ~270 bytes a click (a
    tuple, two floats, a bool slot and the pointers) and every batch re-encoded each
    changed window as JSON, ~100 ns a float; columns are ~33 bytes a click beside the id
    strings, are encoded by copying their buffers (format 3) and are scanned by C loops
    (``in``, ``bisect``, ``max``) without a Python call per click. :attr:`clicks` still
    reads and sets the window as ``(item_id, ts, weight, event_id, has_vector)`` tuples
    (the reference :meth:`RollingUserVectors.apply` works on those).
    """

    __slots__ = (
        "_n_top",
        "_top",
        "dim",
        "events",
        "has",
        "items",
        "seg_vsum",
        "seg_wsum",
        "since_recompute",
        "starts",
        "t_ref",
        "ts",
        "weight",
    )

    def __init__(self, dim: int, clicks: Sequence[Click] = (),
                 seg_vsum: np.ndarray | None = None, seg_wsum: np.ndarray | None = None,
                 starts: list[int] | None = None, t_ref: float = 0.0,
                 since_recompute: int = 0) -> None:
        self.dim = dim
        self.clicks = clicks  # type: ignore[assignment]
        self.starts: list[int] = [] if starts is None else starts
        self.seg_vsum: np.ndarray = (np.zeros((len(self.starts), dim), dtype=np.float64)
                                     if seg_vsum is None else seg_vsum)
        self.seg_wsum: np.ndarray = (np.zeros(len(self.starts), dtype=np.float64)
                                     if seg_wsum is None else seg_wsum)
        self.t_ref = t_ref
        self.since_recompute = since_recompute

    @property
    def clicks(self) -> list[Click]:
        """The window as tuples, oldest first (a copy: set it to change the window)."""
        return list(zip(self.items, self.ts, self.weight, self.events,
                        map(bool, self.has), strict=True))

    @clicks.setter
    def clicks(self, clicks: Sequence[Click]) -> None:
        self.items = [c[ITEM] for c in clicks]
        self.ts = array("d", [c[TS] for c in clicks])
        self.weight = array("d", [c[WEIGHT] for c in clicks])
        self.events = [c[EVENT] for c in clicks]
        self.has = bytearray(bool(c[HAS_VECTOR]) for c in clicks)
        self.forget_top()

    def forget_top(self) -> None:
        """Drop the cached heaviest weight (after ``has`` or the window changed outside
        :func:`recall.userbatch.apply_batch`)."""
        self._top: float | None = None
        self._n_top = 0

    def top(self) -> tuple[float, int]:
        """(W, how many clicks with a vector weigh W): the unit of a one-segment window's
        sums, kept up to date click by click by :func:`recall.userbatch.apply_batch` (so
        the heaviest click leaving is the only case that scans the window)."""
        if self._top is None:
            top = max(compress(self.weight, self.has), default=0.0)
            self._top = top
            self._n_top = list(compress(self.weight, self.has)).count(top) if top else 0
        return self._top, self._n_top

    def _heaviest(self, a: int = 0, b: int | None = None) -> float:
        return max(compress(self.weight[a:b], self.has[a:b]), default=0.0)

    def _to_common_unit(self) -> np.ndarray:
        """Per segment, the factor that brings its sums to the heaviest segment's unit."""
        units = np.array([self._heaviest(a, b) for a, b in self._bounds()])
        top = units.max(initial=0.0)
        return units / top if top > 0 else units

    @property
    def vsum(self) -> np.ndarray:
        """Sum of the window's contributions (all segments, in one unit), float64 (D,)."""
        if len(self.seg_vsum) == 1:
            return self.seg_vsum[0]
        return self._to_common_unit() @ self.seg_vsum

    @property
    def wsum(self) -> float:
        if len(self.seg_wsum) == 1:
            return float(self.seg_wsum[0])
        return float(self._to_common_unit() @ self.seg_wsum)

    def _bounds(self) -> list[tuple[int, int]]:
        return list(pairwise([*self.starts, len(self.ts)]))

    def vector(self) -> np.ndarray | None:
        """The user's embedding (float32, not normalised), or None without usable clicks."""
        wsum = self.wsum
        if wsum <= 0.0 or 1 not in self.has:
            return None
        return (self.vsum / wsum).astype(np.float32)

    def interests(self) -> list[np.ndarray]:
        """The interest vectors (float32, not normalised), newest session first; segments
        without a usable click are left out. One vector (= :meth:`vector`) when M = 1."""
        out = []
        for s, (a, b) in reversed(list(enumerate(self._bounds()))):
            w = float(self.seg_wsum[s])
            if w > 0.0 and 1 in self.has[a:b]:
                out.append((self.seg_vsum[s] / w).astype(np.float32))
        return out

    def seen(self) -> set[str]:
        """Item ids in the window."""
        return set(self.items)

    @property
    def window(self) -> list[WindowClick]:
        """The window's clicks, oldest first (a copy, for reading)."""
        return [WindowClick(*c) for c in self.clicks]

    def __len__(self) -> int:
        return len(self.ts)

    def __repr__(self) -> str:
        return (f"UserState(dim={self.dim}, clicks={len(self)}, starts={self.starts}, "
                f"t_ref={self.t_ref}, since_recompute={self.since_recompute})")

    def to_bytes(self, fmt: int = FORMAT_COLUMNS) -> bytes:
        """Encode (module docstring): ``fmt`` 3 (columns, the default) or
        :data:`FORMAT_JSON` (formats 1 and 2, what workers before format 3 read)."""
        n_seg = len(self.starts)
        if fmt == FORMAT_COLUMNS:
            ts, weight = self.ts, self.weight
            if _SWAP:  # stored little-endian
                ts, weight = array("d", ts), array("d", weight)
                ts.byteswap()
                weight.byteswap()
            return b"".join((
                _HEADER3.pack(FORMAT_COLUMNS, self.dim, self.since_recompute, self.t_ref,
                              n_seg, len(ts)),
                struct.pack(f"<{n_seg}I", *self.starts),
                self.seg_wsum.astype(_F8, copy=False).tobytes(),
                self.seg_vsum.astype(_F8, copy=False).tobytes(),
                ts.tobytes(), weight.tobytes(), self.has,
                orjson.dumps((self.items, self.events))))
        if fmt != FORMAT_JSON:
            raise ValueError(f"user state: unknown format {fmt}")
        clicks = orjson.dumps(self.clicks)  # tuples encode as the JSON arrays
        if n_seg <= 1:
            head = _HEADER.pack(_FORMAT_VERSION, self.dim, self.since_recompute, self.wsum,
                                self.t_ref)
            return head + self.vsum.astype("<f8", copy=False).tobytes() + clicks
        head = _HEADER2.pack(_FORMAT_SEGMENTS, self.dim, self.since_recompute, self.t_ref,
                             n_seg)
        return (head + np.asarray(self.starts, dtype="<u4").tobytes()
                + self.seg_wsum.astype("<f8", copy=False).tobytes()
                + self.seg_vsum.astype("<f8", copy=False).tobytes() + clicks)

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> UserState:
        """Decode :meth:`to_bytes` (formats 1, 2 and 3); ValueError when corrupt or of
        another dimension."""
        if len(data) < _HEADER.size:
            raise ValueError("user state: truncated header")
        version = data[0]
        if version == _FORMAT_VERSION:
            _, d, since, wsum, t_ref = _HEADER.unpack_from(data)
            n_seg, at = 1, _HEADER.size
        elif version == _FORMAT_SEGMENTS:
            _, d, since, t_ref, n_seg = _HEADER2.unpack_from(data)
            at = _HEADER2.size
        elif version == FORMAT_COLUMNS:
            return cls._from_columns(data, dim)
        else:
            raise ValueError(f"user state: unknown format version {version}")
        if d != dim:
            raise ValueError(f"user state: dimension {d}, expected {dim}")
        if version == _FORMAT_SEGMENTS:
            if n_seg < 2 or len(data) < at + n_seg * (4 + 8 + 8 * d):
                raise ValueError("user state: truncated segments")
            starts = np.frombuffer(data, dtype="<u4", count=n_seg, offset=at).tolist()
            at += 4 * n_seg
            seg_wsum = np.frombuffer(data, dtype="<f8", count=n_seg, offset=at).astype(
                np.float64)
            at += 8 * n_seg
        elif len(data) < at + 8 * d:
            raise ValueError("user state: truncated vector")
        seg_vsum = np.frombuffer(data, dtype="<f8", count=n_seg * d, offset=at).astype(
            np.float64).reshape(n_seg, d)
        end = at + 8 * n_seg * d
        try:
            rows = orjson.loads(data[end:])
            clicks: list[Click] = [(str(i), float(t), float(w), e, bool(h))
                                   for i, t, w, e, h in rows]
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"user state: bad window: {exc}") from None
        if version == _FORMAT_VERSION:
            seg_wsum = np.array([wsum], dtype=np.float64)
            starts = [0]
            if not clicks:  # an empty window has no segment
                starts, seg_vsum, seg_wsum = [], seg_vsum[:0], seg_wsum[:0]
        else:
            _check_starts(starts, len(clicks))
        return cls(dim, clicks, seg_vsum, seg_wsum, starts, float(t_ref), int(since))

    @classmethod
    def _from_columns(cls, data: bytes, dim: int) -> UserState:
        if len(data) < _HEADER3.size:
            raise ValueError("user state: truncated header")
        _, d, since, t_ref, n_seg, n = _HEADER3.unpack_from(data)
        if d != dim:
            raise ValueError(f"user state: dimension {d}, expected {dim}")
        at = _HEADER3.size
        end = at + n_seg * (4 + 8 + 8 * d) + n * 17
        if len(data) < end or (n_seg == 0) != (n == 0) or n_seg > n:
            raise ValueError("user state: truncated or inconsistent columns")
        starts = np.frombuffer(data, dtype="<u4", count=n_seg, offset=at).tolist()
        at += 4 * n_seg
        seg_wsum = np.frombuffer(data, dtype="<f8", count=n_seg, offset=at).copy()
        at += 8 * n_seg
        seg_vsum = np.frombuffer(data, dtype="<f8", count=n_seg * d, offset=at).reshape(
            n_seg, d).copy()
        at += 8 * n_seg * d
        state = cls(dim, (), seg_vsum, seg_wsum, starts, float(t_ref), int(since))
        state.ts = array("d", data[at:at + 8 * n])
        state.weight = array("d", data[at + 8 * n:at + 16 * n])
        if _SWAP:
            state.ts.byteswap()
            state.weight.byteswap()
        at += 16 * n
        state.has = bytearray(data[at:at + n])
        try:
            items, events = orjson.loads(data[end:])
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"user state: bad window: {exc}") from None
        if (len(items) != n or len(events) != n or max(state.has, default=0) > 1
                or not all(type(i) is str for i in items)
                or not all(e is None or type(e) is str for e in events)):
            raise ValueError("user state: bad window columns")
        state.items, state.events = items, events
        _check_starts(starts, n)
        return state


def _check_starts(starts: list[int], n: int) -> None:
    if starts and (starts[0] != 0 or any(b <= a for a, b in pairwise(starts))
                   or starts[-1] >= n):
        raise ValueError(f"user state: bad segment starts {starts}")


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

    def starts_of(self, clicks: Sequence[Click]) -> list[int]:
        """The segment starts this policy cuts a window into."""
        if not clicks:
            return []
        if self.interests == 1:
            return [0]
        return self.starts_of_ts([c[TS] for c in clicks])

    def starts_of_ts(self, ts: Sequence[float]) -> list[int]:
        """:meth:`starts_of` a window given by its timestamps."""
        if not len(ts):
            return []
        if self.interests == 1:
            return [0]
        return session_starts(ts, self.interests, self.session_gap)

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
        want = self.starts_of_ts(state.ts)  # (no tuples made: requests call this)
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
                state.seg_vsum *= scale
                state.seg_wsum *= scale
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
