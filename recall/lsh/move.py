"""A move to a new hash layout a slice of the catalogue at a time, searches answering
from both layouts meanwhile (the worker's re-picks: ``stream/items.py``).

Why not :meth:`LSHIndex.relayout`: it builds the whole new bucket table beside the one
served, since the old table answers every search until the new one is complete. At 1M x
64 that is ~100-150 MB more for the seconds of the build, and it set the worker's peak
(615.8 MB in `recall bench watch-live`, against ~540 MB served). Here the items go over in
slices of ~:data:`MOVE_ENTRIES` table entries: a slice is merged into the new table (part
by part, as any merge), then dropped from the old one (the same), so the two tables
together hold about one table's entries, plus one slice's keys and one part's rewrite.

Every item stays findable throughout: a slice leaves the old table only once the new
one holds it whole. A search reads the old layout, then the new (``_successor``), and
keeps the best k of the union (:func:`recall.lsh.search.union_results`; an item found in
both, between the two merges of its slice, has the same exact score in both and is
kept once). Reading the old first matters to a search in another thread (the recall
monitor's): an item the old layout no longer had was in the new one before. Writes to
either index are refused until the move is done (the worker holds its item writers back,
as for a relayout), and a move that fails or is cancelled puts the slices moved so far
back into the old table, which then serves alone, as before the move.

The price: each slice rewrites both tables, so the move's merges read ~slices times a
table where a build reads it once; but a build hashes every item once per range of
parts it scatters (4 at 1M x 16), a move once, and at 1M x 16 (16 slices) the move took
6.3 s against the build's 8.9 (:data:`MOVE_ENTRIES`). Searches meanwhile read both
layouts: about twice their cost, for those seconds.
"""

from __future__ import annotations

import math

import numpy as np

from recall.lsh.buckets import PARTS
from recall.lsh.index import LSHIndex, _MergeJob
from recall.lsh.params import LSHParams

#: table entries (items x L) moved per slice: its keys (8 bytes an entry) and parts (1)
#: are held while the slice is merged, and its entries are in both tables until the old
#: one drops them. 1M: 16 slices at 1M x 16. A move from pstable k=10 L=16 to the same
#: layout reseeded at 1M x 64 (``python -m devtools.bench_move``, one run each) peaked
#: +70.7 MB over the RSS before it in 5.3 s with 2M, +53.8 MB in 6.3 s with 1M, +44.4 MB
#: in 8.2 s with 500k; the table built whole beside the old one, +123.1 MB in 8.9 s
MOVE_ENTRIES = 1_000_000
#: bytes of an entry's slot in a table (int32)
_SLOT_BYTES = 4
#: the merges' scratch below the mmap threshold (their parts' keys and slots, sorts),
#: kept by malloc's arenas until the trim after the move: a move of 50,000 items in one
#: slice peaked 7.7-7.8 MB above the whole build of the same table (+21.5-21.6 against
#: +13.8-13.9 MB, ``python -m devtools.bench_move --items 50000``, two runs each)
_SCRATCH_BYTES = 12 * 2**20


def slice_items(params: LSHParams, entries: int = MOVE_ENTRIES) -> int:
    """Items per slice of a move to ``params``."""
    return max(1, entries // params.L)


async def move_off_loop(old: LSHIndex, params: LSHParams,
                        entries: int = MOVE_ENTRIES) -> LSHIndex:
    """The index with ``params`` that ``old``'s items moved to, a slice at a time (each
    merge's parts built in a thread, swapped in on the caller's event loop, searches on
    ``old`` going on and answering from both layouts). Afterwards serve the new index
    and never write ``old`` again (it shares the vectors and ids); until then neither
    takes writes. On an error or a cancellation the moved slices go back into ``old``,
    which serves alone again, and the error is raised."""
    await old.merge_off_loop(force=True)  # pending items and stale entries first
    new = old._heir(params)
    live = np.flatnonzero(old._alive[: old._high])
    step = slice_items(params, entries)
    old._successor = new
    new._merging = old._merging = True  # neither takes writes during the move
    try:
        for start in range(0, len(live), step):
            chunk = live[start:start + step]
            # into the new table (its keys hashed from the stored vectors in the first
            # part's thread), then out of the old one: never in neither
            await new._merge_parts_off_loop(_index_job(chunk, params))
            old._unindex(chunk)
            await old._merge_parts_off_loop(old._merge_job())
    except BaseException:
        _put_back(old)
        raise
    finally:
        new._merging = old._merging = False
    old._moved = True
    return new


def _index_job(slots: np.ndarray, params: LSHParams) -> _MergeJob:
    """A merge that indexes ``slots`` (their keys hashed from the stored vectors)."""
    return _MergeJob(slots.astype(np.int64), (np.zeros(0, dtype=np.int64),
                                              np.zeros((0, params.L), dtype=np.int64)),
                     False)


def _put_back(old: LSHIndex) -> None:
    """A move stopped half way: its slices back into ``old``'s table (here, on the event
    loop: an error path), ``old`` alone again. Its items not in its table are exactly
    those moved out (it had no pending item nor stale entry when the move began)."""
    old._merging = False
    if old._job is not None:  # a slice's drop stopped between two parts
        old._run_merge(old._job)
    high = old._high
    back = np.flatnonzero(old._alive[:high] & ~old._in_main[:high])
    if len(back):
        old._run_merge(_index_job(back, old.params))
    old._successor = None


def move_bytes(index: LSHIndex, params: LSHParams, table_delta: int | None = None,
               entries: int = MOVE_ENTRIES) -> int:
    """Bytes :func:`move_off_loop` to ``params`` holds beside ``index`` at its peak
    (what a worker's memory guard weighs, as :meth:`LSHIndex.relayout_bytes` for a
    relayout): the two tables' excess over the old one, a slice's keys and parts (9
    bytes an entry) while they are merged, a part being rewritten (one merge runs at a
    time; 2/PARTS of the larger table counted: parts are uneven), the new index's
    per-slot arrays and the merges' scratch (:data:`_SCRATCH_BYTES`). ``table_delta``:
    the new table's bytes less the old one's when known (the tuner measured both on the
    same items), else from the served table's bytes per entry.

    The tables: each entry's slot (4 bytes) is in one table, or in both for a slice;
    the rest of a table (its unique keys, offsets, directory) does not shrink in
    proportion to its items: a table holding part of the items has at most the whole
    one's keys, and more than that part of them (buckets fill). So with f of the items
    moved and a slice of s in both, the two tables exceed the old one by at most 4 bytes
    x (the new entries less the old ones gone) plus the new table's keys: largest at the
    last slice when the new table has more entries, else at the first. (At 1M x 16 the
    two halves' keys came to ~20 MB more than one table's: a move to the same layout
    peaked +54 MB, of which 51 MB in the merges; this bound is ~70 MB.)"""
    old_table = index._buckets.nbytes()
    new_table, own = index._heir_bytes(params, table_delta)
    new_table = max(new_table, 0)
    old_entries, new_entries = index._buckets.size, len(index) * params.L
    s = min(slice_items(params, entries), len(index)) / max(len(index), 1)
    new_keys = max(new_table - _SLOT_BYTES * new_entries, 0)
    tables = _SLOT_BYTES * max(new_entries - old_entries * (1 - s), new_entries * s) + new_keys
    keys = s * new_entries * 9
    rewrite = 2 * max(old_table, new_table) // PARTS
    return math.ceil(tables + keys + rewrite + own + _SCRATCH_BYTES)
