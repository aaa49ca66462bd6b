"""Compiled kernels of the index's hot paths: LSH probe -> gather -> dedupe -> re-rank,
and the bucket table of a bulk load.

Why numba: the numpy query path spends most of its ~0.8 ms per query at 1M items on the
per-call overhead of some forty small numpy operations (hashing 160 projections, sorting
16 x 20 boundary distances, looking up 80 bucket keys, deduping ~4,000 slots), not on the
~1 MB of vectors it re-ranks. numba compiles plain Python loops over numpy arrays to
machine code (LLVM), is a well-kept, widely used JIT with wheels for every platform we
run on, and needs no C toolchain or build step; a C extension or Cython would need one,
and faiss/hnswlib do not implement our index (seeded p-stable/SimHash multi-probe with
incremental updates whose keys the offline loader shares).

The kernels take plain arrays (CSR bucket table, hash parameters, vectors), so they do
not depend on the index's Python structure; :mod:`recall.lsh` keeps the numpy
implementation as the reference the tests compare against, row by row.

- :func:`probe_keys` hashes a batch of normalised queries and builds each one's
  query-directed multi-probe keys (Lv et al. 2007), exactly as
  ``recall.lsh.Hasher.probe_keys`` does (same float64 arithmetic, same perturbation
  sets).
- :func:`search` looks each query's probes up in the sorted bucket table (the key's
  part, its radix directory + short scan), gathers the bucket entries (at most ``cap`` per bucket, a
  window of an over-full one placed by a hash of the query and the key; stale
  entries skipped), adds extra candidates given per query (pending buckets), dedupes
  (a bit per slot with vote = 1, a count per slot otherwise), keeps candidates found in
  at least ``vote`` of the probes' tables, re-ranks them by exact inner product
  (:func:`recall.rerankkernels.rerank`: float64 sums, rounded to float32; the rows
  prefetched ahead; a float32 pass first picks the few that can be in the top k) and
  keeps the top k; excluded
  slots count as candidates (as in the reference) but are never scored or returned.
- :func:`count_cells`, :func:`scatter_cells`, :func:`finish_cells`, :func:`unique_csr`,
  :func:`radix_directory`: the bucket table of a bulk load, :func:`merge_buckets`, its
  merges, and :func:`fold_keys`, item hashing, in :mod:`recall.buildkernels`
  (re-exported here).

Compile time: every kernel is compiled on first call and cached on disk
(``cache=True``, in ``__pycache__``), so a worker pays it once per machine; :func:`warm_up`
runs each kernel on tiny inputs (the worker calls it at start, before taking traffic).
The mark and seen arrays passed to :func:`search` must be all zeros; they are all
zeros again on return (one pair per thread: concurrent searches must not share them).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from recall import jit  # noqa: F401  (numba's cache directory, before any @njit)
from recall.buildkernels import (  # re-exported: the index calls them as kernels.*
    count_cells,
    finish_cells,
    fold_keys,
    merge_buckets,
    part_directory,
    part_slots,
    part_starts,
    part_ukeys,
    radix_directory,
    scatter_cells,
    unique_csr,
)
from recall.rerankkernels import prefetch, rerank

#: ``mark`` of a slot during a search: its sightings in the low 7 bits (stopping at 127),
#: the top bit set when the query excludes it
_EXCLUDED = 128
_COUNT = 127


@intrinsic
def _bits32(typingctx, x):  # type: ignore[no-untyped-def]
    """The IEEE bits of a float32 as a uint32 (a bitcast: numba has no call for it)."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


#: odd 64-bit multiplier (2**64 / golden ratio) of the hashes below
_GOLDEN = 0x9E3779B97F4A7C15


@njit(cache=True, nogil=True)
def query_seed(q: np.ndarray) -> np.uint64:
    """A 64-bit hash of a float32 query's bits: where :func:`cap_window` starts reading
    an over-full bucket for this query."""
    h = np.uint64(0)
    for d in range(q.shape[0]):
        h = (h ^ np.uint64(_bits32(q[d]))) * np.uint64(_GOLDEN)
        h ^= h >> np.uint64(29)
    return h


