"""The index's bucket table: sorted unique keys, CSR offsets into a slot array, and a
radix directory for vectorised lookups. Immutable: a merge builds a new one."""

from __future__ import annotations

import math

import numpy as np

from recall import kernels


def offset_dtype(n: int) -> type:
    """int32 for offsets into arrays of up to n entries where they fit, else int64."""
    return np.int32 if n < 2**31 - 1 else np.int64


class SortedBuckets:
    """Immutable bucket table: sorted unique keys, CSR offsets into a slot array, and a
    radix directory on the keys' top bits (keys are uniform hashes), so looking up many
    probes costs a few vectorised gathers instead of cache-missing binary searches."""

    def __init__(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """keys: sorted int64 entry keys; slots: int32 slot of each entry."""
        if len(slots):
            first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            self._set(keys[first], np.r_[first, len(slots)].astype(np.int64), slots)
        else:
            self._set(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64), slots)

    @classmethod
    def from_csr(cls, ukeys: np.ndarray, starts: np.ndarray,
                 slots: np.ndarray) -> SortedBuckets:
        self = cls.__new__(cls)
        self._set(ukeys, starts, slots)
        return self

    def _set(self, ukeys: np.ndarray, starts: np.ndarray, slots: np.ndarray) -> None:
        # offsets as int32 while they fit (below 2**31 entries: 134M items at L = 16):
        # half the memory of int64 for starts and directory (~30 MB at 1M x 16)
        self.ukeys, self.starts, self.slots = ukeys, starts.astype(offset_dtype(len(slots)),
                                                                   copy=False), slots
        self.size = len(slots)
        n_keys = len(self.ukeys)
        self.bits = max(1, min(30, math.ceil(math.log2(max(n_keys, 2))) - 1))
        self.shift = np.uint64(64 - self.bits)
        # directory[d] = first key whose top bits (in signed order) are >= d: one
        # compiled pass over the sorted keys (their top bits are sorted too)
        self.directory = np.zeros(2**self.bits + 1, dtype=offset_dtype(n_keys))
        widest = (kernels.radix_directory(self.ukeys, int(self.shift), self.directory)
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
        """A new table: entries where ``keep`` (None = all) plus sorted new entries, each
        appended at the end of its bucket; buckets left empty go. One compiled pass over
        both (:func:`recall.buildkernels.merge_buckets`)."""
        kept = len(self.slots) if keep is None else int(np.count_nonzero(keep))
        m = len(new_keys)
        out_keys = np.empty(len(self.ukeys) + m, dtype=np.int64)
        # offsets written in the table's own dtype (int32 while they fit): written as
        # int64 and then converted, a merge at 1M x 16 held both (+~8 bytes a bucket)
        out_starts = np.empty(len(out_keys) + 1, dtype=offset_dtype(kept + m))
        out_slots = np.empty(kept + m, dtype=self.slots.dtype)
        nb = kernels.merge_buckets(
            self.ukeys, self.starts, self.slots,
            keep if keep is not None else np.ones(0, dtype=bool), keep is not None,
            np.ascontiguousarray(new_keys, dtype=np.int64),
            np.ascontiguousarray(new_slots, dtype=self.slots.dtype),
            out_keys, out_starts, out_slots)
        return SortedBuckets.from_csr(out_keys[:nb], out_starts[: nb + 1], out_slots)

    def lookup(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) entry ranges of each probe key (empty where the key is absent).

        Each directory cell holds ~2 keys, so one (probes x widest cell) comparison
        finds every probe at once, without a binary-search loop.
        """
        d = (probes.view(np.uint64) ^ np.uint64(1 << 63)) >> self.shift
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
