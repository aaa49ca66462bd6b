"""The index's pending buckets: bucket key -> slots of items added since the last merge,
in numpy arrays that the compiled search reads (a Python dict of lists cost a query
~80 us at 1M items: 80 probe keys looked up in the interpreter, their slots copied
into a list).

Layout: an open-addressing hash table (linear probing, power-of-two size, at most
:data:`MAX_LOAD` full) of bucket keys, each cell the head and tail of a singly linked list
of entries (entry = one slot in one bucket; keys are salted per table, so one table serves
all L).
Lists keep insertion order and removals unlink in place, so a bucket reads as the dict's
list would (the search's ``cap`` reads the oldest entries first). Freed entries are
reused; cells whose list emptied stay until the table grows or is cleared (a merge).

Writes are compiled too (an add of one item is L inserts); :meth:`PendingBuckets.bucket`
reads one bucket in plain Python, the path the numpy reference search takes, so the
tests compare two implementations of the lookup. Thread use: as the index (one writer;
a deferred merge only reads it).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from recall import jit  # noqa: F401  (numba's cache directory, before any @njit)
from recall.kernels import EMPTY_CELL, pending_home, pending_lookup, pending_probe

#: cells of a fresh table (grows by doubling; a merge clears back to this)
_MIN_CELLS = 1024
#: the most of its cells the table fills (a fraction: numerator, denominator). Three
#: quarters, not a half: at a merge's ~60k items at 1M x 16 the ~0.7M distinct keys fit
#: 1M cells (16 MiB) instead of 2M (32 MiB, doubled into while the 1M-cell table was
#: still held: ~48 MiB at once), the top of the worker's RSS while a catalogue streams
#: in. A lookup's linear probe reads a few more neighbouring cells, in cache lines it
#: already has.
MAX_LOAD = (3, 4)


class PendingBuckets:
    """Bucket key -> slots (insertion order), for the items waiting for a merge."""

    def __init__(self, cells: int = _MIN_CELLS) -> None:
        """cells: the table's starting size, a power of two (small in tests, so they
        exercise growth)."""
        if cells < 2 or cells & (cells - 1):
            raise ValueError(f"cells must be a power of two >= 2, got {cells}")
        self._cells = cells
        self.clear()

    def clear(self) -> None:
        """Forget everything (after a merge folded it into the sorted table)."""
        n = self._cells
        self.keys = np.zeros(n, dtype=np.int64)
        self.head = np.full(n, EMPTY_CELL, dtype=np.int32)  # first entry, -1: none
        self.tail = np.full(n, -1, dtype=np.int32)
        self._entries(np.zeros((n, 2), dtype=np.int32))
        # [cells taken, entries handed out, live entries, free-list head]
        self.meta = np.array([0, 0, 0, -1], dtype=np.int64)

    def __len__(self) -> int:
        """Live entries (an item counts once per table)."""
        return int(self.meta[2])

    def __bool__(self) -> bool:
        return bool(self.meta[2])

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.keys, self.head, self.tail, self.entries)))

    def _entries(self, entries: np.ndarray) -> None:
        """Entries as (slot, next entry) pairs, next -1 at a list's end: a list walk
        misses the cache once per entry, not once per array (pending entries of a bucket
        are scattered, added at different times). ``slots`` and ``next`` are views."""
        self.entries = entries
        self.slots, self.next = entries[:, 0], entries[:, 1]

    def add(self, slots: np.ndarray, keys: np.ndarray) -> None:
        """Append slots[i] to the buckets keys[i, :] (keys (m, L) int64)."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        new = keys.size
        if not new:
            return
        self._room(new)
        _add(np.ascontiguousarray(slots, dtype=np.int32), keys, self.keys, self.head,
             self.tail, self.next, self.slots, self.meta)

    def remove(self, slots: np.ndarray, keys: np.ndarray) -> None:
        """Take slots[i] out of the buckets keys[i, :] (each must hold it)."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if keys.size:
            _remove(np.ascontiguousarray(slots, dtype=np.int32), keys, self.keys,
                    self.head, self.tail, self.next, self.slots, self.meta)

    def bucket(self, key: int) -> list[int]:
        """The slots of one bucket, oldest first (plain Python: the reference search's
        read, independent of the compiled one)."""
        mask = len(self.keys) - 1
        cell = int(pending_home(np.int64(key), mask))
        while True:
            h = int(self.head[cell])
            if h == EMPTY_CELL:
                return []
            if int(self.keys[cell]) == key:
                break
            cell = (cell + 1) & mask
        out = []
        while h >= 0:
            out.append(int(self.slots[h]))
            h = int(self.next[h])
        return out

    def _room(self, new: int) -> None:
        """Grow so ``new`` more entries (and as many new cells) fit, the table at most
        :data:`MAX_LOAD` full: rehash the non-empty cells into a bigger table, enlarge
        the entries."""
        cells, handed, live = (int(v) for v in self.meta[:3])
        num, den = MAX_LOAD
        if den * (cells + new) > num * len(self.keys):
            size = len(self.keys)
            # by the cells taken (each new entry may take one more), not the live entries:
            # a bucket holds ~1.4 of a merge's entries, so sizing by entries doubled early
            while den * (min(cells, live) + new) > num * size:
                size *= 2
            keys = np.zeros(size, dtype=np.int64)
            head = np.full(size, EMPTY_CELL, dtype=np.int32)
            tail = np.full(size, -1, dtype=np.int32)
            self.meta[0] = _rehash(self.keys, self.head, self.tail, keys, head, tail)
            self.keys, self.head, self.tail = keys, head, tail
        free = handed - live  # on the free list
        if handed + new - free > len(self.slots):
            size = len(self.slots)
            while handed + new - free > size:
                size *= 2
            entries = np.zeros((size, 2), dtype=np.int32)
            entries[:handed] = self.entries[:handed]
            self._entries(entries)


@njit(cache=True, nogil=True)
def _cell(key: np.int64, keys: np.ndarray, head: np.ndarray, meta: np.ndarray) -> int:
    """The cell of ``key``, taken (an empty list) if the key has none."""
    cell = pending_probe(key, keys, head)
    if head[cell] != EMPTY_CELL:
        return cell
    keys[cell] = key
    head[cell] = -1
    meta[0] += 1
    return cell


@njit(cache=True, nogil=True)
def _add(slots: np.ndarray, keys: np.ndarray, tkeys: np.ndarray, head: np.ndarray,
         tail: np.ndarray, nxt: np.ndarray, eslot: np.ndarray, meta: np.ndarray) -> None:
    for i in range(keys.shape[0]):
        for t in range(keys.shape[1]):
            cell = _cell(keys[i, t], tkeys, head, meta)
            e = meta[3]
            if e >= 0:  # a freed entry
                meta[3] = nxt[e]
            else:
                e = meta[1]
                meta[1] += 1
            eslot[e] = slots[i]
            nxt[e] = -1
            if head[cell] < 0:
                head[cell] = e
            else:
                nxt[tail[cell]] = e
            tail[cell] = e
            meta[2] += 1


@njit(cache=True, nogil=True)
def _remove(slots: np.ndarray, keys: np.ndarray, tkeys: np.ndarray, head: np.ndarray,
            tail: np.ndarray, nxt: np.ndarray, eslot: np.ndarray, meta: np.ndarray) -> None:
    for i in range(keys.shape[0]):
        for t in range(keys.shape[1]):
            cell = pending_lookup(keys[i, t], tkeys, head)
            if cell < 0:
                continue
            prev = -1
            e = head[cell]
            while e >= 0 and eslot[e] != slots[i]:
                prev = e
                e = nxt[e]
            if e < 0:
                continue
            if prev < 0:
                head[cell] = nxt[e]
            else:
                nxt[prev] = nxt[e]
            if tail[cell] == e:
                tail[cell] = prev
            nxt[e] = meta[3]  # onto the free list
            meta[3] = e
            meta[2] -= 1


@njit(cache=True, nogil=True)
def _rehash(keys: np.ndarray, head: np.ndarray, tail: np.ndarray, new_keys: np.ndarray,
            new_head: np.ndarray, new_tail: np.ndarray) -> int:
    """Move the cells with entries into the new table; returns how many."""
    mask = new_keys.shape[0] - 1
    taken = 0
    for c in range(keys.shape[0]):
        if head[c] < 0:  # empty, or a list that emptied
            continue
        cell = pending_home(keys[c], mask)
        while new_head[cell] != EMPTY_CELL:
            cell = (cell + 1) & mask
        new_keys[cell] = keys[c]
        new_head[cell] = head[c]
        new_tail[cell] = tail[c]
        taken += 1
    return taken


def warm_up() -> None:
    """Compile (or load) the write kernels on a tiny table."""
    p = PendingBuckets(cells=2)
    keys = np.arange(4, dtype=np.int64).reshape(2, 2)
    p.add(np.arange(2), keys)  # grows: the rehash too
    p.remove(np.arange(1), keys[:1])
