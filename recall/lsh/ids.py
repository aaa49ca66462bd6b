"""Item ids <-> slots of the index, compactly: the ids' UTF-8 bytes in one growable
blob, each slot's (start, length) in it, and an open-addressing hash table of slots
(linear probing, at most half full), read and written by compiled kernels (numba) a
batch of ids per call.

Why not a dict: a dict id -> slot and a list slot -> id hold a str and an int object per
id; at 1M ids ``i0``..``i999999`` that is ~118 MB of the worker's RSS, this ~30 MB
(blob 7 MB, 12 bytes per slot, a 4-byte table cell per 2 ids at most). numba's typed
Dict keeps a separate string object per key too (152 MB for the same ids); marisa-trie
is read-only (every item change would rebuild it); pandas/pyarrow either keep Python
objects for their hash index or rebuild it per lookup.

The store also hands out the slots: a new id takes the slot freed last (so the index's
vector matrix stays dense), else the next never used one (:attr:`IdStore.high`).

Threads: one thread writes (the index's owner). A search in another thread (the recall
monitor's exact search) may read meanwhile: a reallocation swaps a new set of arrays in
with one assignment, so a reader works on one consistent set, and reads check their
bounds, so at worst it sees an id being written as missing; it never reads outside the
arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, pairwise
from typing import NamedTuple

import numpy as np
from numba import njit

from recall import jit  # noqa: F401  (numba's cache directory, before any @njit)

#: table cells: no slot, and a removed one (probing goes on past it)
_EMPTY = -1
_GONE = -2
#: ids are stored as UTF-8; "surrogatepass" round-trips any Python str
_ERRORS = "surrogatepass"


@njit(cache=True, nogil=True)
def _hash(buf, a, b):  # type: ignore[no-untyped-def]
    """FNV-1a of buf[a:b], then MurmurHash3's 64-bit finaliser (FNV's low bits alone
    cluster for ids that differ in their last characters, and the table uses the low
    bits)."""
    h = np.uint64(14695981039346656037)
    for i in range(a, b):
        h ^= np.uint64(buf[i])
        h *= np.uint64(1099511628211)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


@njit(cache=True, nogil=True)
def _find(table, starts, lens, blob, q, a, b):  # type: ignore[no-untyped-def]
    """(cell, slot) of the id q[a:b]: its slot, or -1 and the cell to insert it at (the
    first removed cell on its probe path, else the empty cell that ended it)."""
    mask = table.size - 1
    i = np.int64(_hash(q, a, b) & np.uint64(mask))
    n = b - a
    free = -1
    while True:
        s = table[i]
        if s == _EMPTY:
            return (free if free >= 0 else i), -1
        if s == _GONE:
            if free < 0:
                free = i
        elif s < lens.size and lens[s] == n:
            st = starts[s]
            same = st >= 0 and st + n <= blob.size
            j = 0
            while same and j < n:
                same = blob[st + j] == q[a + j]
                j += 1
            if same:
                return i, s
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def _lookup(table, starts, lens, blob, q, off, out):  # type: ignore[no-untyped-def]
    for k in range(off.size - 1):
        out[k] = _find(table, starts, lens, blob, q, off[k], off[k + 1])[1]


@njit(cache=True, nogil=True)
def _insert(table, starts, lens, blob, used, free, n_free, high, q, off,
            out, new):  # type: ignore[no-untyped-def]
    """Each id's slot, adding the unknown ones (a freed slot, last freed first, else the
    next after ``high``); returns (bytes used, freed slots left, high, removed cells
    reused). The caller made room: blob bytes, slots and table cells."""
    reused = 0
    for k in range(off.size - 1):
        a, b = off[k], off[k + 1]
        cell, s = _find(table, starts, lens, blob, q, a, b)
        if s < 0:
            if n_free > 0:
                n_free -= 1
                s = free[n_free]
            else:
                s = high
                high += 1
            blob[used:used + b - a] = q[a:b]
            starts[s] = used
            lens[s] = b - a
            used += b - a
            if table[cell] == _GONE:
                reused += 1
            table[cell] = s  # last: a reader finds the slot only once it is complete
            new[k] = True
        out[k] = s
    return used, n_free, high, reused


@njit(cache=True, nogil=True)
def _remove(table, starts, lens, blob, q, off, free, n_free,
            out):  # type: ignore[no-untyped-def]
    """Remove the ids present (their slots to ``out``, -1 for the others, and onto the
    free stack); returns (freed slots, their bytes)."""
    garbage = 0
    for k in range(off.size - 1):
        cell, s = _find(table, starts, lens, blob, q, off[k], off[k + 1])
        out[k] = s
        if s >= 0:
            table[cell] = _GONE
            garbage += lens[s]
            lens[s] = -1
            free[n_free] = s
            n_free += 1
    return n_free, garbage


@njit(cache=True, nogil=True)
def _rehash(table, starts, lens, blob, high):  # type: ignore[no-untyped-def]
    """Every live slot below ``high`` into an empty table."""
    mask = table.size - 1
    for s in range(high):
        n = lens[s]
        if n < 0:
            continue
        i = np.int64(_hash(blob, starts[s], starts[s] + n) & np.uint64(mask))
        while table[i] != _EMPTY:
            i = (i + 1) & mask
        table[i] = s


@njit(cache=True, nogil=True)
def _compact(starts, lens, blob, high, new_starts, new_blob):  # type: ignore[no-untyped-def]
    """The live ids' bytes, in slot order, into ``new_blob``; returns the bytes used."""
    used = 0
    for s in range(high):
        n = lens[s]
        if n < 0:
            continue
        new_blob[used:used + n] = blob[starts[s]:starts[s] + n]
        new_starts[s] = used
        used += n
    return used