@njit(cache=True, nogil=True, inline="always")
def cap_window(key: np.int64, seed: np.uint64, span: int) -> int:
    """Offset in [0, span) of the ``cap`` entries a query reads of a bucket holding
    cap + span - 1. A bucket keeps its entries oldest first (a merge appends), so reading
    its first ``cap`` hid the later items of a crowded region from every query; a window
    placed by a hash of the query and the key reads a different part for each query,
    so every item is read by some (the same query always reads the same part)."""
    h = (np.uint64(key) ^ seed) * np.uint64(_GOLDEN)
    h ^= h >> np.uint64(32)
    return np.int64(h % np.uint64(span))


@njit(cache=True, nogil=True)
def _project(q: np.ndarray, proj: np.ndarray, out: np.ndarray) -> None:
    """out = q (float32 -> float64) @ proj, as a sum over dimensions in order."""
    out[:] = 0.0
    for d in range(proj.shape[0]):
        x = np.float64(q[d])
        for j in range(proj.shape[1]):
            out[j] += x * proj[d, j]


@njit(cache=True, nogil=True)
def _argsort_small(values: np.ndarray, n: int, order: np.ndarray) -> None:
    """order[:n] = indices of values[:n] ascending (stable): an insertion sort in place,
    for the 2k boundary distances and the few template scores of a table, where
    np.argsort's allocation and call cost more than the sort."""
    for j in range(n):
        v = values[j]
        p = j
        while p > 0 and values[order[p - 1]] > v:
            order[p] = order[p - 1]
            p -= 1
        order[p] = j


@njit(cache=True, nogil=True)
def probe_keys(queries: np.ndarray, proj: np.ndarray, offset: np.ndarray, w: float,
               pstable: bool, mult: np.ndarray, salt: np.ndarray, template: np.ndarray,
               n_sets: int) -> np.ndarray:
    """(n, L, 1 + n_sets) int64 probe keys of n normalised float32 queries, home first.

    proj (D, L*k) float64, offset (L*k,), mult (L, k) int64 (odd), salt (L,) int64,
    template (S, maxlen) perturbation sets over sorted positions padded with the
    position count (``recall.lsh.hashing._perturbation_template``); n_sets <= S sets per table.
    """
    n = queries.shape[0]
    L, k = mult.shape
    npos = 2 * k if pstable else k
    n_tmpl = template.shape[0]
    out = np.empty((n, L, 1 + n_sets), dtype=np.int64)
    t = np.empty(L * k, dtype=np.float64)
    dist = np.empty(npos, dtype=np.float64)
    step = np.empty(npos, dtype=np.int64)
    d2 = np.zeros(npos + 1, dtype=np.float64)  # last entry 0: the template's padding
    contrib = np.zeros(npos + 1, dtype=np.int64)
    scores = np.empty(n_tmpl, dtype=np.float64)
    order = np.empty(npos, dtype=np.int64)
    chosen = np.arange(max(n_tmpl, 1))  # the template's order unless scores re-sort it
    for i in range(n):
        _project(queries[i], proj, t)
        for tb in range(L):
            home = salt[tb]
            for j in range(k):
                x = t[tb * k + j]
                if pstable:
                    x = (x + offset[tb * k + j]) / w
                    c = np.floor(x)
                    frac = x - c
                    dist[j] = frac
                    dist[k + j] = 1.0 - frac
                    step[j] = -mult[tb, j]
                    step[k + j] = mult[tb, j]
                else:
                    c = 1.0 if x > 0 else 0.0
                    dist[j] = abs(x)
                    step[j] = -mult[tb, j] if c == 1.0 else mult[tb, j]
                home += np.int64(c) * mult[tb, j]
            out[i, tb, 0] = home
            if n_sets == 0:
                continue
            _argsort_small(dist, npos, order)
            for p in range(npos):
                d2[p] = dist[order[p]] ** 2
                contrib[p] = step[order[p]]
            if n_tmpl > n_sets:
                for s in range(n_tmpl):
                    acc = 0.0
                    for m in range(template.shape[1]):
                        acc += d2[template[s, m]]
                    scores[s] = acc
                _argsort_small(scores, n_tmpl, chosen)
            for j in range(n_sets):
                s = chosen[j]
                key = home
                for m in range(template.shape[1]):
                    key += contrib[template[s, m]]
                out[i, tb, 1 + j] = key
    return out


