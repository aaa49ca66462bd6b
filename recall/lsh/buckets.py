"""The index's bucket table: :data:`PARTS` parts by the keys' top bits, each sorted
unique keys, CSR offsets into a slot array and a radix directory for vectorised
lookups. Immutable: a merge builds new parts, one at a time, each swapped in before the
next is built (:class:`BucketTable`), so it holds one part's old and new arrays at once,
not two whole tables (+150 MB at 1M x 16, the peak of a worker whose catalogue streams
in)."""

from __future__ import annotations

import math

import numpy as np

from recall import kernels
from recall.lsh.reserve import reserve

#: bits of a key (its top bits in signed order) that pick its part of the table, and
#: the parts: a merge's transient is one part's arrays (~6-9 MB at 1M x 16)
PART_BITS = 4
PARTS = 1 << PART_BITS
#: entries a part of the table holds at most, plus one: its offsets are int32 and the
#: last one is the part's entry count (a part holds ~1/16 of the entries: ~2 billion
#: items at L = 16)
OFFSET_LIMIT = 2**31 - 1
_SIGN = np.uint64(1 << 63)
#: keys :func:`part_of` takes at once (its temporaries: 16 bytes a key)
_PART_BLOCK = 1 << 16


def part_of(keys: np.ndarray) -> np.ndarray:
    """The part (uint8) of each int64 key, a block of keys at a time: at once, the
    uint64 temporaries were twice the keys (~15 MB for a merge of 60k items x 16, left
    in the merge thread's arena until the trim after the merge)."""
    out = np.empty(keys.shape, dtype=np.uint8)
    flat, into = np.ascontiguousarray(keys).reshape(-1), out.reshape(-1)
    for i in range(0, len(flat), _PART_BLOCK):
        into[i:i + _PART_BLOCK] = (flat[i:i + _PART_BLOCK].view(np.uint64) ^ _SIGN
                                   ) >> np.uint64(64 - PART_BITS)
    return out


def cell_bits(entries: int) -> int:
    """Bits of the cells a table of ``entries`` is built in (``LSHIndex.build``), by its
    keys' top bits: ~16 entries per cell, and at least a cell per part."""
    return max(PART_BITS, min(30, math.ceil(math.log2(max(entries, 2))) - 4))


def part_first_key(part: int) -> int:
    """The smallest int64 key of a part (keys sort in signed order, parts with them)."""
    return int(np.array([(part << (64 - PART_BITS)) ^ (1 << 63)], dtype=np.uint64
                        ).view(np.int64)[0])


class SortedBuckets:
    """One part of the bucket table, immutable: sorted unique keys, CSR offsets into a
    slot array, and a radix directory on the keys' top bits after the part's (keys are
    uniform hashes), so looking up many probes costs a few vectorised gathers instead
    of cache-missing binary searches."""

    def __init__(self, keys: np.ndarray, slots: np.ndarray, prefix: int = PART_BITS) -> None:
        """keys: sorted int64 entry keys, all of one part; slots: int32 slot of each
        entry; prefix: the bits that pick the part (0: a table of one part)."""
        if len(slots):
            first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            self._set(keys[first], np.r_[first, len(slots)].astype(np.int64), slots, prefix)
        else:
            self._set(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64), slots,
                      prefix)

    @classmethod
    def from_csr(cls, ukeys: np.ndarray, starts: np.ndarray, slots: np.ndarray,
                 prefix: int = PART_BITS) -> SortedBuckets:
        self = cls.__new__(cls)
        self._set(ukeys, starts, slots, prefix)
        return self

    def _set(self, ukeys: np.ndarray, starts: np.ndarray, slots: np.ndarray,
             prefix: int) -> None:
        # offsets as int32 (a part's entries: below 2**31, 2 billion items at L = 16):
        # half the memory of int64 for starts and directory (~30 MB at 1M x 16), and
        # the one type the search kernel reads
        if len(slots) >= OFFSET_LIMIT:
            raise ValueError(f"a part of the bucket table holds {len(slots)} entries; at "
                             f"most {OFFSET_LIMIT - 1} fit its int32 offsets")
        self.ukeys, self.starts, self.slots = ukeys, starts.astype(np.int32, copy=False), slots
        self.prefix = prefix
        self.size = len(slots)
        n_keys = len(self.ukeys)
        self.bits = max(1, min(30, math.ceil(math.log2(max(n_keys, 2))) - 1))
        self.shift = 64 - self.bits
        # directory[d] = first key whose top bits after the part's (in signed order) are
        # >= d: one compiled pass over the sorted keys (their top bits are sorted too)
        self.directory = reserve(2**self.bits + 1, np.int32)  # zeros, unmapped when freed
        widest = (kernels.radix_directory(self.ukeys, prefix, self.shift, self.directory)
                  if n_keys else 0)
        self._ramp = np.arange(max(widest, 1), dtype=np.int64)

    def nbytes(self) -> int:
        return int(self.slots.nbytes + self.ukeys.nbytes + self.starts.nbytes
                   + self.directory.nbytes + self._ramp.nbytes)

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, slots) of every entry, keys sorted (a temporary expansion)."""
        return np.repeat(self.ukeys, np.diff(self.starts)), self.slots

    def merged(self, keep: np.ndarray | None, new_keys: np.ndarray,
               new_slots: np.ndarray) -> SortedBuckets:
        """A new part: entries where ``keep`` (None = all) plus sorted new entries (of
        this part), each appended at the end of its bucket; buckets left empty go. One
        compiled pass over both (:func:`recall.buildkernels.merge_buckets`)."""
        kept = len(self.slots) if keep is None else int(np.count_nonzero(keep))
        m = len(new_keys)
        if kept + m >= OFFSET_LIMIT:
            raise ValueError(f"a part of the bucket table would hold {kept + m} entries; "
                             f"at most {OFFSET_LIMIT - 1} fit its int32 offsets")
        # each array in a mapping of its own (not malloc's heap): unmapped as soon as the
        # part is replaced. From the heap, the merge threads' arenas kept every replaced
        # part resident, a hole the next (bigger) part did not fit, until the trim after
        # the whole merge: +60-80 MB at 0.9-1M x 16, the peak of a worker whose catalogue
        # streams in. Pages never written (room for keys that were not new) stay
        # unmapped too, so the arrays are views of the written rows, not shrunk copies.
        out_keys = reserve(len(self.ukeys) + m, np.int64)
        # offsets written as int32 (written as int64 and then converted, a merge at
        # 1M x 16 held both: +~8 bytes a bucket)
        out_starts = reserve(len(out_keys) + 1, np.int32)
        out_slots = reserve(kept + m, self.slots.dtype)
        nb = kernels.merge_buckets(
            self.ukeys, self.starts, self.slots,
            keep if keep is not None else np.ones(0, dtype=bool), keep is not None,
            np.ascontiguousarray(new_keys, dtype=np.int64),
            np.ascontiguousarray(new_slots, dtype=self.slots.dtype),
            out_keys, out_starts, out_slots)
        return SortedBuckets.from_csr(out_keys[:nb], out_starts[: nb + 1], out_slots,
                                      self.prefix)

    def lookup(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) entry ranges of each probe key (empty where the key is absent).

        Each directory cell holds ~2 keys, so one (probes x widest cell) comparison
        finds every probe at once, without a binary-search loop.
        """
        d = ((probes.view(np.uint64) ^ _SIGN) << np.uint64(self.prefix)) >> np.uint64(
            self.shift)
        lo = self.directory[d]
        width = self.directory[d + 1] - lo
        m = int(width.max()) if len(width) else 0
        if m == 0:
            zero = np.zeros(len(probes), dtype=np.int64)
            return zero, zero
        pos = lo[:, None] + self._ramp[:m]
        np.minimum(pos, len(self.ukeys) - 1, out=pos)
        match = self.ukeys[pos] == probes[:, None]
        match &= self._ramp[:m] < width[:, None]
        at = lo + match.argmax(axis=1)
        found = match.any(axis=1)
        start = np.where(found, self.starts[at], 0)
        end = np.where(found, self.starts[np.minimum(at + 1, len(self.ukeys))], 0)
        return start, end


