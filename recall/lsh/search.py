"""The index's reads: ``search(queries, k, exclude=None, *, exact=False)`` and
``vectors_of``, kept apart from the writes and merges in :mod:`recall.lsh.index`.

A search gathers the probed buckets (at most ``cap`` items each), dedupes, keeps the
candidates found in at least ``vote`` tables, re-ranks them by exact cosine and returns
the top k: scores are exact, only recall is approximate. Searches run as compiled
kernels (:mod:`recall.kernels`, batched over the queries of a call); ``compiled = False``
runs the numpy implementation here that they are tested against (same ids, scores and
candidate counts; equal scores rank by slot). Scores are float64 sums of the products
of the stored (float16) item vectors and the float32 query, rounded to float32, on both
paths. While a move to a new layout runs (:mod:`recall.lsh.move`) a search on the old index
reads both layouts and keeps the best k of the two (:func:`union_results`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from recall import exactkernels, kernels
from recall.lsh.buckets import BucketTable
from recall.lsh.hashing import Hasher
from recall.lsh.ids import IdStore
from recall.lsh.params import UNIT_TOL, LSHParams, normalize
from recall.lsh.pending import PendingBuckets


@dataclass
class QueryResult:
    ids: list[str]  # best first
    scores: np.ndarray  # float32 cosine, best first
    candidates: int  # distinct candidates re-ranked


#: an empty slot array, shared by searches without exclusions (empty: nothing to write;
#: left writeable, so the kernels see the array type they were compiled and warmed for)
_NO_SLOTS = np.zeros(0, dtype=np.int64)
#: the exclusion offsets of one query without exclusions (read-only to the kernels)
_EXCL_PTR_ONE = np.zeros(2, dtype=np.int64)
#: the exclusions of one query that has none
_NO_EXCLUSIONS = [_NO_SLOTS]


class SearchMixin:
    """The read half of :class:`~recall.lsh.index.LSHIndex` (which holds the state
    declared here): one search entry point, compiled or numpy, LSH or exact."""

    #: search with the compiled kernels (False: the numpy reference implementation)
    compiled = True

    params: LSHParams
    hasher: Hasher
    dim: int
    _vecs: np.ndarray
    _alive: np.ndarray
    _in_main: np.ndarray
    _stamp: np.ndarray
    _mark: np.ndarray
    _seen: np.ndarray
    _ids: IdStore
    _high: int
    _buckets: BucketTable
    _pending: PendingBuckets
    _stale: int
    _successor: SearchMixin | None

    def vectors_of(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised vectors (zeros where missing) and a "present" mask."""
        ids = self._check_ids(ids)
        slots = self._ids.slots(ids)  # one compiled lookup (every clicked user's window)
        present = slots >= 0
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        out[present] = self._vecs[slots[present]]
        return out, present

    def search(self, queries: np.ndarray, k: int | Sequence[int],
               exclude: Sequence[Collection[str]] | None = None, *,
               exact: bool = False, probes: int | None = None) -> list[QueryResult]:
        """The top k items of each query, best first, by exact cosine.

        ``queries``: (n, D), or one query (D,) (then n = 1); any norm (normalised here).
        ``k``: one int for all, or one per query. ``exclude``: None, or one collection of
        item ids per query, left out of its results. The n queries are hashed and looked
        up together (one set of numpy calls; from 4 queries on ~25% less work per query
        than one at a time), then each query's candidates are re-ranked.

        ``exact=True`` scores every item instead (brute force over the same vectors, so
        the same scores): a mode rather than another class because it reads this index's
        slots, vectors and ids; the worker uses it on small catalogues, where it is as
        fast as LSH, and checks use it as the truth.

        ``probes``: probes per table for this call only (default: the index's T), as
        faiss's per-call search parameters: the recall monitor measures the answers the
        next lower T would give (``stream/watch.py``) without changing what is served.
        """
        if probes is not None and not (type(probes) is int and probes >= 1):
            raise ValueError(f"probes must be an int >= 1, got {probes!r}")
        heir = self._successor
        if heir is not None and not exact:  # a move under way: both layouts, old first
            mine = self._search_layout(queries, k, exclude, probes)
            return union_results(self._ids, mine, heir.search(queries, k, exclude,
                                                              probes=probes), k)
        return self._search_layout(queries, k, exclude, probes, exact)

    def _search_layout(self, queries: np.ndarray, k: int | Sequence[int],
                       exclude: Sequence[Collection[str]] | None, probes: int | None,
                       exact: bool = False) -> list[QueryResult]:
        """:meth:`search` in this index's own layout."""
        if exclude is None and not exact and self.compiled and probes is None:
            one = self._search_one(queries, k)
            if one is not None:
                return one
        qn, ks = self._prepare(queries, k)
        n = len(ks)
        if exclude is not None and len(exclude) != n:
            raise ValueError(f"{n} queries but {len(exclude)} exclude sets")
        excluded = self._excluded_slots(exclude, n)
        if exact:
            return self._exact_many(qn, ks, excluded)
        if n == 0:
            return []
        if self.compiled:
            return self._search_compiled(qn, ks, excluded, probes)
        keys = self.hasher.probe_keys(qn, probes or self.params.T)  # (n, L, T')
        per_query = keys.shape[1] * keys.shape[2]
        flat = keys.reshape(-1)
        table = self._buckets
        part, lo, hi = table.lookup(flat)
        out = []
        for i in range(n):
            a, b = i * per_query, (i + 1) * per_query
            if self.params.cap:
                _cap_window(flat[a:b], lo[a:b], hi[a:b], self.params.cap, qn[i])
            cand = self._gather(table, flat[a:b], part[a:b], lo[a:b], hi[a:b])
            out.append(self._rerank(cand, qn[i], ks[i], excluded[i]))
        return out

    def _search_one(self, query: object, k: object) -> list[QueryResult] | None:
        """One unit float32 query without exclusions (``recall bench index``, the
        tuner, single lookups; the worker's batches with exclusions take the general
        path), with the checks of :meth:`_prepare` cut to what that case needs; None for
        anything else (the general path then checks, normalises and reports). The
        generic checks and copies cost such a search ~4 us warm."""
        if (type(query) is not np.ndarray or type(k) is not int or k < 1
                or query.shape != (self.dim,) or query.dtype != np.float32
                or not query.flags.c_contiguous):
            return None
        qn = query[None, :]  # read by the kernel before this returns: no copy needed
        if not kernels.unit_rows(qn, 0.5 * UNIT_TOL):
            return None
        return self._search_compiled(qn, [k], _NO_EXCLUSIONS)

    def _search_compiled(self, qn: np.ndarray, ks: list[int], excluded: list[np.ndarray],
                         probes: int | None = None) -> list[QueryResult]:
        """:meth:`search` through :func:`recall.kernels.search_queries`: hashing, probing,
        lookup, gather, dedupe, vote, re-rank and top k of the whole batch in one compiled
        call (the pending buckets included)."""
        p, h, b, pend = self.params, self.hasher, self._buckets, self._pending
        t = probes or p.T
        n = len(ks)
        if n == 1:
            excl_ptr = _EXCL_PTR_ONE if not len(excluded[0]) else np.array(
                [0, len(excluded[0])], dtype=np.int64)
            excl = excluded[0] if len(excluded[0]) else _NO_SLOTS
            ks_arr = np.array(ks, dtype=np.int64)
        else:
            excl_ptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum([len(e) for e in excluded], out=excl_ptr[1:])
            excl = np.concatenate(excluded) if excl_ptr[-1] else _NO_SLOTS
            ks_arr = np.asarray(ks, dtype=np.int64)
        # b (the table's parts, whose addresses b.desc gives the kernel) is held until
        # the kernel returns, whatever a merge swaps in meanwhile
        opts = np.array([p.family == "pstable", h.probes_per_table(t) - 1, b.fresh,
                         self._stale > 0, p.cap, p.vote], dtype=np.int64)
        top_slots, top_scores, n_cand = kernels.search_queries(
            qn, ks_arr, h.proj, h.offset, h.mult, h.salt, h.template(t), h.w_array, opts,
            b.desc, self._vecs.view(np.uint16),
            self._in_main, pend.keys, pend.head, pend.entries, excl_ptr, excl, self._mark,
            self._seen)
        if n == 1:  # the worker's usual call: no copies, one id lookup
            row = top_slots[0]
            m = ks[0] if row[-1] >= 0 else int(np.count_nonzero(row >= 0))
            return [QueryResult(ids=self._ids.ids_of(row[:m]), scores=top_scores[0, :m],
                                candidates=int(n_cand[0]))]
        found = top_slots >= 0  # each row's results first, then -1s
        names = self._ids.ids_of(top_slots[found])  # the batch's ids in one call
        ends = np.cumsum(found.sum(axis=1)).tolist()
        out = []
        for i, end in enumerate(ends):
            m = end - (ends[i - 1] if i else 0)
            out.append(QueryResult(ids=names[end - m:end], scores=top_scores[i, :m].copy(),
                                   candidates=int(n_cand[i])))
        return out

    def _prepare(self, queries: np.ndarray, k: int | Sequence[int]
                 ) -> tuple[np.ndarray, list[int]]:
        arr = np.asarray(queries)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"expected queries of dimension {self.dim}, got shape "
                             f"{np.shape(queries)}")
        n = arr.shape[0]
        ks = list(k) if isinstance(k, (Sequence, np.ndarray)) else [k] * n
        if len(ks) != n:
            raise ValueError(f"{n} queries but {len(ks)} k values")
        for kk in ks:
            if isinstance(kk, bool) or not isinstance(kk, (int, np.integer)) or kk < 1:
                raise ValueError(f"k must be an integer >= 1, got {kk!r}")
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32), []
        if (arr.dtype == np.float32 and arr.flags.c_contiguous
                and kernels.unit_rows(arr, 0.5 * UNIT_TOL)):
            return arr.copy(), [int(kk) for kk in ks]  # what normalize() returns for them
        try:
            qn = normalize(arr)
        except ValueError as exc:
            raise ValueError(f"unusable query: {str(exc).replace('vector ', 'query ', 1)}"
                             ) from None
        return qn, [int(kk) for kk in ks]

    def _excluded_slots(self, exclude: Sequence[Collection[str]] | None, n: int
                        ) -> list[np.ndarray]:
        """The slots of each query's excluded ids (unknown ids left out), looked up in
        one call for the batch."""
        if exclude is None:
            return [np.zeros(0, dtype=np.int64) for _ in range(n)]
        sets = [(e,) if isinstance(e, str) else e for e in exclude]
        flat = [item_id for e in sets for item_id in e]
        slots = self._ids.slots(flat)
        bounds = np.cumsum([0] + [len(e) for e in sets]).tolist()
        return [(s := slots[a:b])[s >= 0] for a, b in pairwise(bounds)]

    def _gather(self, table: BucketTable, probes: np.ndarray, part: np.ndarray,
                lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Distinct slots of one query's probes, given their parts and [lo, hi) ranges
        there: the parts a merge under way filled already (``table.fresh``) hold the
        pending items and no stale entry; the others are read with the pending buckets,
        their stale entries skipped."""
        parts = []
        fresh = part < table.fresh
        for j in np.flatnonzero(hi > lo).tolist():
            slots = table.parts[part[j]].slots[lo[j]:hi[j]]
            if self._stale and not fresh[j]:
                slots = slots[self._in_main[slots]]
            parts.append(slots)
        if self._pending:
            bucket = self._pending.bucket
            cap = self.params.cap or None  # the cap holds for pending buckets too
            extra = [s for key, f in zip(probes.tolist(), fresh.tolist(), strict=True)
                     if not f for s in bucket(key)[:cap]]
            if extra:
                parts.append(np.asarray(extra, dtype=np.int32))
        if not parts:
            return np.zeros(0, dtype=np.int32)
        cand = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self.params.vote > 1:  # found in at least `vote` tables (one entry per table)
            uniq, counts = np.unique(cand, return_counts=True)
            return uniq[counts >= self.params.vote]
        order = np.arange(len(cand), dtype=np.int32)
        stamp = self._stamp
        stamp[cand] = order
        return cand[stamp[cand] == order]

    def _rerank(self, cand: np.ndarray, qn: np.ndarray, k: int,
                excluded: np.ndarray) -> QueryResult:
        """Exact cosine of the candidate slots, top k not excluded. The top k + (excluded
        items present) are ranked and the excluded ones dropped after: the same items as
        removing them from the candidates first, without an isin over every candidate."""
        return self._top(cand, _scores(self._vecs, cand, qn), k, len(cand), excluded)

    def _top(self, slots: np.ndarray, scores: np.ndarray, k: int, n_cand: int,
             excluded: np.ndarray) -> QueryResult:
        want = k + len(excluded)
        if len(scores) > want:  # the best `want`, and everything tied with the last
            kth = np.partition(-scores, want - 1)[want - 1]
            top = np.flatnonzero(-scores <= kth)
        else:
            top = np.arange(len(scores))
        top = top[np.lexsort((slots[top], -scores[top]))][:want]  # equal scores: by slot
        if len(excluded):
            top = top[~np.isin(slots[top], excluded)][:k]
        ids = self._ids.ids_of(slots[top])
        return QueryResult(ids=ids, scores=scores[top].astype(np.float32), candidates=n_cand)

    def _exact_many(self, qn: np.ndarray, ks: list[int], excluded: list[np.ndarray]
                    ) -> list[QueryResult]:
        """:meth:`_exact` for a batch, in one compiled call that holds no GIL
        (:func:`recall.exactkernels.exact_shortlists`: the recall monitor runs it in a
        thread beside the event loop): each item's vector is read once for all queries, and
        each query keeps the items within 1e-5 of its best k + 16 so far. The union holds
        every item :meth:`_exact`'s shortlist holds, so the answers are the same."""
        n, high = len(ks), self._high
        if n == 0:
            return []
        if n == 1:
            return [self._exact(qn[0], ks[0], excluded[0])]
        want = max(ks) + 16
        ex = [np.unique(e) for e in excluded]
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(e) for e in ex], out=ptr[1:])
        flat = np.concatenate(ex).astype(np.int64) if ptr[-1] else np.zeros(0, dtype=np.int64)
        slots, scores, fill = exactkernels.exact_shortlists(
            self._vecs.view(np.uint16), self._alive, high,
            np.ascontiguousarray(qn.T, dtype=np.float32), want, ptr, flat, EXACT_CAP)
        alive = int(np.count_nonzero(self._alive[:high]))
        no_excl = np.zeros(0, dtype=np.int64)
        out = []
        for i in range(n):
            live = alive - (int(np.count_nonzero(self._alive[ex[i]])) if len(ex[i]) else 0)
            m = int(fill[i])
            sl = np.sort(_shortlist(slots[i, :m], scores[i, :m], min(live, ks[i] + 16)))
            out.append(self._top(sl, _scores(self._vecs, sl, qn[i]), ks[i], live, no_excl))
        return out

    def _exact(self, qn: np.ndarray, k: int, excluded: np.ndarray) -> QueryResult:
        """Brute force over all live items: float32 scores pick a shortlist (ties at
        its end included), which is scored as the search scores and ranked."""
        high = self._high
        scores = np.empty(high, dtype=np.float32)
        for lo in range(0, high, EXACT_BLOCK):  # converted by blocks: no float32 copy of all
            hi = min(high, lo + EXACT_BLOCK)
            np.matmul(self._vecs[lo:hi].astype(np.float32), qn, out=scores[lo:hi])
        dead = ~self._alive[:high]
        if len(excluded):
            dead[excluded] = True
        live = np.flatnonzero(~dead)
        want = min(len(live), k + 16)  # margin: float32 and float64 sums can swap near-ties
        short = _shortlist(live, scores[live], want)
        no_excl = np.zeros(0, dtype=np.int64)
        res = self._top(short, _scores(self._vecs, short, qn), k, len(live), no_excl)
        return res