#: ``head`` of a pending-bucket cell no key took (recall.lsh.pending)
EMPTY_CELL = -2


@njit(cache=True, nogil=True, inline="always")
def pending_home(key: np.int64, mask: int) -> int:
    """First cell of ``key`` in a pending-bucket table of mask + 1 cells (a multiply and
    a fold: a key's low bits alone depend on few of its hash codes)."""
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(32)
    return np.int64(h & np.uint64(mask))


@njit(cache=True, nogil=True, inline="always")
def pending_probe(key: np.int64, keys: np.ndarray, head: np.ndarray) -> int:
    """The cell of ``key`` in a pending-bucket table, or the empty cell where its
    linear probe ends (the one place the probe sequence is written: the read below and
    the table's insert both take it)."""
    mask = keys.shape[0] - 1
    cell = pending_home(key, mask)
    while head[cell] != EMPTY_CELL and keys[cell] != key:
        cell = (cell + 1) & mask
    return cell


@njit(cache=True, nogil=True, inline="always")
def pending_lookup(key: np.int64, keys: np.ndarray, head: np.ndarray) -> int:
    """The cell of ``key`` in a pending-bucket table, -1 if it has none."""
    cell = pending_probe(key, keys, head)
    return -1 if head[cell] == EMPTY_CELL else cell


@njit(cache=True, nogil=True)
def _locate(keys: np.ndarray, parts: np.ndarray, fresh: int, pkeys: np.ndarray,
            phead: np.ndarray, pent: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            first: np.ndarray, part: np.ndarray, cap: int, seed: np.uint64) -> None:
    """For each probe key: its part of the table (``part``), [lo, hi) of its entries in
    that part's CSR (empty when absent; at most ``cap`` of them when cap > 0, where
    :func:`cap_window` with the query's ``seed`` says) and ``first``, the first entry
    of its pending bucket (-1: none; not looked up in the first ``fresh`` parts, where a
    merge under way put the pending items already). Each dependent read (directory
    cell, keys, offsets, entries) is a likely cache miss at 1M items: done one stage at
    a time over all probes, with the next stage's lines prefetched, the misses of all
    probes overlap instead of queueing (gather and dedupe at 1M: ~0.10 -> 0.05 ms)."""
    n = keys.shape[0]
    pbits = 0
    while (1 << pbits) < parts.shape[0]:
        pbits += 1
    top = np.uint64(64 - pbits)
    pmask = pkeys.shape[0] - 1
    for j in range(n):
        u = np.uint64(keys[j]) ^ np.uint64(0x8000000000000000)
        p = np.int64(u >> top)
        part[j] = p
        cell = np.int64((u << np.uint64(pbits)) >> np.uint64(parts[p, 7]))
        prefetch(part_directory(parts, p), cell)
        lo[j] = cell
        if p >= fresh:
            pc = pending_home(keys[j], pmask)
            prefetch(phead, pc)
            first[j] = pc
        else:
            first[j] = -1
    for j in range(n):
        directory = part_directory(parts, part[j])
        cell = lo[j]
        lo[j], hi[j] = directory[cell], directory[cell + 1]
        prefetch(part_ukeys(parts, part[j]), lo[j])
        if first[j] >= 0:
            prefetch(pkeys, first[j])
    for j in range(n):
        ukeys = part_ukeys(parts, part[j])
        key, found = keys[j], -1
        for pos in range(lo[j], hi[j]):
            if ukeys[pos] == key:
                found = pos
                break
        lo[j] = found
        if found >= 0:
            prefetch(part_starts(parts, part[j]), found)
        cell = first[j]
        if cell >= 0:
            while phead[cell] != EMPTY_CELL and pkeys[cell] != key:
                cell = (cell + 1) & pmask
            first[j] = phead[cell] if phead[cell] != EMPTY_CELL else -1
            if first[j] >= 0:
                prefetch(pent, 2 * first[j])  # (C-contiguous (E, 2): flat index)
    for j in range(n):
        pos = lo[j]
        if pos >= 0:
            starts = part_starts(parts, part[j])
            a, b = np.int64(starts[pos]), np.int64(starts[pos + 1])
            if cap > 0 and b - a > cap:
                a += cap_window(keys[j], seed, b - a - cap + 1)
                b = a + cap
            lo[j], hi[j] = a, b
            prefetch(part_slots(parts, part[j]), a)
        else:
            lo[j], hi[j] = 0, 0