@njit(cache=True, nogil=True)
def _gather(starts, lens, blob, slots, off):  # type: ignore[no-untyped-def]
    """The bytes of the slots' ids, one after the other (their ends into off[1:]), and
    the index of the first slot without an id (-1 if none)."""
    total = 0
    missing = -1
    for k in range(slots.size):
        s = slots[k]
        n = lens[s] if 0 <= s < lens.size else -1
        if n < 0 or starts[s] < 0 or starts[s] + n > blob.size:
            if missing < 0:
                missing = k
            n = 0
        total += n
        off[k + 1] = total
    out = np.empty(total, dtype=np.uint8)
    for k in range(slots.size):
        a, b = off[k], off[k + 1]
        if b > a:
            st = starts[slots[k]]
            out[a:b] = blob[st:st + b - a]
    return out, missing


class _Arrays(NamedTuple):
    """One consistent set (see the module docstring: swapped in whole)."""

    table: np.ndarray  # int32 cells: a slot, _EMPTY or _GONE; size a power of two
    starts: np.ndarray  # int64 per slot: where its id starts in blob
    lens: np.ndarray  # int32 per slot: its id's length in bytes, -1 = no id
    blob: np.ndarray  # uint8: the ids' bytes (removed ids' bytes stay until compacted)


def _encode(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ids' UTF-8 bytes one after the other, and their (n+1,) offsets."""
    text = "".join(ids)
    if text.isascii():  # one encode for the batch: a byte per character
        data, lens = text.encode("ascii"), map(len, ids)
    else:
        enc = [i.encode("utf-8", _ERRORS) for i in ids]
        data, lens = b"".join(enc), map(len, enc)
    off = np.fromiter(accumulate(lens, initial=0), dtype=np.int64, count=len(ids) + 1)
    return np.frombuffer(data, dtype=np.uint8), off


def _table_size(n: int) -> int:
    """Cells for n ids at most half full (a power of two, at least 16)."""
    return max(16, 1 << (2 * n - 1).bit_length())


class IdStore:
    """Item ids (any str) <-> int slots; the lookups take and return a batch."""

    def __init__(self) -> None:
        self._a = _Arrays(np.full(16, _EMPTY, dtype=np.int32), np.zeros(0, dtype=np.int64),
                          np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.uint8))
        self._used = 0  # blob bytes written
        self._garbage = 0  # of which removed ids'
        self._free = np.zeros(0, dtype=np.int64)  # freed slots, a stack
        self._n_free = 0
        self._gone = 0  # _GONE cells in the table
        self._count = 0
        self.high = 0  # slots ever handed out (high-water mark)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.slots([item_id])[0] >= 0

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self._a)) + self._free.nbytes

    def slots(self, ids: Sequence[str]) -> np.ndarray:
        """Each id's slot (int64), -1 for unknown ids."""
        if not len(ids) or not self._count:
            return np.full(len(ids), -1, dtype=np.int64)
        out = np.empty(len(ids), dtype=np.int64)
        q, off = _encode(ids)
        a = self._a
        _lookup(a.table, a.starts, a.lens, a.blob, q, off, out)
        return out

    def ids_of(self, slots: np.ndarray | Sequence[int]) -> list[str]:
        """The id of each slot; KeyError for a slot without one."""
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        off = np.zeros(len(slots) + 1, dtype=np.int64)
        if not len(slots):
            return []
        a = self._a
        raw, missing = _gather(a.starts, a.lens, a.blob, slots, off)
        if missing >= 0:
            raise KeyError(f"slot {int(slots[missing])} holds no item id")
        data = raw.tobytes()
        bounds = pairwise(off.tolist())
        if data.isascii():  # one decode for the batch, then str slices
            text = data.decode("ascii")
            return [text[a:b] for a, b in bounds]
        return [data[a:b].decode("utf-8", _ERRORS) for a, b in bounds]

    def ids(self) -> list[str]:
        """Every id, in slot order."""
        return self.ids_of(np.flatnonzero(self._a.lens[: self.high] >= 0))

    def reserve(self, slots: int) -> None:
        """Room for ids in slots [0, slots) without growing (a catalogue about to be
        loaded: one table of its size instead of doubling on the way)."""
        self._room(slots, 0, max(0, slots - self._count))

    def add(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each id's slot (int64), new ids getting one; and a mask of the ids that were
        new. An id repeated in ``ids`` is new at its first occurrence only."""
        n = len(ids)
        out = np.empty(n, dtype=np.int64)
        new = np.zeros(n, dtype=bool)
        if not n:
            return out, new
        q, off = _encode(ids)
        self._room(self.high + n, len(q), n)
        a = self._a
        used, n_free, high, reused = _insert(a.table, a.starts, a.lens, a.blob, self._used,
                                             self._free, self._n_free, self.high, q, off,
                                             out, new)
        self._count += self._n_free - n_free + high - self.high
        self._gone -= reused
        self._used, self._n_free, self.high = used, n_free, high
        return out, new

    def remove(self, ids: Sequence[str]) -> np.ndarray:
        """Remove the ids present; returns their slots (in order; unknown and repeated
        ids left out), now free."""
        if not len(ids) or not self._count:
            return np.zeros(0, dtype=np.int64)
        q, off = _encode(ids)
        if len(self._free) < self._n_free + len(ids):
            free = np.zeros(max(self._n_free + len(ids), 2 * len(self._free)), dtype=np.int64)
            free[: self._n_free] = self._free[: self._n_free]
            self._free = free
        out = np.empty(len(ids), dtype=np.int64)
        a = self._a
        n_free, garbage = _remove(a.table, a.starts, a.lens, a.blob, q, off, self._free,
                                  self._n_free, out)
        removed = n_free - self._n_free
        self._n_free = n_free
        self._count -= removed
        self._gone += removed
        self._garbage += int(garbage)
        return out[out >= 0]

    def _room(self, slots: int, nbytes: int, n: int) -> None:
        """Make room for n more ids of nbytes bytes in slots below ``slots``: each array
        that must grow is replaced (never resized in place: see the module docstring)."""
        a = self._a
        table, starts, lens, blob = a
        if len(starts) < slots:
            size = max(slots, len(starts) + len(starts) // 4)
            starts = np.concatenate([starts, np.zeros(size - len(starts), dtype=np.int64)])
            lens = np.concatenate([lens, np.full(size - len(lens), -1, dtype=np.int32)])
        if self._used + nbytes > len(blob):
            live = self._used - self._garbage
            if self._garbage > live:  # mostly removed ids' bytes: drop them
                size = max(2 * (live + nbytes), 1024)
                new_blob = np.zeros(size, dtype=np.uint8)
                starts = starts.copy()
                self._used = int(_compact(a.starts, a.lens, a.blob, self.high, starts, new_blob))
                self._garbage = 0
                blob = new_blob
            else:
                size = max(self._used + nbytes, len(blob) + len(blob) // 2, 1024)
                blob = np.concatenate([blob[: self._used],
                                       np.zeros(size - self._used, dtype=np.uint8)])
        if 2 * (self._count + self._gone + n) > len(table):
            table = np.full(_table_size(self._count + n), _EMPTY, dtype=np.int32)
            _rehash(table, starts, lens, blob, self.high)
            self._gone = 0
        self._a = _Arrays(table, starts, lens, blob)


def warm_up() -> None:
    """Compile (or load from numba's disk cache) the kernels on a tiny store."""
    store = IdStore()
    store.add(["a", "b", "a"])
    store.slots(["a", "z"])
    store.ids_of([0, 1])
    store.remove(["a"])
    store.add(["c"])
    store.reserve(40)
