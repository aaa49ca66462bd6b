"""Per-slot arrays that grow without a copy: each is a view of the first rows of a
reservation of address space far bigger than needed (an anonymous ``MAP_NORESERVE``
mapping), so growing is a longer view of the same memory. Untouched pages of a mapping
are neither resident nor committed: the reservation costs address space only.

Why: growing a numpy array allocates the new size and copies the old rows, so both are
resident at once. The index's vector matrix grows by a quarter as a catalogue streams in
through the ``items`` topic: at ~850k x 64 that held 86 MB of old rows beside the new
matrix (+~100 MB of the worker's peak, with the per-slot masks). The old views stay
valid (the same memory), so a reader holding one (a search in flight) is never left with
freed memory.
"""

from __future__ import annotations

import mmap

import numpy as np

#: rows reserved at least (address space, not memory): 16M rows, 2 GiB for a matrix of
#: 64 float16 (so a 1M catalogue never copies); a reservation outgrown is replaced by
#: one GROWTH times the rows needed, copying the rows once
MIN_ROWS = 1 << 24
GROWTH = 4


class Reserved:
    """The growable per-slot arrays of one index, by name: :meth:`grow` hands out longer
    views. The reservations live as long as any view of them."""

    def __init__(self) -> None:
        self._full: dict[str, np.ndarray] = {}

    def grow(self, name: str, old: np.ndarray, rows: int, dtype: type,
             tail: tuple[int, ...] = ()) -> np.ndarray:
        """An array of ``rows`` rows: ``old``'s rows, then zeros. A view of the same
        reservation as ``old`` while it has room (no copy), else of a new one (the rows
        copied)."""
        full = self._full.get(name)
        if full is None or len(full) < rows or not np.may_share_memory(full, old):
            full = _reserve_what_fits(rows, dtype, tail)
            full[: len(old)] = old
            self._full[name] = full
        return full[:rows]

    def hand_over(self, names: tuple[str, ...]) -> Reserved:
        """A new owner of the named reservations (:meth:`LSHIndex.relayout`: the same
        arrays move to the new index)."""
        new = Reserved()
        new._full = {n: self._full[n] for n in names if n in self._full}
        return new


def _reserve_what_fits(rows: int, dtype: type, tail: tuple[int, ...]) -> np.ndarray:
    """The largest of MIN_ROWS, ``rows * GROWTH`` or ``rows`` rows the system grants.
    Why not only the first: under ``vm.overcommit_memory=2`` (strict accounting, found on
    some hardened hosts and containers) the kernel ignores ``MAP_NORESERVE`` and counts a
    whole reservation against the commit limit, so 2 GiB of address space per matrix can
    be refused. The array then grows by copies again (as before reservations), rather
    than the worker failing to start."""
    sizes = sorted({max(rows * GROWTH, MIN_ROWS), rows * GROWTH, rows}, reverse=True)
    for size in sizes[:-1]:
        try:
            return reserve(size, dtype, tail)
        except OSError:  # ENOMEM: address space not granted under strict accounting
            continue
    return reserve(sizes[-1], dtype, tail)


def reserve(rows: int, dtype: type, tail: tuple[int, ...] = ()) -> np.ndarray:
    """A zero array of shape (rows, *tail) in fresh address space, with huge pages
    advised where the kernel leaves that to the program (as numpy advises for its own big
    arrays: fewer TLB misses on random row reads). Page aligned: a numpy array starts 16
    bytes into its page (the allocator's header), so each 128-byte row of 64 float16
    spanned three cache lines instead of two, and the re-rank, which reads rows at
    random, waited on a third line per row (4,352 rows at 1M: ~81 -> ~63 us)."""
    nbytes = rows * int(np.prod(tail, dtype=np.int64)) * np.dtype(dtype).itemsize
    mm = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                   | getattr(mmap, "MAP_NORESERVE", 0))
    if hasattr(mmap, "MADV_HUGEPAGE") and nbytes >= 1 << 22:
        mm.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(mm, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize
                         ).reshape((rows, *tail))