@njit(cache=True, nogil=True, inline="always")
def _append(s: int, cand: np.ndarray, m: int) -> tuple[np.ndarray, int]:
    """cand[:m] + [s], cand doubled when full."""
    if m == cand.shape[0]:
        bigger = np.empty(2 * m, dtype=np.int64)
        bigger[:m] = cand
        cand = bigger
    cand[m] = s
    return cand, m + 1


@njit(cache=True, nogil=True, inline="always")
def _visit(s: int, mark: np.ndarray, cand: np.ndarray, m: int) -> tuple[np.ndarray, int]:
    """Count one sighting of slot s; a first sighting appends it to cand[:m]."""
    c = mark[s]
    count = c & _COUNT
    if count == 0:
        cand, m = _append(s, cand, m)
    if count < _COUNT:
        mark[s] = c + 1
    return cand, m


@njit(cache=True, nogil=True, inline="always")
def _see(s: int, seen: np.ndarray, cand: np.ndarray, m: int) -> tuple[np.ndarray, int]:
    """vote = 1: set slot s's bit in ``seen``; a first sighting appends it to cand[:m]."""
    word = s >> 6
    bit = np.uint64(1) << np.uint64(s & 63)
    if seen[word] & bit == 0:
        seen[word] |= bit
        cand, m = _append(s, cand, m)
    return cand, m


@njit(cache=True, nogil=True, inline="always")
def _see_into(s: int, seen: np.ndarray, cand: np.ndarray, m: int) -> int:
    """:func:`_see` without a branch, for a cand with room: s is written at cand[m]
    either way and m advances only on a first sighting. Whether a slot was seen is a
    coin toss to the branch predictor (~80% of a query's entries are new), and each
    miss waited on the bitset's read: gathering ~5,400 entries at 1M, ~50 -> ~25 us
    (alternated A/B, same candidates)."""
    word = s >> 6
    shift = np.uint64(s & 63)
    bits = seen[word]
    seen[word] = bits | (np.uint64(1) << shift)
    cand[m] = s
    return m + 1 - np.int64((bits >> shift) & np.uint64(1))


@njit(cache=True, nogil=True, inline="always")
def _gather(lo: np.ndarray, hi: np.ndarray, first: np.ndarray, part: np.ndarray,
            parts: np.ndarray, fresh: int, in_main: np.ndarray, check_stale: bool, cap: int,
            pent: np.ndarray, bitset: bool, seen: np.ndarray, mark: np.ndarray,
            cand: np.ndarray) -> tuple[np.ndarray, int]:
    """Every sighting in one query's located probes (at most ``cap`` per bucket, the
    sorted entries of all probes, then the pending ones): :func:`_see` when ``bitset``
    (vote = 1), else :func:`_visit` (vote counts). Stale entries are skipped
    (``check_stale``) outside the first ``fresh`` parts (merged, they hold none).
    (cand, m): the distinct slots in cand[:m], in no particular order (the re-rank and
    the top k do not depend on it).

    The pending lists are walked one step of every list per round, the next entries
    prefetched: each step of a list is a dependent read of a scattered entry, and
    walking the lists one after the other made those misses queue (at 1M items with
    4% of them pending, ~220 entries in ~80 lists: ~25 us of a ~250 us query).
    ``first`` becomes the lists' cursors and ``hi`` their taken counts. cand is first
    made room for every sorted entry, so their loop need not check (see
    :func:`_see_into`); never more than one per slot and one more (m counts distinct
    slots), so a catalogue whose probed buckets are huge does not allocate L times
    its slots."""
    m = 0
    live = 0
    total = 0
    for j in range(lo.shape[0]):
        total += hi[j] - lo[j] if cap == 0 or hi[j] - lo[j] <= cap else cap
    total = min(total, mark.shape[0] + 1)
    if cand.shape[0] < total:
        cand = np.empty(max(total, 2 * cand.shape[0]), dtype=np.int64)
    for j in range(lo.shape[0]):
        end = hi[j] if cap == 0 or hi[j] - lo[j] <= cap else lo[j] + cap
        slots = part_slots(parts, part[j])
        stale = check_stale and part[j] >= fresh
        for e in range(lo[j], end):
            s = slots[e]
            if not stale or in_main[s]:
                if bitset:
                    m = _see_into(s, seen, cand, m)
                else:
                    cand, m = _visit(s, mark, cand, m)
        if first[j] >= 0:
            first[live] = first[j]
            hi[live] = 0
            live += 1
    while live > 0:
        still = 0
        for j in range(live):
            e = first[j]
            if bitset:
                cand, m = _see(pent[e, 0], seen, cand, m)
            else:
                cand, m = _visit(pent[e, 0], mark, cand, m)
            e, taken = pent[e, 1], hi[j] + 1
            if e >= 0 and (cap == 0 or taken < cap):
                prefetch(pent, 2 * e)
                first[still] = e
                hi[still] = taken
                still += 1
        live = still
    return cand, m


