"""One user's state as the worker holds it and stores it: the window of their last clicks
(by columns) and the running sums of :class:`recall.users.RollingUserVectors`, with the
byte encodings Redis keeps (:mod:`recall.store`).

Why apart from the policy (:mod:`recall.users`): the encoding is a contract with every
worker version that reads a stored state (rolling upgrades), and changes for other
reasons than the rules of the rolling mean.

Encoding of :meth:`UserState.to_bytes` (stored in Redis by :mod:`recall.store`). Four
formats are read; the worker writes format 4 unless ``RECALL_USER_STATE_FORMAT`` says
``columns`` (format 3) or ``json`` (formats 1-2).

Format 4, format 3 with the id columns as the worker holds them, packed
(:mod:`recall.packedids`; why: encoding and decoding are buffer copies, no JSON of
100 strings per changed user per batch)::

    offset  size   field (little-endian)
    0       1      format version = 4
    1       4      uint32  D
    5       4      uint32  applies since the last recompute
    9       8      float64 t_ref (seconds; 0 when empty)
    17      4      uint32  S segments (0 when the window is empty)
    21      4      uint32  n clicks
    25      4      uint32  I, bytes of the packed item ids
    29      ...    as format 3 from its offset 25, up to has_vector
    ...     I      packed item ids (0xFF, then each id's UTF-8 and 0xFF)
    ...     ...    packed event ids (the same; an empty id: no event id)

Workers before format 4 do not read it (as below for format 3): a rolling upgrade from
such a version runs with ``RECALL_USER_STATE_FORMAT=columns`` until every worker is
upgraded.

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
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from itertools import compress, pairwise
from typing import NamedTuple

import numpy as np
import orjson

from recall import packedids

_HEADER = struct.Struct("<BIIdd")
_HEADER2 = struct.Struct("<BIIdI")
_HEADER3 = struct.Struct("<BIIdII")
_HEADER4 = struct.Struct("<BIIdIII")
#: ``array('d')`` is native-endian; stored states are little-endian
_SWAP = sys.byteorder != "little"
_F8 = np.dtype("<f8")
#: format 3's segment starts of a one-segment window, the usual case
_ONE_START = struct.pack("<I", 0)
_ONE_SUM = struct.Struct("<d")
_FORMAT_VERSION = 1
_FORMAT_SEGMENTS = 2
#: :meth:`UserState.to_bytes` formats: 4, packed ids (the default), 3, the ids as JSON
#: lists, or "json" (1 or 2)
FORMAT_PACKED = 4
FORMAT_COLUMNS = 3
FORMAT_JSON = 1
#: the segment starts of a one-segment window (shared: a tuple of ints is immutable and
#: untracked by the cyclic GC, where a list per user was one more object each full
#: collection walked)
ONE_SEGMENT: tuple[int, ...] = (0,)
#: ``RECALL_USER_STATE_FORMAT`` -> format
FORMATS = {"packed": FORMAT_PACKED, "columns": FORMAT_COLUMNS, "json": FORMAT_JSON}


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


class UserState:
    """One user's window and running sums (see the module docstring).

    The window is held by columns, oldest first by ts: ``items`` and ``events`` (packed
    id columns, :mod:`recall.packedids`: one ``bytes`` each; no event id is an empty
    one), ``ts`` and ``weight`` (``array('d')``), ``has`` (``bytearray`` of 0/1: the item
    had a vector). Why columns: a window of tuples cost ~270 bytes a click (a tuple, two
    floats, a bool slot and the pointers) and every batch re-encoded each changed window
    as JSON, ~100 ns a float; columns are ~19 bytes a click beside the ids' UTF-8, are
    encoded by copying their buffers (format 4) and are scanned by C loops (``find``,
    ``bisect``, ``max``) without a Python call per click. :attr:`clicks` still
    reads and sets the window as ``(item_id, ts, weight, event_id, has_vector)`` tuples
    (the reference :meth:`recall.users.RollingUserVectors.apply` works on those).

    The sums are held as the little-endian bytes format 3 stores (``_vsum``, ``_wsum``);
    :attr:`seg_vsum` and :attr:`seg_wsum` read them as (read-only) float64 arrays and
    take any array. Why bytes: a click batch gathers and scatters a few hundred users'
    sums, and the encoding copies them, every batch; as numpy arrays (two objects, a
    header and a separate buffer, each) that was ~1 us of numpy calls and cold cache
    lines per user per step; a bytes object is one allocation, sliced, joined and
    copied by C with no numpy call.
    """

    __slots__ = (
        "_n_top",
        "_top",
        "_vsum",
        "_wsum",
        "dim",
        "events",
        "has",
        "items",
        "since_recompute",
        "starts",
        "t_ref",
        "ts",
        "weight",
    )

    def __init__(self, dim: int, clicks: Sequence[Click] = (),
                 seg_vsum: np.ndarray | None = None, seg_wsum: np.ndarray | None = None,
                 starts: Sequence[int] | None = None, t_ref: float = 0.0,
                 since_recompute: int = 0) -> None:
        self.dim = dim
        self.clicks = clicks  # type: ignore[assignment]
        #: first window index of each segment, oldest first (a tuple: see ONE_SEGMENT)
        self.starts: tuple[int, ...] = () if starts is None else tuple(starts)
        self._vsum: bytes = bytes(8 * dim * len(self.starts))
        self._wsum: bytes = bytes(8 * len(self.starts))
        if seg_vsum is not None:
            self.seg_vsum = seg_vsum
        if seg_wsum is not None:
            self.seg_wsum = seg_wsum
        self.t_ref = t_ref
        self.since_recompute = since_recompute

    @property
    def seg_vsum(self) -> np.ndarray:
        """Per segment, the sum of its contributions: float64 (S, D), read-only (set it to
        change it)."""
        return np.frombuffer(self._vsum, dtype=_F8).reshape(-1, self.dim)

    @seg_vsum.setter
    def seg_vsum(self, value: np.ndarray) -> None:
        self._vsum = np.ascontiguousarray(value, dtype=_F8).tobytes()

    @property
    def seg_wsum(self) -> np.ndarray:
        """Per segment, the sum of its shares: float64 (S,), read-only (set it to change
        it)."""
        return np.frombuffer(self._wsum, dtype=_F8)

    @seg_wsum.setter
    def seg_wsum(self, value: np.ndarray) -> None:
        self._wsum = np.ascontiguousarray(value, dtype=_F8).tobytes()

    @property
    def clicks(self) -> list[Click]:
        """The window as tuples, oldest first (a copy: set it to change the window)."""
        return list(zip(packedids.unpack(self.items), self.ts, self.weight,
                        packedids.unpack_optional(self.events), map(bool, self.has),
                        strict=True))

    @clicks.setter
    def clicks(self, clicks: Sequence[Click]) -> None:
        # (both id columns packed first: an id that cannot be encoded changes nothing)
        items = packedids.pack([c[ITEM] for c in clicks])
        self.events = packedids.pack([c[EVENT] for c in clicks])
        self.items = items
        self.ts = array("d", [c[TS] for c in clicks])
        self.weight = array("d", [c[WEIGHT] for c in clicks])
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
        if len(self._wsum) == 8:  # one segment
            return np.frombuffer(self._vsum, dtype=_F8)
        return self._to_common_unit() @ self.seg_vsum

    @property
    def wsum(self) -> float:
        if len(self._wsum) == 8:  # one segment
            return float(_ONE_SUM.unpack(self._wsum)[0])
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
        return set(packedids.unpack(self.items))

    def item_ids(self) -> list[str]:
        """The window's item ids, oldest first."""
        return packedids.unpack(self.items)

    @property
    def window(self) -> list[WindowClick]:
        """The window's clicks, oldest first (a copy, for reading)."""
        return [WindowClick(*c) for c in self.clicks]

    def __len__(self) -> int:
        return len(self.ts)

    def __repr__(self) -> str:
        return (f"UserState(dim={self.dim}, clicks={len(self)}, starts={self.starts}, "
                f"t_ref={self.t_ref}, since_recompute={self.since_recompute})")

    def to_bytes(self, fmt: int = FORMAT_PACKED) -> bytes:
        """Encode (module docstring): ``fmt`` 4 (packed, the default), 3 (what workers
        before format 4 read) or :data:`FORMAT_JSON` (formats 1 and 2, what workers
        before format 3 read)."""
        starts = self.starts
        n_seg = len(starts)
        if fmt in (FORMAT_PACKED, FORMAT_COLUMNS):
            ts, weight = self.ts, self.weight
            if _SWAP:  # stored little-endian
                ts, weight = array("d", ts), array("d", weight)
                ts.byteswap()
                weight.byteswap()
            # (the columns' own buffers: join copies them once)
            if fmt == FORMAT_PACKED:
                head = _HEADER4.pack(FORMAT_PACKED, self.dim, self.since_recompute,
                                     self.t_ref, n_seg, len(ts), len(self.items))
                ids: tuple[bytes, ...] = (self.items, self.events)
            else:
                head = _HEADER3.pack(FORMAT_COLUMNS, self.dim, self.since_recompute,
                                     self.t_ref, n_seg, len(ts))
                ids = (orjson.dumps((packedids.unpack(self.items),
                                     packedids.unpack_optional(self.events))),)
            return b"".join((
                head, _ONE_START if starts == ONE_SEGMENT else struct.pack(f"<{n_seg}I", *starts),
                self._wsum, self._vsum, ts, weight, self.has, *ids))
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
        """Decode :meth:`to_bytes` (formats 1 to 4); ValueError when corrupt or of
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
        elif version in (FORMAT_COLUMNS, FORMAT_PACKED):
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
        """Formats 3 and 4 (the same but for the header and the id columns)."""
        packed = data[0] == FORMAT_PACKED
        header = _HEADER4 if packed else _HEADER3
        if len(data) < header.size:
            raise ValueError("user state: truncated header")
        _, d, since, t_ref, n_seg, n, *n_items = header.unpack_from(data)
        if d != dim:
            raise ValueError(f"user state: dimension {d}, expected {dim}")
        at = header.size
        end = at + n_seg * (4 + 8 + 8 * d) + n * 17
        if len(data) < end or (n_seg == 0) != (n == 0) or n_seg > n:
            raise ValueError("user state: truncated or inconsistent columns")
        starts = np.frombuffer(data, dtype="<u4", count=n_seg, offset=at).tolist()
        at += 4 * n_seg
        state = cls(dim, (), None, None, starts, float(t_ref), int(since))
        state._wsum = bytes(data[at:at + 8 * n_seg])
        at += 8 * n_seg
        state._vsum = bytes(data[at:at + 8 * n_seg * d])
        at += 8 * n_seg * d
        state.ts = array("d", data[at:at + 8 * n])
        state.weight = array("d", data[at + 8 * n:at + 16 * n])
        if _SWAP:
            state.ts.byteswap()
            state.weight.byteswap()
        at += 16 * n
        state.has = bytearray(data[at:at + n])
        if max(state.has, default=0) > 1:
            raise ValueError("user state: bad window columns")
        if packed:
            state.items = data[end:end + n_items[0]]
            state.events = data[end + n_items[0]:]
            try:
                packedids.check(state.items)
                packedids.check(state.events)
            except ValueError:
                raise ValueError("user state: bad id columns") from None
            if packedids.count(state.items) != n or packedids.count(state.events) != n:
                raise ValueError("user state: bad window columns")
        else:
            try:
                items, events = orjson.loads(data[end:])
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                raise ValueError(f"user state: bad window: {exc}") from None
            if (len(items) != n or len(events) != n
                    or not all(type(i) is str for i in items)
                    or not all(e is None or type(e) is str for e in events)):
                raise ValueError("user state: bad window columns")
            state.items = packedids.pack(items)
            state.events = packedids.pack(events)
        _check_starts(starts, n)
        return state


def _check_starts(starts: list[int], n: int) -> None:
    if starts and (starts[0] != 0 or any(b <= a for a, b in pairwise(starts))
                   or starts[-1] >= n):
        raise ValueError(f"user state: bad segment starts {starts}")