#: columns of :attr:`BucketTable.desc`, one row per part: what the search kernel reads
#: (addresses of the part's arrays, their lengths, the directory's shift)
DESC_COLUMNS = ("ukeys", "keys", "starts", "slots", "entries", "directory", "cells", "shift")


class BucketTable:
    """The index's bucket table: :data:`PARTS` :class:`SortedBuckets` by key range,
    immutable. A merge replaces one part at a time (:meth:`with_part`); ``fresh`` parts
    (the first ``fresh``) were merged already while the rest wait: their entries hold
    every pending item and no stale slot, so a search reads neither pending buckets nor
    the stale mask for keys there.

    ``desc`` gives the compiled search the parts in one small array (one argument: a
    tuple of 4 x 16 arrays cost each search call ~7 us of numba's argument unboxing):
    the addresses of the parts' arrays, which this object keeps alive; a search holds
    the table it read for as long as it runs."""

    def __init__(self, parts: tuple[SortedBuckets, ...], fresh: int = 0) -> None:
        if len(parts) != PARTS or not 0 <= fresh <= PARTS:
            raise ValueError(f"a table has {PARTS} parts, got {len(parts)}, fresh {fresh}")
        self.parts, self.fresh = parts, fresh
        self.size = sum(p.size for p in parts)
        self.keys = sum(len(p.ukeys) for p in parts)
        self.desc = np.array([[p.ukeys.ctypes.data, len(p.ukeys), p.starts.ctypes.data,
                               p.slots.ctypes.data, len(p.slots), p.directory.ctypes.data,
                               len(p.directory), p.shift] for p in parts], dtype=np.int64)

    @classmethod
    def empty(cls) -> BucketTable:
        return cls(tuple(SortedBuckets(np.zeros(0, dtype=np.int64),
                                       np.zeros(0, dtype=np.int32)) for _ in range(PARTS)))

    def with_part(self, part: int, buckets: SortedBuckets, fresh: int) -> BucketTable:
        """This table with one part replaced (its old arrays go with this table)."""
        parts = list(self.parts)
        parts[part] = buckets
        return BucketTable(tuple(parts), fresh)

    def with_fresh(self, fresh: int) -> BucketTable:
        return BucketTable(self.parts, fresh)

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.parts) + self.desc.nbytes

    def lookup(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(part, lo, hi) of each probe key: its part and the [lo, hi) entry range there
        (empty where the key is absent). The numpy reference of the compiled lookup."""
        part = part_of(probes)
        lo = np.zeros(len(probes), dtype=np.int64)
        hi = np.zeros(len(probes), dtype=np.int64)
        for p in np.unique(part).tolist():
            rows = np.flatnonzero(part == p)
            lo[rows], hi[rows] = self.parts[p].lookup(probes[rows])
        return part, lo, hi
