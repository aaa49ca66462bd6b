"""Compiled kernels of the index's bulk build (``LSHIndex.build``, the worker's
catalogue load), of item hashing (:func:`fold_keys`), of the bucket table's radix
directory and the search's views of the table's parts, kept apart from the search
kernels of :mod:`recall.kernels` (which re-exports them, so callers name one module).

The bucket table of a bulk load is a counting sort by the keys' top bits, then a sort
within each small cell, then the unique keys compacted in place: no argsort of all
entries (its index array and sorted copies were ~400 MB at 1M x 16). Compiled on first
call and cached on disk (``cache=True``), as the search kernels.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from recall import jit  # noqa: F401  (numba's cache directory, before any @njit)


@njit(cache=True, nogil=True)
def fold_keys(t: np.ndarray, offset: np.ndarray, w: float, pstable: bool,
              mult: np.ndarray, salt: np.ndarray, out: np.ndarray) -> None:
    """out (n, L) = the bucket keys of items whose projections are t (n, L*k) float64:
    codes floor((t + offset) / w) (p-stable) or [t > 0] (SimHash), folded per table as
    salt + sum(code * mult), wrapping in int64. The float64 operations of
    ``Hasher``'s numpy (its reference), in one read of t: numpy's add, divide, floor,
    two casts and einsum over it cost as much CPU as the product that made it."""
    L, k = mult.shape
    for i in range(t.shape[0]):
        for tb in range(L):
            key = salt[tb]
            for j in range(k):
                x = t[i, tb * k + j]
                c = np.floor((x + offset[tb * k + j]) / w) if pstable else (1.0 if x > 0 else 0.0)
                key += np.int64(c) * mult[tb, j]
            out[i, tb] = key


@njit(cache=True, nogil=True)
def count_cells(keys: np.ndarray, shift: int, counts: np.ndarray) -> None:
    """Bulk build, pass 1: counts[cell] += 1 for each key of keys (m, L), the cell being
    the key's top bits in signed order (as the bucket table's radix directory)."""
    for i in range(keys.shape[0]):
        for t in range(keys.shape[1]):
            u = np.uint64(keys[i, t]) ^ np.uint64(0x8000000000000000)
            counts[np.int64(u >> np.uint64(shift))] += 1


@njit(cache=True, nogil=True)
def scatter_cells(keys: np.ndarray, slots: np.ndarray, shift: int, first: int, end: int,
                  pos: np.ndarray, out_keys: np.ndarray, out_slots: np.ndarray) -> None:
    """Bulk build, pass 2: each entry (keys[i, t], slots[i]) whose cell c is in [first,
    end) to the next free position of its cell (pos[c - first]: running offsets,
    advanced here), in the order given; the other entries are skipped."""
    for i in range(keys.shape[0]):
        for t in range(keys.shape[1]):
            key = keys[i, t]
            u = np.uint64(key) ^ np.uint64(0x8000000000000000)
            c = np.int64(u >> np.uint64(shift))
            if c < first or c >= end:
                continue
            p = pos[c - first]
            out_keys[p] = key
            out_slots[p] = slots[i]
            pos[c - first] = p + 1


@njit(cache=True, nogil=True)
def finish_cells(keys: np.ndarray, slots: np.ndarray, cell_starts: np.ndarray) -> int:
    """Bulk build, pass 3: sort each cell's entries by key, stably (entries keep their
    order within a bucket): insertion sort in small cells, a merge sort where a big
    bucket of skewed data fills one. keys/slots are sorted in place; returns the number
    of distinct keys."""
    n_unique = 0
    for c in range(cell_starts.shape[0] - 1):
        lo, hi = cell_starts[c], cell_starts[c + 1]
        if hi - lo > 32:  # a big bucket (skewed data) shares the cell: a stable merge sort
            order = np.argsort(keys[lo:hi], kind="mergesort")
            k_cell, s_cell = keys[lo:hi][order], slots[lo:hi][order]
            keys[lo:hi] = k_cell
            slots[lo:hi] = s_cell
        else:
            for j in range(lo + 1, hi):
                key, slot = keys[j], slots[j]
                p = j
                while p > lo and keys[p - 1] > key:
                    keys[p] = keys[p - 1]
                    slots[p] = slots[p - 1]
                    p -= 1
                keys[p] = key
                slots[p] = slot
        for j in range(lo, hi):
            if j == lo or keys[j] != keys[j - 1]:
                n_unique += 1
    return n_unique


@njit(cache=True, nogil=True)
def unique_csr(keys: np.ndarray, starts: np.ndarray) -> None:
    """Bulk build, pass 4: the CSR table of sorted entry keys, in place: the distinct keys
    move to keys[:B] (a key is written at or before where it was read), starts (B+1,)
    gets where each one's entries begin and the total."""
    b = 0
    n = keys.shape[0]
    for j in range(n):
        if j == 0 or keys[j] != keys[b - 1]:
            keys[b] = keys[j]
            starts[b] = j
            b += 1
    starts[b] = n


