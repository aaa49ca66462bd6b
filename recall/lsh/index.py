"""The incremental in-memory LSH index: upserts and deletes without rebuilds, batched
search with exact re-rank.

Layout: normalised vectors, stored as float16 (:data:`VECTOR_DTYPE`), in slots of a
matrix that grows in place (:mod:`recall.lsh.reserve`), ids <-> slots in a compact store
that also keeps the free-list (:mod:`recall.lsh.ids`), and one sorted bucket table over
all tables (:class:`BucketTable`, in 16 parts by key range; keys are salted per table,
so one lookup serves every probe). Small upserts go to the pending buckets
(:class:`PendingBuckets`: key -> slots in arrays the compiled search reads) merged into
the sorted table in amortised batches, one part at a time; updated or removed slots are
masked out of the sorted table until the next merge. Searches (:mod:`recall.lsh.search`)
gather the probed buckets and re-rank the candidates by exact cosine.

Threads: one thread owns the index (adds, removes and searches run there). In
``merge="deferred"`` mode the heavy part of a merge runs in another thread
(:meth:`LSHIndex.merge_off_loop`; the compiled merge and numpy's sorts release the GIL),
a part at a time, each swapped in by the owner before the next is built, while searches
go on against the table as it is between parts; adds and removes are refused until the
last part is in, so the owner awaits the merge before its next write.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import BinaryIO, Literal

import numpy as np

from recall import kernels
from recall.lsh.buckets import (
    OFFSET_LIMIT,
    PART_BITS,
    PARTS,
    BucketTable,
    SortedBuckets,
    cell_bits,
    part_of,
)
from recall.lsh.hashing import Hasher
from recall.lsh.ids import IdStore
from recall.lsh.params import VECTOR_DTYPE, LSHParams, normalize
from recall.lsh.pending import PendingBuckets
from recall.lsh.reserve import Reserved
from recall.lsh.search import SearchMixin

MergeMode = Literal["inline", "deferred"]
#: per-slot arrays each index keeps for itself, beside the vectors, ``_alive`` and the
#: id store (which :meth:`LSHIndex.relayout` hands over): whether a slot is in the
#: sorted table, whether in the pending buckets, its stamp, and the search kernels'
#: scratch mark
_OWN_PER_SLOT: tuple[tuple[str, type], ...] = (
    ("_in_main", bool), ("_is_pending", bool), ("_stamp", np.int32), ("_mark", np.uint8))


class LSHIndex(SearchMixin):
    """Incremental LSH index over normalised float32 vectors, keyed by string ids.

    ``merge``: ``"inline"`` merges pending items inside :meth:`add` / :meth:`remove`
    when due (batch jobs, benchmarks); ``"deferred"`` never does, the owner calls
    :meth:`merge_off_loop` when :meth:`merge_due` (the worker: no small write holds its
    event loop for a merge, ~0.45 s at 1M items). In both modes one ``add`` of at least
    the merge threshold is sorted straight into the table (a bulk load, in a thread).

    ``probes`` (probes per table, T) and ``cap`` (items read per probed bucket, 0 = all)
    can be set at any time, e.g. by a recall controller: they change the next search
    only, the buckets stay as they are.
    """

    #: merge when pending + stale slots reach max(MERGE_MIN, items / MERGE_RATIO), a batch
    #: that large going straight in; 1/64: pending items (~500 B each) set a merge's peak
    MERGE_MIN = 4096
    MERGE_RATIO = 64

    def __init__(self, params: LSHParams, *, merge: MergeMode = "inline") -> None:
        if merge not in ("inline", "deferred"):
            raise ValueError(f"merge must be 'inline' or 'deferred', got {merge!r}")
        self.params = params
        self.merge_mode: MergeMode = merge
        self.hasher = Hasher(params)
        self.dim = params.dim
        self._capacity = 0
        self._vecs = np.zeros((0, self.dim), dtype=VECTOR_DTYPE)
        self._alive = np.zeros(0, dtype=bool)
        self._in_main = np.zeros(0, dtype=bool)
        self._is_pending = np.zeros(0, dtype=bool)
        self._stamp = np.zeros(0, dtype=np.int32)
        self._mark = np.zeros(0, dtype=np.uint8)  # the kernels' per-slot scratch (zeros)
        self._seen = np.zeros(0, dtype=np.uint64)  # their bit per slot (zeros)
        self._reserved = Reserved()  # the per-slot arrays grow in place (no copy)
        self._ids = IdStore()  # ids <-> slots, and which slots are free
        self._buckets = BucketTable.empty()
        self._pending = PendingBuckets()  # bucket key -> slots, since the last merge
        # the slots in the pending buckets: their keys are hashed again from the stored
        # vectors when needed (a dict slot -> keys held ~300 bytes an item, ~19 MB at
        # 1M items with a merge's worth pending)
        self._n_pending = 0
        self._stale = 0  # slots whose entries in the sorted table are out of date
        self._merging = False  # a deferred merge is being built in another thread
        self._job: _MergeJob | None = None  # a merge begun: parts left to merge
        self._moved = False  # relayout() handed the arrays to a new index
        self._successor: LSHIndex | None = None  # a move's new index: recall.lsh.move
        self.merges = 0

    # ------------------------------------------------------------------ basics
    @property
    def probes(self) -> int:
        """Probes per table (T) of the next search; settable at run time."""
        return self.params.T

    @probes.setter
    def probes(self, value: int) -> None:
        self.params = replace(self.params, T=value)  # validated by LSHParams

    @property
    def vote(self) -> int:
        """Tables a candidate must be found in to be re-ranked (1 = any); settable."""
        return self.params.vote

    @vote.setter
    def vote(self, value: int) -> None:
        self.params = replace(self.params, vote=value)

    @property
    def cap(self) -> int:
        """Items read per probed bucket (0 = all); settable at run time."""
        return self.params.cap

    @cap.setter
    def cap(self, value: int) -> None:
        self.params = replace(self.params, cap=value)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    @property
    def _high(self) -> int:
        """Slots ever handed out (high-water mark): every item's slot is below it."""
        return self._ids.high

    def ids(self) -> list[str]:
        """Every item id (a new str each: ~64 MB at 1M ids; :meth:`sample_vectors` draws
        a sample without them)."""
        return self._ids.ids()

    def sample_vectors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The normalised float32 vectors of n items drawn without replacement (every
        item if there are fewer), in slot order: what a re-tune measures."""
        live = np.flatnonzero(self._alive[: self._high])
        pick = np.sort(rng.choice(len(live), size=min(n, len(live)), replace=False))
        return self._vecs[live[pick]].astype(np.float32)

    def write_vectors(self, out: BinaryIO, rows: int = 65_536) -> int:
        """Write the stored vectors (normalised, :data:`VECTOR_DTYPE`) of every item, in
        slot order, raw to ``out``, ``rows`` slots at a time; returns how many. Copies one
        block at a time: a worker hands its whole catalogue to a re-tune in a child
        process this way without a second matrix in its own memory (file pages are not
        its RSS). Items changed meanwhile may be written old or new."""
        written, high = 0, self._high
        for start in range(0, high, rows):
            block = self._vecs[start:min(start + rows, high)]
            live = block[self._alive[start:start + len(block)]]
            out.write(np.ascontiguousarray(live, dtype=VECTOR_DTYPE).tobytes())
            written += len(live)
        return written

    def stats(self) -> dict[str, int]:
        return {
            "items": len(self),
            "capacity": self._capacity,
            "sorted_entries": self._buckets.size,
            "buckets": self._buckets.keys,
            "pending_items": self._n_pending,
            "stale_items": self._stale,
            "merges": self.merges,
        }

    def nbytes(self) -> int:
        """Bytes held in numpy arrays (vectors, sorted bucket table, masks, ids)."""
        arrays = (self._vecs, self._alive, self._in_main, self._stamp, self._mark,
                  self._seen)
        return (int(sum(a.nbytes for a in arrays)) + self._buckets.nbytes()
                + self._ids.nbytes() + self._pending.nbytes())

    def _check_ids(self, ids: Sequence[str]) -> list[str]:
        if isinstance(ids, (str, bytes)):
            raise ValueError("ids must be a sequence of strings, not a single string")
        ids = list(ids)
        for item_id in ids:
            if not isinstance(item_id, str):
                raise ValueError(f"item ids must be strings, got {type(item_id).__name__}")
        return ids

    def _check_writable(self) -> None:
        if self._moved or self._successor is not None:
            raise RuntimeError("this index's items moved to a new layout (relayout()): "
                               "write to the new index")
        if self._merging:
            raise RuntimeError("the index is merging in another thread: await "
                               "merge_off_loop() before writing")
        if self._job is not None:  # a merge stopped half way (an error): finish it here
            self._run_merge(self._job)

    def reserve(self, n: int) -> None:
        """Room for n items in all (e.g. a catalogue about to be loaded): the id store's
        tables sized once instead of doubling on the way."""
        self._grow(n, spare=False)

    def _grow(self, needed: int, spare: bool = True) -> None:
        """Room for ``needed`` slots: the vector matrix and per-slot arrays are longer
        views of their reservations (:mod:`recall.lsh.reserve`: no copy, so no moment
        holding an old and a new matrix, +~100 MB at ~850k x 64 when it grew by a
        quarter)."""
        if needed <= self._capacity:
            return
        new = max(needed, self._capacity + self._capacity // 4, 1024) if spare else needed
        grow = self._reserved.grow
        self._vecs = grow("_vecs", self._vecs, new, VECTOR_DTYPE, (self.dim,))
        for name, dtype in (("_alive", bool), *_OWN_PER_SLOT):
            setattr(self, name, grow(name, getattr(self, name), new, dtype))
        # zeros between searches (the kernels clear what they set)
        self._seen = grow("_seen", self._seen, (new + 63) // 64, np.uint64)
        self._ids.reserve(new)
        self._capacity = new

    # ------------------------------------------------------------------ writes
    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Upsert one or many items; existing ids move to their new buckets. No rebuild."""
        self._check_writable()
        ids = self._check_ids(ids)
        vecs = np.asarray(vectors)
        if vecs.ndim == 1 and len(ids) == 1:
            vecs = vecs[None, :]
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vecs.shape}")
        if vecs.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids but {vecs.shape[0]} vectors")
        if not ids:
            return
        vn = _normalize_blocks(vecs)
        if len(set(ids)) != len(ids):  # the last occurrence of an id wins
            last = {item_id: i for i, item_id in enumerate(ids)}
            rows = np.fromiter(last.values(), dtype=np.intp, count=len(last))
            ids, vn = list(last), vn[rows]
        n = len(ids)
        slots, new = self._ids.add(ids)
        self._grow(self._high)
        if not new.all():
            self._unindex(slots[~new])
        self._vecs[slots] = vn
        self._alive[slots] = True
        keys = self.hasher.keys(self._vecs[slots])  # what build() hashes: the stored rows
        inline = self.merge_mode == "inline"
        if n >= self._merge_threshold():
            self._merge_now(slots, keys)
            return
        self._pending.add(slots, keys)
        self._is_pending[slots] = True
        self._n_pending += n
        if inline and self.merge_due():
            self._merge_now()

    def stage(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Bulk load, part 1 (all items of an empty index at once, e.g. a worker loading a
        catalogue): store the vectors without indexing them; :meth:`build` then indexes
        every staged item in one pass. Searches do not see staged items until then; an id
        staged again keeps its last vector."""
        self._check_writable()
        if self._buckets.size or self._n_pending:
            raise RuntimeError("stage() loads an empty index; use add() on this one")
        ids = self._check_ids(ids)
        vecs = np.asarray(vectors)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(vecs) != len(ids):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dim}), got "
                             f"{vecs.shape}")
        if not ids:
            return
        vn = _normalize_blocks(vecs)
        slots, _ = self._ids.add(ids)  # a repeated id: the same slot
        self._grow(self._high)
        self._vecs[slots] = vn  # a repeated id: the last row wins (numpy assigns in order)
        self._alive[slots] = True

    def build(self) -> None:
        """Bulk load, part 2: index every staged item. Keys are hashed block by block:
        once to count the entries per cell of the keys' top bits, then once per range of
        the table's parts (:func:`_part_ranges`: half of the entries left, then less) to
        scatter that range's entries, each part into its own slot array, whose small
        cells are then sorted, the part's unique keys taken and copied out
        (:mod:`recall.kernels`). The table grows by its final arrays, a range at a time,
        beside the one a re-layout still serves, and a range's keys (8 bytes an entry)
        fit in what the table still lacks: the peak is the final table plus ~10-30 MB
        (the last range's keys, the cells' offsets). Building the whole table's slots
        and two ranges' keys and then cutting them into parts held ~30 MB more at 1M x
        16 (a re-pick landing at 1M: the new table beside the served one)."""
        self._check_writable()
        if self._buckets.size or self._n_pending:
            raise RuntimeError("build() indexes a staged load of an empty index")
        slots = np.flatnonzero(self._alive[: self._high])
        entries = len(slots) * self.params.L
        if not entries:
            return
        bits = cell_bits(entries)
        shift = 64 - bits
        blocks = [slots[i : i + _BUILD_BLOCK] for i in range(0, len(slots), _BUILD_BLOCK)]
        counts = np.zeros(2**bits, dtype=np.int64)
        for block in blocks:
            kernels.count_cells(self.hasher.keys(self._vecs[block]), shift, counts)
        per_part = 2 ** (bits - PART_BITS)  # cells per part: the keys' next bits
        by_part = counts.reshape(PARTS, per_part)
        totals = by_part.sum(axis=1)
        first = [0, *np.cumsum(totals).tolist()]  # each part's first entry, and the total
        widest = int(totals.max())
        if widest >= OFFSET_LIMIT:
            raise ValueError(f"a part of the bucket table would hold {widest} entries; at "
                             f"most {OFFSET_LIMIT - 1} fit its int32 offsets")
        # each part's cell offsets from its own first entry, int32 (a part's entries fit):
        # int64 offsets over the whole table and each range's part-relative copies of them
        # held 16 MB at the peak of a build at 1M x 16, these 4-6 MB
        cells = np.zeros((PARTS, per_part + 1), dtype=np.int32)
        np.cumsum(by_part, axis=1, dtype=np.int32, out=cells[:, 1:])
        del counts, by_part
        parts: list[SortedBuckets] = []
        for a, b in _part_ranges(first, _BUILD_RANGE):
            parts += self._build_parts(blocks, shift, cells, per_part, first, a, b)
        del cells
        self._buckets = BucketTable(tuple(parts))
        self._in_main[slots] = True
        self.merges += 1

    def _build_parts(self, blocks: list[np.ndarray], shift: int, cells: np.ndarray,
                     per_part: int, first: list[int], a: int, b: int) -> list[SortedBuckets]:
        """build()'s parts a..b-1: every item hashed once more, the entries of these
        parts' cells scattered (their keys into one buffer, each part's slots into an
        array of its own: a merge frees a part's arrays alone), each part's cells sorted
        and its unique keys copied out. The buffer goes when this returns."""
        buffer = np.empty(first[b] - first[a], dtype=np.int64)
        keys = [buffer[first[p] - first[a] : first[p + 1] - first[a]] for p in range(a, b)]
        slots = [np.empty(first[p + 1] - first[p], dtype=np.int32) for p in range(a, b)]
        pos = [cells[p, :-1].copy() for p in range(a, b)]  # (the next free entry of a cell)
        for block in blocks:
            block_keys = self.hasher.keys(self._vecs[block])
            for i, p in enumerate(range(a, b)):
                kernels.scatter_cells(block_keys, block, shift, p * per_part,
                                      (p + 1) * per_part, pos[i], keys[i], slots[i])
        parts = []
        for part_keys, part_slots, part_cells in zip(keys, slots, cells[a:b], strict=True):
            n_keys = kernels.finish_cells(part_keys, part_slots, part_cells)
            starts = np.empty(n_keys + 1, dtype=np.int32)
            kernels.unique_csr(part_keys, starts)  # its unique keys to part_keys[:n_keys]
            parts.append(SortedBuckets.from_csr(part_keys[:n_keys].copy(), starts, part_slots))
        return parts

    def relayout(self, params: LSHParams) -> LSHIndex:
        """A new index over this one's items with another hash layout, its table built
        whole beside this one's (the tuner; a worker moves a slice at a time:
        :mod:`recall.lsh.move`). It takes over this index's vectors, live-slot mask and id
        store (the same arrays: one copy of the catalogue, where reading the new version
        from Redis held two). Call it with no write in flight (searches may go on here);
        afterwards write the new index only: writes here raise."""
        new = self._heir(params)
        new.build()
        self._moved = True
        return new

    def _heir(self, params: LSHParams) -> LSHIndex:
        """An index with ``params`` over this one's items (the same arrays), no table."""
        self._check_writable()
        if params.dim != self.dim:
            raise ValueError(f"dimension {params.dim} is not this index's {self.dim}")
        new = LSHIndex(params, merge=self.merge_mode)
        n = new._capacity = self._capacity
        new._vecs, new._alive, new._ids = self._vecs, self._alive, self._ids
        new._reserved = self._reserved.hand_over(("_vecs", "_alive"))
        # its own state and search scratch: searches go on in this one meanwhile
        for name, dtype in _OWN_PER_SLOT:
            setattr(new, name, new._reserved.grow(name, np.zeros(0, dtype=dtype), n, dtype))
        new._seen = new._reserved.grow("_seen", new._seen, (n + 63) // 64, np.uint64)
        return new

    def relayout_bytes(self, params: LSHParams, table_delta: int | None = None) -> int:
        """Bytes :meth:`relayout` to ``params`` holds beside this index at its peak: the
        new bucket table, its per-slot arrays and :meth:`build`'s transient (a range's
        keys: 8 bytes an entry, at most ``_BUILD_RANGE`` of them or one byte an entry of
        the whole table; the cells' offsets and a range's running copy, 2 x 4 bytes a
        cell; a block's hashing). ``table_delta``: the new table's bytes less this one's
        when known (the tuner built both layouts on the same items); else this table's
        bytes per entry at the new entry count, or 16 (a key, an offset, a slot) with none."""
        entries = len(self) * params.L
        bits = cell_bits(entries)
        transient = (max(8 * min(entries, _BUILD_RANGE), entries) + 8 * (2**bits + PARTS)
                     + 8 * _BUILD_BLOCK * (params.L * params.k + 2 * params.dim))
        return int(sum(self._heir_bytes(params, table_delta)) + transient)

    def _heir_bytes(self, params: LSHParams, table_delta: int | None) -> tuple[int, int]:
        """(table, per-slot arrays): the bytes of an index over these items with ``params``
        (:meth:`_heir`) once its table is built, as :meth:`relayout_bytes` says."""
        per_entry = self._buckets.nbytes() / self._buckets.size if self._buckets.size else 16
        table = (self._buckets.nbytes() + table_delta if table_delta is not None
                 else math.ceil(per_entry * len(self) * params.L))
        own = sum(np.dtype(d).itemsize for _, d in _OWN_PER_SLOT)
        return table, self._capacity * own + (self._capacity + 63) // 64 * 8

    def remove(self, ids: Iterable[str]) -> int:
        """Remove items by id; returns how many were present. Unknown ids are ignored."""
        self._check_writable()
        ids = self._check_ids(list(ids) if not isinstance(ids, (str, bytes)) else ids)
        arr = self._ids.remove(ids)  # their slots, now free
        if not len(arr):
            return 0
        self._unindex(arr)
        self._alive[arr] = False
        self._vecs[arr] = 0.0
        if self.merge_mode == "inline" and self._stale >= self._merge_threshold():
            self._merge_now()
        return len(arr)

    def _merge_threshold(self) -> int:
        return max(self.MERGE_MIN, len(self._ids) // self.MERGE_RATIO)

    def _unindex(self, slots: np.ndarray) -> None:
        """Take slots out of the bucket structures (before an update or a removal)."""
        in_main = self._in_main[slots]
        if np.any(in_main):
            self._in_main[slots[in_main]] = False
            self._stale += int(in_main.sum())
        if self._n_pending:
            rows = slots[self._is_pending[slots]]
            if len(rows):  # their keys: the stored vectors hashed as add() did
                self._pending.remove(rows, self.hasher.keys(self._vecs[rows]))
                self._is_pending[rows] = False
                self._n_pending -= len(rows)

    def merge_due(self) -> bool:
        """Enough pending items or stale entries that a merge is due."""
        return self._n_pending + self._stale >= self._merge_threshold()

    def _merge_now(self, slots: np.ndarray | None = None, keys: np.ndarray | None = None
                   ) -> None:
        """Fold pending items (and a batch) into the sorted table; drop stale entries."""
        self._run_merge(self._merge_job(slots, keys))

    async def merge_off_loop(self, force: bool = False) -> bool:
        """Merge if due (``force``: if anything is pending or stale at all), part by part
        in a thread: searches on the caller's event loop go on meanwhile, each against
        the table as it is (every item found once: see
        :class:`~recall.lsh.buckets.BucketTable`'s ``fresh``); :meth:`add` and
        :meth:`remove` raise until this returns. Returns whether a merge ran."""
        due = self.merge_due() or (force and (self._n_pending > 0 or self._stale > 0))
        if self._merging or (self._job is None and not due):
            return False
        job = self._job if self._job is not None else self._merge_job()
        self._merging = True
        try:
            await self._merge_parts_off_loop(job)
        finally:
            self._merging = False
        return True

    async def _merge_parts_off_loop(self, job: _MergeJob) -> None:
        """The parts left of ``job``, each built in a thread and swapped in here."""
        while job.next < PARTS:
            self._swap_part(job, await asyncio.to_thread(self._merge_part, job))
        self._finish_merge(job)

    def _merge_job(self, slots: np.ndarray | None = None, keys: np.ndarray | None = None
                   ) -> _MergeJob:
        """What a merge folds in: the pending items (in slot order) and a batch with its
        keys; the pending items' keys are hashed in the merge's first part (off the
        event loop)."""
        pending = np.flatnonzero(self._is_pending[: self._high])
        batch = (np.zeros(0, dtype=np.int64), np.zeros((0, self.params.L), dtype=np.int64)
                 ) if slots is None or keys is None else (slots, keys)
        self._job = _MergeJob(pending, batch, self._stale > 0)
        return self._job

    def _run_merge(self, job: _MergeJob) -> None:
        """The parts left of a merge, here (inline merges; a merge stopped by an error)."""
        while job.next < PARTS:
            self._swap_part(job, self._merge_part(job))
        self._finish_merge(job)

    def _merge_part(self, job: _MergeJob) -> SortedBuckets:
        """The heavy part of a merge, one part of the table: it only reads the index
        (no write may happen until the whole merge is finished)."""
        p = job.next
        if job.keys is None:
            job.hash(self)
        old = self._buckets.parts[p]
        rows, tables = np.nonzero(job.part == p)  # slot by slot, table by table
        new_keys = job.keys[rows, tables]
        order = np.argsort(new_keys, kind="stable")  # a bucket's items keep their order
        keep = self._in_main[old.slots] if job.stale else None
        return old.merged(keep, new_keys[order], job.slots[rows[order]])

    def _swap_part(self, job: _MergeJob, part: SortedBuckets) -> None:
        """Serve a merged part (on the thread that owns the index): the parts up to it
        now hold the pending items, and the old part's arrays go."""
        self._buckets = self._buckets.with_part(job.next, part, fresh=job.next + 1)
        job.next += 1

    def _finish_merge(self, job: _MergeJob) -> None:
        """Every part merged: the pending items are in the table, stale entries gone."""
        self._in_main[job.slots] = True
        self._pending.clear()
        self._is_pending[job.slots] = False  # the batch's were not: no matter
        self._n_pending = 0
        self._stale = 0
        self._buckets = self._buckets.with_fresh(0)
        self._job = None
        self.merges += 1


class _MergeJob:
    """A merge under way: the items it folds in (slots, their (m, L) keys and each key's
    part, once hashed), whether stale entries are to be dropped, and the next part to
    merge."""

    def __init__(self, pending: np.ndarray, batch: tuple[np.ndarray, np.ndarray],
                 stale: bool) -> None:
        self.pending, self.batch = pending, batch
        self.slots = np.concatenate([pending, batch[0]]).astype(np.int32)
        self.keys: np.ndarray | None = None
        self.part = np.zeros((0, 0), dtype=np.uint8)
        self.stale = stale
        self.next = 0

    def hash(self, index: LSHIndex) -> None:
        """The items' keys: the pending ones hashed from the stored vectors (what add()
        hashed), a block at a time, then the batch's."""
        keys = np.empty((len(self.slots), index.params.L), dtype=np.int64)
        n = len(self.pending)
        for i in range(0, n, _BUILD_BLOCK):
            keys[i:i + _BUILD_BLOCK] = index.hasher.keys(
                index._vecs[self.pending[i:i + _BUILD_BLOCK]])
        keys[n:] = self.batch[1]
        self.batch = (self.batch[0], keys[:0])  # the batch's keys are in keys now
        self.part = part_of(keys)
        self.keys = keys


#: rows normalised at once by add(): normalize() works in float64, so a block bounds its
#: temporaries (~3 x 16 MB) where a 250k-row batch made ~380 MB of them
_NORM_BLOCK = 32768


#: items hashed at once by build(): bounds the hashing temporaries (float64 projections,
#: their floors and int64 codes: ~10 MB; 8192 held ~40 MB at the peak of the build)
_BUILD_BLOCK = 2048

#: entries of the last range of the table's parts build() scatters (their keys: 8 bytes
#: each, 16 MB: the peak's excess over the new table), and of the one range of a table up
#: to that size (:func:`_part_ranges`): every item is hashed again for each range (~0.5-1
#: s of CPU a pass at 1M), 4 ranges at 1M x 16. 4M held 14.7 MiB more at the peak of a
#: re-layout at 1M x 64 to simhash L=8 (6.3 to pstable L=16), for one pass less
_BUILD_RANGE = 2_000_000


def _part_ranges(first: list[int], least: int) -> list[tuple[int, int]]:
    """Ranges [a, b) of consecutive parts (``first``: each part's first entry, and the
    total) for build() to scatter one after the other: each as many parts as hold half
    the entries left, or ``least`` where that is more, and at least one part. The keys
    of a range are held while it is built (8 bytes an entry) beside the parts built
    before it (~6.5-8.5 bytes an entry at 1M x 16): halving them as the table fills
    keeps the two near the whole table's size, in few passes (4 ranges at 1M x 16 with
    the default ``least``; one up to ``least`` entries in all)."""
    ranges: list[tuple[int, int]] = []
    a, end = 0, len(first) - 1
    while a < end:
        most = max(least, (first[end] - first[a]) // 2)
        b = a + 1
        while b < end and first[b + 1] - first[a] <= most:
            b += 1
        ranges.append((a, b))
        a = b
    return ranges


def _normalize_blocks(vectors: np.ndarray) -> np.ndarray:
    """normalize() block by block into one float32 array (the same rows; an error names
    the row in the whole batch)."""
    n = len(vectors)
    if n <= _NORM_BLOCK:
        return normalize(vectors)
    out = np.empty(vectors.shape, dtype=np.float32)
    for start in range(0, n, _NORM_BLOCK):
        try:
            out[start:start + _NORM_BLOCK] = normalize(vectors[start:start + _NORM_BLOCK])
        except ValueError as exc:
            msg = str(exc)
            if msg.startswith("vector "):
                row, rest = msg[len("vector "):].split(" ", 1)
                msg = f"vector {start + int(row)} {rest}"
            raise ValueError(msg) from None
    return out