#: items converted to float32 and scored per matrix product by the single exact search
#: (a float32 copy of the block, 8 MB at 64 dimensions, instead of the whole catalogue)
EXACT_BLOCK = 32_768
#: per query, the shortlist buffer of the batched exact search (compacted when full)
EXACT_CAP = 512


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def union_results(ids: IdStore, a: list[QueryResult], b: list[QueryResult],
                  k: int | Sequence[int]) -> list[QueryResult]:
    """The best k of each query's two answers (:mod:`recall.lsh.move`: the old and the
    new layout of a move), as one search over both would rank them: by score, equal
    scores by slot, an item in both kept once (its exact score is the same in both);
    candidates add up."""
    ks = [k] * len(a) if isinstance(k, (int, np.integer)) else list(k)
    out = []
    for x, y, kk in zip(a, b, ks, strict=True):
        if not y.ids or not x.ids:
            best = x if x.ids else y
            out.append(QueryResult(best.ids, best.scores, x.candidates + y.candidates))
            continue
        names = x.ids + y.ids
        scores = np.concatenate([x.scores, y.scores])
        slots = ids.slots(names)
        order = np.lexsort((slots, -scores))
        ranked = slots[order]
        keep = order[np.r_[True, ranked[1:] != ranked[:-1]]][:int(kk)]
        out.append(QueryResult([names[i] for i in keep.tolist()], scores[keep],
                               x.candidates + y.candidates))
    return out