@njit(cache=True, nogil=True)
def merge_buckets(ukeys: np.ndarray, starts: np.ndarray, slots: np.ndarray,
                  keep: np.ndarray, use_keep: bool, new_keys: np.ndarray,
                  new_slots: np.ndarray, out_keys: np.ndarray, out_starts: np.ndarray,
                  out_slots: np.ndarray) -> int:
    """A merge of the bucket table (CSR: sorted unique ``ukeys``, ``starts``, ``slots``)
    with sorted new entries (``new_keys``, ``new_slots``), in one pass: each bucket's
    entries where ``keep`` (all unless ``use_keep``), then its new entries in their order;
    buckets left empty are dropped. Writes the new CSR into out_keys (>= distinct keys),
    out_starts (one more) and out_slots (exactly the entries); returns the key count.
    numpy took ~10 passes over the entries (masks, insert, cumsums, searchsorted): 1.75 s
    of CPU at 1M items, every 62,500 items a topic-fed catalogue grows."""
    n_old = ukeys.shape[0]
    m = new_keys.shape[0]
    i = 0
    j = 0
    nb = 0
    ne = 0
    while i < n_old or j < m:
        if j >= m or (i < n_old and ukeys[i] < new_keys[j]):
            key, old, new = ukeys[i], True, False
        elif i >= n_old or new_keys[j] < ukeys[i]:
            key, old, new = new_keys[j], False, True
        else:
            key, old, new = ukeys[i], True, True
        first = ne
        if old:
            for e in range(starts[i], starts[i + 1]):
                if not use_keep or keep[e]:
                    out_slots[ne] = slots[e]
                    ne += 1
            i += 1
        if new:
            while j < m and new_keys[j] == key:
                out_slots[ne] = new_slots[j]
                ne += 1
                j += 1
        if ne > first:
            out_keys[nb] = key
            out_starts[nb] = first
            nb += 1
    out_starts[nb] = ne
    return nb


@njit(cache=True, nogil=True)
def radix_directory(ukeys: np.ndarray, prefix: int, shift: int, directory: np.ndarray) -> int:
    """The bucket table's radix directory of sorted keys: directory[d] = the first key
    whose top bits after the first ``prefix`` (the part's bits, the same in every key of
    a part of the table), ``(u << prefix) >> shift`` with u the key in signed order, are
    >= d, for every d (the last entry: the number of keys). One pass over the keys,
    where numpy needed the top bits of every key and a bincount beside them (~70 MB at
    1M x 16). Returns the most keys under one d."""
    n = ukeys.shape[0]
    d = 0
    widest = 0
    for j in range(n):
        top = np.int64(((np.uint64(ukeys[j]) ^ np.uint64(0x8000000000000000))
                        << np.uint64(prefix)) >> np.uint64(shift))
        while d <= top:
            directory[d] = j
            if d and j - directory[d - 1] > widest:
                widest = j - directory[d - 1]
            d += 1
    while d < directory.shape[0]:
        directory[d] = n
        if d and n - directory[d - 1] > widest:
            widest = n - directory[d - 1]
        d += 1
    return widest


@intrinsic
def _address(typingctx, addr):  # type: ignore[no-untyped-def]
    """The pointer at an address given as an int64 (for :func:`numba.carray` views of
    the bucket table's parts, whose arrays their ``BucketTable`` keeps alive)."""
    sig = types.voidptr(types.int64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


# the parts of the bucket table, one row each of ``recall.lsh.buckets.BucketTable.desc``:
# [ukeys address, keys, starts address, slots address, entries, directory address,
# cells, shift]; offsets (starts, directory) and slots are int32
@njit(cache=True, nogil=True, inline="always")
def part_ukeys(parts: np.ndarray, p: int) -> np.ndarray:
    return carray(_address(parts[p, 0]), parts[p, 1], np.int64)


@njit(cache=True, nogil=True, inline="always")
def part_starts(parts: np.ndarray, p: int) -> np.ndarray:
    return carray(_address(parts[p, 2]), parts[p, 1] + 1, np.int32)


@njit(cache=True, nogil=True, inline="always")
def part_slots(parts: np.ndarray, p: int) -> np.ndarray:
    return carray(_address(parts[p, 3]), parts[p, 4], np.int32)


@njit(cache=True, nogil=True, inline="always")
def part_directory(parts: np.ndarray, p: int) -> np.ndarray:
    return carray(_address(parts[p, 5]), parts[p, 6], np.int32)