@njit(cache=True, nogil=True)
def search(queries: np.ndarray, probes: np.ndarray, ks: np.ndarray,
           parts: np.ndarray, fresh: int, vectors: np.ndarray,
           in_main: np.ndarray, check_stale: bool, cap: int, vote: int,
           pkeys: np.ndarray, phead: np.ndarray, pent: np.ndarray,
           excl_ptr: np.ndarray, excl_slots: np.ndarray,
           mark: np.ndarray, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ks[i] slots and scores of each query among its probes' bucket entries.

    queries (n, D) float32 normalised; probes (n, L, P) int64; ks (n,) int64. The
    table: ``parts`` (``recall.lsh.buckets.BucketTable.desc``), one CSR per range of keys
    (ukeys sorted int64, starts, slots int32, a radix directory on the keys' top bits
    after the part's), the first ``fresh`` of them merged with the pending items already
    (a merge under way: no pending lookups, no stale entries there). vectors (S, D)
    float16 by slot, as their uint16 bits; in_main (S,) bool (entries of slots not in
    main are stale, skipped when check_stale); cap: entries read per bucket (0 = all), in
    the sorted (a window, :func:`cap_window`) and in the pending bucket of a key each;
    vote: keep candidates found in at least that many of the L tables (1 = all).
    pkeys/phead/pent: the pending buckets (``recall.lsh.pending.PendingBuckets``: a hash
    table of keys, each cell the head of a list of (slot, next) entries);
    excl_ptr/excl_slots: CSR of slots each query must not return.
    mark (S,) uint8 zeros: sightings per slot (stopping at 127, so vote <= 127). seen
    (ceil(S / 64),) uint64 zeros: with vote = 1 only a bit per slot is needed, and this
    bitset (125 KB at 1M slots) stays in the core's cache where the mark array (1 MB)
    does not: gathering and deduping ~5,600 bucket entries at 1M, 72 -> 20 us
    (interleaved A/B).

    Returns (out_slots (n, kmax) int64 padded with -1, out_scores (n, kmax) float32 padded
    with -inf, candidates (n,) int64 per query: distinct slots with enough votes,
    excluded ones included), rows best first (equal scores:
    lower slot first).
    """
    n = queries.shape[0]
    kmax = 0
    for i in range(n):
        kmax = max(kmax, ks[i])
    out_slots = np.full((n, kmax), -1, dtype=np.int64)
    out_scores = np.full((n, kmax), -np.inf, dtype=np.float32)
    n_cand = np.zeros(n, dtype=np.int64)
    cand = np.empty(1024, dtype=np.int64)
    scores = np.empty(1024, dtype=np.float32)
    n_probes = probes.shape[1] * probes.shape[2]
    lo = np.empty(n_probes, dtype=np.int64)
    hi = np.empty(n_probes, dtype=np.int64)
    first = np.empty(n_probes, dtype=np.int64)
    part = np.empty(n_probes, dtype=np.int64)
    for i in range(n):
        seed = query_seed(queries[i]) if cap > 0 else np.uint64(0)
        _locate(probes[i].reshape(-1), parts, fresh, pkeys, phead, pent, lo, hi, first,
                part, cap, seed)
        if vote == 1:
            cand, ranked, n_cand[i] = _gather_seen(lo, hi, first, part, parts, fresh,
                                                   in_main, check_stale, cap, pent,
                                                   excl_slots[excl_ptr[i]:excl_ptr[i + 1]],
                                                   seen, mark, cand)
        else:
            for e in range(excl_ptr[i], excl_ptr[i + 1]):
                mark[excl_slots[e]] = _EXCLUDED
            cand, m = _gather(lo, hi, first, part, parts, fresh, in_main, check_stale,
                              cap, pent, False, seen, mark, cand)
            # the candidates with enough votes (excluded ones count, as in the
            # reference, but are not scored)
            voted = 0
            ranked = 0
            for j in range(m):
                s = cand[j]
                c = mark[s]
                if (c & _COUNT) >= vote:
                    voted += 1
                    if c < _EXCLUDED:
                        cand[ranked] = s
                        ranked += 1
                mark[s] = c & _EXCLUDED
            n_cand[i] = voted
            for e in range(excl_ptr[i], excl_ptr[i + 1]):
                mark[excl_slots[e]] = 0
        # their scores in one tight loop (the row loads overlap), the top k by
        # insertion into the sorted output row
        if scores.shape[0] < ranked:
            scores = np.empty(cand.shape[0], dtype=np.float32)
        rerank(vectors, cand, ranked, queries[i], ks[i], scores, out_slots[i],
                out_scores[i])
    return out_slots, out_scores, n_cand


@njit(cache=True, nogil=True)
def search_queries(queries: np.ndarray, ks: np.ndarray, proj: np.ndarray,
                   offset: np.ndarray, mult: np.ndarray, salt: np.ndarray,
                   template: np.ndarray, opts_f: np.ndarray, opts: np.ndarray,
                   parts: np.ndarray, vectors: np.ndarray, in_main: np.ndarray,
                   pkeys: np.ndarray, phead: np.ndarray, pent: np.ndarray,
                   excl_ptr: np.ndarray, excl_slots: np.ndarray, mark: np.ndarray,
                   seen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`probe_keys` then :func:`search`, in one call from Python: the index's
    per-query path. The scalars come packed, opts_f = [w], opts = [pstable, n_sets,
    fresh, check_stale, cap, vote]: numba's dispatcher types each argument of a call,
    a Python scalar costing more than an array, and a query at 1M items paid ~20 us
    between and around two calls (the kernels evict the interpreter's data from the
    caches, so every Python step after them is slow)."""
    probes = probe_keys(queries, proj, offset, opts_f[0], opts[0] != 0, mult, salt,
                        template, opts[1])
    return search(queries, probes, ks, parts, opts[2], vectors, in_main, opts[3] != 0,
                  opts[4], opts[5], pkeys, phead, pent, excl_ptr, excl_slots, mark, seen)


@njit(cache=True, nogil=True)
def unit_rows(x: np.ndarray, tol: float) -> bool:
    """Whether every row of x (n, D) float32 is finite with |norm - 1| <= tol (float64
    sums). Lets a search skip normalize()'s dozen numpy calls (~10 us, a fifth of a
    small search) for queries that are unit already, which normalize() returns as they
    are; callers pass half normalize()'s tolerance, so a different summation order
    cannot change the decision."""
    for i in range(x.shape[0]):
        acc = 0.0
        for d in range(x.shape[1]):
            v = np.float64(x[i, d])
            acc += v * v
        if not abs(np.sqrt(acc) - 1.0) <= tol:  # NaN and infinities fail too
            return False
    return True


@njit(cache=True, nogil=True)
def _gather_seen(lo: np.ndarray, hi: np.ndarray, first: np.ndarray, part: np.ndarray,
                 parts: np.ndarray, fresh: int, in_main: np.ndarray, check_stale: bool,
                 cap: int, pent: np.ndarray, excluded: np.ndarray, seen: np.ndarray,
                 mark: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, int, int]:
    """:func:`search`'s candidates of one query when vote = 1 (its probes located by
    :func:`_locate`), deduped with the ``seen`` bitset: (cand, ranked, distinct) where
    cand[:ranked] are the distinct candidates that are not excluded. Excluded slots count
    as candidates (as in the reference): their bits are cleared after the gather, so the
    pass that keeps the bit-set candidates (clearing every bit again) drops them.
    ``mark`` is only handed to the shared gather, which does not touch it here."""
    cand, m = _gather(lo, hi, first, part, parts, fresh, in_main, check_stale, cap, pent,
                      True, seen, mark, cand)
    for s in excluded:
        seen[s >> 6] &= ~(np.uint64(1) << np.uint64(s & 63))
    ranked = 0
    for j in range(m):
        s = cand[j]
        bit = np.uint64(1) << np.uint64(s & 63)
        if seen[s >> 6] & bit:
            seen[s >> 6] &= ~bit
            cand[ranked] = s
            ranked += 1
    return cand, ranked, m


def warm_up() -> None:
    """Compile (or load from the cache) every kernel on tiny inputs, so the first real
    call does not pay it."""
    rng = np.random.default_rng(0)
    dim, L, k = 4, 2, 2
    q = rng.standard_normal((1, dim)).astype(np.float32)
    proj = rng.standard_normal((dim, L * k))
    mult = np.ones((L, k), dtype=np.int64)
    template = np.array([[0, 4], [1, 4]], dtype=np.intp)
    unit_rows(q, 1e-6)
    for pstable in (True, False):
        probes = probe_keys(q, proj, np.zeros(L * k), 1.0, pstable, mult,
                            np.zeros(L, dtype=np.int64), template, 1)
    from recall.lsh import buckets, pending  # here: recall.lsh imports this module

    table = buckets.BucketTable.empty()  # float16 vectors as their bits
    search_queries(q, np.ones(1, dtype=np.int64), proj, np.zeros(L * k), mult,
                   np.zeros(L, dtype=np.int64), template, np.ones(1),
                   np.array([1, 1, 0, 1, 0, 1], dtype=np.int64), table.desc,
                   q.astype(np.float16).view(np.uint16),
                   np.ones(1, dtype=bool), np.zeros(2, dtype=np.int64),
                   np.full(2, EMPTY_CELL, dtype=np.int32), np.zeros((1, 2), dtype=np.int32),
                   np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int64),
                   np.zeros(1, dtype=np.uint8), np.zeros(1, dtype=np.uint64))
    pending.warm_up()
    keys = np.ascontiguousarray(probes[:, :, 0])  # as build() has them (Hasher.keys)
    counts = np.zeros(2, dtype=np.int64)
    count_cells(keys, 63, counts)
    fold_keys(q.astype(np.float64) @ proj, np.zeros(L * k), 1.0, True, mult, keys[0].copy(),
              np.empty((1, L), dtype=np.int64))
    starts = np.zeros(3, dtype=np.int32)  # a part's cell offsets, as build() has them
    np.cumsum(counts, dtype=np.int32, out=starts[1:])
    out_k = np.empty(keys.size, dtype=np.int64)
    out_s = np.empty(keys.size, dtype=np.int32)
    scatter_cells(keys, np.zeros(1, dtype=np.int64), 63, 0, 2, starts[:-1].copy(), out_k,
                  out_s)
    csr = np.empty(finish_cells(out_k, out_s, starts) + 1, dtype=np.int32)
    unique_csr(out_k, csr)
    radix_directory(out_k[:1], 4, 63, np.zeros(3, dtype=np.int32))
    merge_buckets(out_k[:1], np.array([0, 1], dtype=np.int32), out_s[:1], np.ones(1, dtype=bool),
                  True, out_k[:1], out_s[:1], np.empty(2, dtype=np.int64),
                  np.empty(3, dtype=np.int32), np.empty(2, dtype=np.int32))