def _cap_window(keys: np.ndarray, lo: np.ndarray, hi: np.ndarray, cap: int,
                query: np.ndarray) -> None:
    """Cut each [lo, hi) longer than ``cap`` to the ``cap`` entries a hash of the query's
    float32 bits and the probe key picks (in place): the reference of
    ``recall.kernels.cap_window`` (a bucket lists its entries oldest first, so its first
    ``cap`` would hide the later items of a crowded region from every query)."""
    over = hi - lo > cap
    if not over.any():
        return
    seed = 0
    for bits in np.ascontiguousarray(query, dtype=np.float32).view(np.uint32).tolist():
        seed = ((seed ^ bits) * _GOLDEN) & _MASK64
        seed ^= seed >> 29
    h = (keys[over].view(np.uint64) ^ np.uint64(seed)) * np.uint64(_GOLDEN)
    h ^= h >> np.uint64(32)
    span = (hi[over] - lo[over] - cap + 1).astype(np.uint64)
    lo[over] += (h % span).astype(np.int64)
    hi[over] = lo[over] + cap


def _shortlist(slots: np.ndarray, scores: np.ndarray, want: int) -> np.ndarray:
    """The slots of the best ``want`` float32 scores and of every score within 1e-5 of
    the want-th (ties and near-ties, which the exact float64 scores may reorder): the
    one rule both exact searches use, so batched and single answers are the same."""
    if not 0 < want < len(scores):
        return slots
    kth = np.partition(-scores, want - 1)[want - 1]
    return slots[-scores <= kth + 1e-5]


def _scores(vectors: np.ndarray, slots: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact cosine of unit rows (float16) and a query: float64 sums of the products,
    rounded to float32 (what the compiled search computes, whatever the summation
    order)."""
    rows = np.take(vectors, slots, axis=0).astype(np.float64)
    return (rows @ q.astype(np.float64)).astype(np.float32)

