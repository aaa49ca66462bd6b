"""Chooses LSH parameters: the cheapest (family, k, L, w, vote, T) reaching a target
recall@k on the catalogue it will serve.

Role: called by ``recall tune`` (offline), ``recall bench index --tune`` and the worker's
re-tune. On a sample of the catalogue and user-like queries (means of 2-8 items that are
near each other), it computes the exact top-k, then walks a grid of hash layouts (family,
k, L, w); for each layout it builds one index and, for each vote setting (keep candidates
found in at least m of the L tables: fewer to re-rank, so more probes may pay), raises the
probes per table T (1, 2, 4, ...) until recall@k reaches the target with its whole 95%
interval (the query as the unit: the target is a promise about queries not seen). Among
the settings that reach it, and the untuned default as shipped (:func:`suggested_params`,
its probes included, on the same queries: tuning never picks a layout the default beats),
the one with the lowest median time per query wins (measured, not modelled from
candidates and probes: a vote setting re-ranks few candidates but gathers all it finds).
That time is one pass per setting, minutes apart, on a shared machine: the finalists (the
fastest few whose pass is within ``FINALIST_SPAN`` of the fastest) are timed again in
alternated passes over one vector matrix, and the choice is made there (:func:`_confirmed`).

A layout's cost depends on the catalogue's size: a bucket holds n/m times more items at n
than on an m-item sample, so the layout cheapest on a fifth of a 1M catalogue (k=9, T=8:
0.951 there) re-ranked 12,408 candidates at 1M, three times the default's 4,352 at the
same recall target. So when the sample is smaller than the catalogue, the sample only
ranks the layouts' shapes: the best few, with k scaled by :func:`scaled_k`, and the
untuned default (:func:`suggested_params`) are judged again with every item hashed and
user-like queries made from the whole catalogue, and the choice is made there
(``judged_items``). A catalogue still to grow (``serve_items``: the worker re-tuning on a
sample of what it serves) gets k scaled to that size, which cannot be measured yet: the
worker's recall monitor measures it live and sets the probes.

Memory. A worker's memory is a budget, not a price: a deployment is sized for it, and
a layout that needs more does not serve a little slower, it does not fit. Time is paid
per query, in proportion. So the choice is lexicographic, not a weighted sum: index
arrays held to ``max_index_bytes`` (by default what the default layout takes on the same
items: tuning never costs memory the defaults did not already need), and within that
the fastest; times within ``TIME_TIE`` of the fastest are a tie, which the smaller index
wins (memory left over is headroom for merges).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from recall import kernels
from recall.lsh import LSHIndex, LSHParams, normalize
from recall.lsh.index import _normalize_blocks
from recall.lsh.params import UNIT_TOL
from recall.tunejudge import (
    TIME_TIE,
    Trial,
    _cheapest,
    alternated_ms,
    clearly_faster,
    evaluate,
    exact_topk,
    user_like_queries,
)

PROBE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128)


#: layout shapes (family, L, w) of the sample's best trials judged again at full size
FULL_SIZE_SHAPES = 3
#: user-like queries of the full-size judgement (where the choice is made): a choice must
#: meet the target with its whole 95% interval (:meth:`Trial.meets`), +-0.007 on 1,000
#: queries against +-0.012 on 300, so it need not over-shoot the target as far
JUDGE_QUERIES = 1000
#: the most finalists timed again in alternated passes (:func:`_confirmed`), each shape's
#: bucket table held at once (<= 256 MiB each at 1M, the default's budget)
FINALISTS = 3
#: a setting is a finalist when its one pass is within this fraction of the fastest, wider
#: than the tie: one pass each in a loaded 1M run put simhash k=18 L=16 T=4 29% behind
#: k=20 L=8 T=16 (0.116 against 0.090 ms), which quiet benches timed 0.121-0.128 against
#: 0.134 ms; within the 10% tie no finalists were left to confirm in that run or the next
FINALIST_SPAN = 0.5
#: alternated timing passes of the tuner's finalists (:func:`_confirmed`) and of a move
#: judged on a whole catalogue (:func:`confirmed_move`)
CONFIRM_PASSES = 5


@dataclass
class TuneResult:
    params: LSHParams
    recall: float
    candidates: float
    query_ms: float
    target_recall: float
    k: int
    sample_items: int
    sample_queries: int  # the queries of the sample's walk
    reached: bool
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    #: catalogue size the choice was measured on (the sample's when no larger one)
    judged_items: int = 0
    #: queries of the full-size judgement (0: none)
    judged_queries: int = 0
    #: catalogue size k was scaled to beyond what could be measured (0: none)
    serve_items: int = 0
    recall_low: float = 0.0
    recall_high: float = 1.0
    #: the default layout at the judged size (:func:`suggested_params`), the baseline
    baseline: Trial | None = None
    #: the chosen layout's index arrays at the judged size, and the budget they were held to
    nbytes: int = 0
    max_index_bytes: int = 0
    #: False when no layout within the memory budget reached the target (the one
    #: reaching it with the least memory was chosen)
    within_budget: bool = True
    #: the finalists timed again in alternated passes (:func:`_confirmed`; none: the
    #: single passes chose), and each one's median ms in each pass
    finalists: list[Trial] = field(default_factory=list)
    finalist_ms: list[list[float]] = field(default_factory=list)

    def summary(self) -> str:
        verdict = ("cheapest whose recall interval reaches" if self.reached
               else "target NOT reached; best recall at")
        lines = [f"tuned on {self.sample_items} items, {self.sample_queries} user-like "
                 f"queries, {len(self.trials)} settings tried in {self.seconds:.1f}s"]
        if self.judged_items > self.sample_items:
            lines.append(f"the sample's best layouts judged again on all {self.judged_items} "
                         f"items with {self.judged_queries} queries")
        lines.append(
            f"chose {self.params.describe()} ({verdict} recall@{self.k} >= "
            f"{self.target_recall:g} at {self.judged_items} items): recall {self.recall:.3f} "
            f"({self.recall_low:.3f}-{self.recall_high:.3f}), "
            f"{self.candidates:.0f} candidates/query, {self.query_ms:.3f} ms/query, "
            f"index arrays {self.nbytes / 2**20:.0f} MiB")
        lines.append(f"memory budget {self.max_index_bytes / 2**20:.0f} MiB of index arrays"
                     + ("" if self.within_budget else ": NO layout reaching the target fits "
                        "it; the one with the least memory was chosen"))
        if self.baseline is not None:
            b = self.baseline
            lines.append(f"default {b.params.describe()}: recall {b.recall:.3f} "
                         f"({b.recall_low:.3f}-{b.recall_high:.3f}), {b.candidates:.0f} "
                         f"candidates/query, {b.query_ms:.3f} ms/query, index arrays "
                         f"{b.nbytes / 2**20:.0f} MiB")
        if self.finalists:
            lines.append(f"finalists (the fastest within {FINALIST_SPAN:.0%} in one pass) in "
                         f"{len(self.finalist_ms[0])} alternated passes: " + "; ".join(
                             f"{t.params.describe()} {np.median(ms):.3f} ms "
                             f"({min(ms):.3f}-{max(ms):.3f})"
                             for t, ms in zip(self.finalists, self.finalist_ms, strict=True)))
        if self.serve_items:
            lines.append(f"k scaled for {self.serve_items} items (not measured there: the "
                         "recall monitor sets the probes)")
        chosen = (self.recall, self.candidates, self.query_ms)  # (k may be scaled)
        ok = sorted((t for t in self.trials if t.meets(self.target_recall)
                     and t.items == self.judged_items
                     and (t.recall, t.candidates, t.query_ms) != chosen),
                    key=lambda t: t.query_ms)[:3]
        if ok:
            lines.append("runners-up: " + "; ".join(
                f"{t.params.describe()} {t.query_ms:.3f} ms {t.candidates:.0f} cand. "
                f"r={t.recall:.3f}" for t in ok))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def suggested_params(n: int, dim: int, seed: int = 42) -> LSHParams:
    """Untuned starting point for a catalogue of n items: p-stable with about
    log2(n)/2 hashes per table, 16 tables, a few probes each. Measured on clustered
    1M x 64 (offline.synthetic): recall@10 ~0.96 with ~4k candidates per query."""
    k = max(2, min(14, round(math.log2(max(n, 4)) / 2)))
    return LSHParams(family="pstable", dim=dim, k=k, L=16, w=1.25, T=5, seed=seed)


def scaled_k(family: str, k: int, items: int, to_items: int) -> int:
    """k for a catalogue of ``to_items`` given a k right for ``items``: buckets keep their
    occupancy when k grows with the log of the size. A SimHash bit halves the share of
    the catalogue in a bucket, so one more per doubling; a p-stable hash at the widths
    tried, about one per two doublings (as :func:`suggested_params` and the grid of
    :func:`default_layouts` scale)."""
    per_doubling = 1.0 if family == "simhash" else 0.5
    grow = per_doubling * math.log2(max(to_items, 1) / max(items, 1))
    return max(1, min(64, k + round(grow)))


def default_layouts(n: int, dim: int) -> list[tuple[str, int, int, float]]:
    """(family, k, L, w) grid scaled to the sample size (more items -> more bits)."""
    lg = max(4, round(math.log2(max(n, 16))))
    layouts: list[tuple[str, int, int, float]] = []
    for L in (8, 16):
        for k in range(max(6, lg - 6), lg + 3, 2):
            layouts.append(("simhash", k, L, 1.0))
        for w in (0.75, 1.25):
            for k in range(max(2, lg // 2 - 4), lg // 2 + 3, 2):
                layouts.append(("pstable", k, L, w))
    return layouts


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """The rows as unit float32: ``vectors`` itself when they are (read-only here: no
    second 256 MB at 1M x 64), else a copy made block by block (normalize() of a whole
    1M x 64 matrix held a float64 copy: 512 MB). The check is the search's own
    (:func:`recall.kernels.unit_rows` at half normalize()'s tolerance): rows it passes
    are those normalize() returns unchanged."""
    if (vectors.dtype == np.float32 and vectors.ndim == 2
            and kernels.unit_rows(vectors, 0.5 * UNIT_TOL)):
        return vectors
    return _normalize_blocks(vectors)


def bulk_index(params: LSHParams, x: np.ndarray) -> LSHIndex:
    """An index of every row of x (ids "0", "1", ...), built in one bulk pass (~5 s at
    1M x 64), staged 65,536 rows at a time: staged at once, stage()'s normalised copy
    (244 MB at 1M x 64) and 1M id strs (~65 MB) were the cost re-tune child's peak."""
    index = LSHIndex(params)
    index.reserve(len(x))
    for a in range(0, len(x), 65_536):
        index.stage([str(i) for i in range(a, min(a + 65_536, len(x)))], x[a:a + 65_536])
    index.build()
    return index


def _ramp(index: LSHIndex, votes: Sequence[int], q: np.ndarray, truth: np.ndarray, k: int,
          target: float) -> list[Trial]:
    """For each vote setting, the probes raised (PROBE_STEPS) until the target is met."""
    trials = []
    for vote in (v for v in votes if 1 <= v <= index.params.L):
        index.vote = vote
        for T in PROBE_STEPS:
            index.probes = T
            trial = evaluate(index, q, truth, k)
            trials.append(trial)
            if trial.meets(target):
                break
    return trials


def _walk(layouts: Sequence[tuple[str, int, int, float]], x: np.ndarray, q: np.ndarray,
          truth: np.ndarray, k: int, target: float, votes: Sequence[int], seed: int,
          default: LSHParams, desc: str, progress: bool) -> tuple[list[Trial], Trial | None]:
    """Each layout built on x (one at a time), its probes ramped per vote (:func:`_ramp`);
    and the default's baseline (:func:`_baseline`) when its layout is among them."""
    from tqdm import tqdm

    base = (default.family, default.k, default.L, default.w)
    trials: list[Trial] = []
    baseline: Trial | None = None
    bar = tqdm(layouts, desc=desc, unit="layout", disable=not progress)
    for family, kk, L, w in bar:
        bar.set_postfix_str(f"{family} k={kk} L={L} w={w:g}")
        index = bulk_index(LSHParams(family=family, dim=x.shape[1], k=kk, L=L, w=w, T=1,
                                 seed=seed), x)
        trials.extend(_ramp(index, votes, q, truth, k, target))
        if (family, kk, L, w) == base:
            baseline = _baseline(index, default, q, truth, k)
        del index
    bar.close()
    return trials, baseline


def _baseline(index: LSHIndex, default: LSHParams, q: np.ndarray, truth: np.ndarray,
              k: int) -> Trial:
    """The untuned default layout as shipped (its probes, no vote) on these queries."""
    index.vote, index.probes = default.vote, default.T
    return evaluate(index, q, truth, k)


def _layout_bytes(params: LSHParams, x: np.ndarray, trials: Sequence[Trial]) -> int:
    """The index arrays of ``params``' layout over x: from a trial of it, else built."""
    shape = (params.family, params.k, params.L, params.w)
    for t in trials:
        p = t.params
        if (p.family, p.k, p.L, p.w) == shape and t.items == len(x):
            return t.nbytes
    return bulk_index(params, x).nbytes()


def _full_size_layouts(trials: Sequence[Trial], target: float, items: int, n: int,
                       default: LSHParams, budget: float = math.inf,
                       also: Sequence[tuple[str, int, int, float]] = (),
                       ) -> list[tuple[str, int, int, float]]:
    """The sample's best few layout shapes with k scaled from ``items`` to ``n`` (the
    best one also one hash finer: the scaling is a rule of thumb, and the finer layout
    re-ranks fewer candidates if the probes make up its recall), and the default.
    Shapes over the sample's memory ``budget`` rank after those within it (k scaled with
    the size keeps the entries and buckets per item, so the ratio carries over), and
    the layouts ``also`` (a worker's served layout, at its size)."""
    ranked = sorted(trials, key=lambda t: (not t.meets(target), t.nbytes > budget,
                                           t.query_ms if t.meets(target) else -t.recall))
    out: list[tuple[str, int, int, float]] = []
    shapes: list[tuple[str, int, float]] = []
    for t in ranked:
        p = t.params
        if (p.family, p.L, p.w) in shapes:
            continue
        shapes.append((p.family, p.L, p.w))
        kk = scaled_k(p.family, p.k, items, n)
        out.append((p.family, kk, p.L, p.w))
        if len(shapes) == 1 and kk < 64:
            out.append((p.family, kk + 1, p.L, p.w))
        if len(shapes) == FULL_SIZE_SHAPES:
            break
    base = (default.family, default.k, default.L, default.w)
    return list(dict.fromkeys([*out, base, *also]))


def _finalists(trials: Sequence[Trial], target: float, budget: float,
               most: int = FINALISTS) -> list[Trial]:
    """Of the settings reaching the target within ``budget``, the ``most`` fastest whose
    one pass is within FINALIST_SPAN of the fastest, smallest index first (the one the
    tie rule favours); none when fewer than two."""
    fits = [t for t in trials if t.meets(target) and t.nbytes <= budget]
    if not fits:
        return []
    fastest = min(t.query_ms for t in fits)
    tied = sorted((t for t in fits if t.query_ms <= fastest * (1 + FINALIST_SPAN)),
                  key=lambda t: t.query_ms)[:most]
    return sorted(tied, key=lambda t: (t.nbytes, t.query_ms)) if len(tied) > 1 else []


def _confirmed(finalists: Sequence[Trial], x: np.ndarray, q: np.ndarray, k: int,
               ) -> tuple[Trial, list[list[float]]]:
    """The choice among ``finalists`` (smallest index first) and each one's median ms in
    each of CONFIRM_PASSES alternated passes (:func:`alternated_ms`, all over one vector
    matrix: :meth:`LSHIndex.relayout`). The smallest index holds unless a larger one is
    faster by more than TIME_TIE in the median pass and in every pass
    (:func:`clearly_faster`), as a worker's move must be; each one that is becomes the one
    to beat. One pass per setting chose simhash k=20 L=8 T=16 on one quiet 1M run and
    k=18 L=16 T=4 on two, their p50 1.88x and 0.63-0.67x hnswlib's in the bench."""
    indexes: dict[tuple[str, int, int, float], LSHIndex] = {}
    last: LSHIndex | None = None
    for t in finalists:  # one index per shape, each over the last one's arrays
        if shape_of(t.params) not in indexes:
            last = (bulk_index(t.params, x) if last is None
                    else last.relayout(t.params))
            indexes[shape_of(t.params)] = last
    times = alternated_ms([(indexes[shape_of(t.params)], t.params) for t in finalists],
                          q, k, CONFIRM_PASSES)
    best = 0
    for i in range(1, len(finalists)):
        if clearly_faster(times[i], times[best]):
            best = i
    return finalists[best], times


def tune(
    vectors: np.ndarray,
    queries: np.ndarray | None = None,
    target_recall: float = 0.95,
    k: int = 10,
    *,
    n_queries: int = 300,
    max_items: int | None = None,
    serve_items: int | None = None,
    layouts: Sequence[tuple[str, int, int, float]] | None = None,
    families: Sequence[str] = ("pstable", "simhash"),
    votes: Sequence[int] = (1, 2),
    seed: int = 42,
    max_index_bytes: int | None = None,
    judge_also: Sequence[tuple[str, int, int, float]] = (),
    finalists: int = FINALISTS,
    progress: bool = True,
) -> TuneResult:
    """Pick the cheapest LSH parameters reaching `target_recall` recall@k on the
    catalogue they will serve.

    vectors: (n, D) catalogue. max_items: the grid is walked on a sample of that many
    items; the best layouts are then judged again on all n (module docstring).
    serve_items: the catalogue will hold that many items (> n; e.g. vectors is a sample
    of what a worker serves): k is scaled to it. queries: (Q, D) user vectors; default:
    `n_queries` user-like queries made from the catalogue judged. votes: the vote settings
    tried on every layout (a candidate must be found in that many tables): voting re-ranks
    fewer candidates, so it can pay for more probes. max_index_bytes: the memory budget,
    bytes of index arrays at the catalogue's size; default: what the default layout
    (:func:`suggested_params`) takes there (see "Memory" in the module docstring).
    judge_also: layouts (family, k, L, w) judged at full size whatever the sample says
    (a worker's served layout, to compare a move with on the same queries).
    finalists: the most settings tied in their one pass that are timed again in
    alternated passes to choose (:func:`_confirmed`); below 2: the single pass chooses.
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    full = _unit_rows(np.asarray(vectors))
    if full.ndim != 2 or len(full) == 0:
        raise ValueError("tune needs a non-empty (n, D) matrix of vectors")
    x = full
    if max_items is not None and len(full) > max_items:
        x = full[np.sort(rng.choice(len(full), size=max_items, replace=False))]
    n, dim = x.shape
    given = None if queries is None else normalize(queries)
    q = user_like_queries(x, n_queries, seed=seed) if given is None else given
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must have shape (Q, {dim}), got {q.shape}")
    truth = exact_topk(x, q, k)
    grid = [lay for lay in (layouts or default_layouts(n, dim)) if lay[0] in families]
    if len(full) == n:  # no sample: what is walked is judged
        grid = list(dict.fromkeys([*grid, *judge_also]))
    default = suggested_params(len(full), dim, seed)
    trials, baseline = _walk(grid, x, q, truth, k, target_recall, votes, seed, default,
                             "tuning LSH", progress)
    judged, judged_on = trials, x
    walked_queries, judged_queries = len(q), 0
    if len(full) > n:  # judged again where it will serve: every item hashed
        sample_budget = (max_index_bytes * n / len(full) if max_index_bytes is not None
                         else _layout_bytes(suggested_params(n, dim, seed), x, trials))
        full_layouts = _full_size_layouts(trials, target_recall, n, len(full), default,
                                          sample_budget, judge_also)
        x = judged_on = full  # the sample's copy (49 MB at 1M x 64) goes before the walk
        q = (user_like_queries(full, max(n_queries, JUDGE_QUERIES), seed=seed)
             if given is None else given)
        truth = exact_topk(full, q, k)
        judged, baseline = _walk(full_layouts, full, q, truth, k, target_recall, votes, seed,
                                 default, f"judging at {len(full)} items", progress)
        trials, judged_on = trials + judged, full
        judged_queries = len(q)
    if baseline is None:  # the simple strong baseline, on the same queries
        baseline = _baseline(bulk_index(default, judged_on), default, q, truth, k)
    if default.family in families:
        # the default as shipped (its probes are on no ramp) competes on the same footing:
        # same items and queries, same timing, same rule. Left out, a quiet 1M run chose
        # simhash k=16 L=8 at 0.169 ms over the default's 0.135 ms, within the budget
        judged, trials = [*judged, baseline], [*trials, baseline]
    budget = baseline.nbytes if max_index_bytes is None else int(max_index_bytes)
    best, reached, fits = _cheapest(judged, target_recall, budget)
    final = _finalists(judged, target_recall, budget, finalists) if finalists > 1 else []
    final_ms: list[list[float]] = []
    if final:  # tied in one pass each: timed again side by side
        best, final_ms = _confirmed(final, judged_on, q, k)
    params = best.params
    serve = 0
    if serve_items is not None and serve_items > len(full):
        serve = int(serve_items)
        params = replace(params, k=scaled_k(params.family, params.k, len(full), serve))
    return TuneResult(
        params=params, recall=best.recall, candidates=best.candidates,
        query_ms=best.query_ms, target_recall=target_recall, k=k, sample_items=n,
        sample_queries=walked_queries, judged_queries=judged_queries, reached=reached,
        trials=trials,
        seconds=time.perf_counter() - started, judged_items=len(full) if len(full) > n
        else n, serve_items=serve, recall_low=best.recall_low,
        recall_high=best.recall_high, baseline=baseline, nbytes=best.nbytes,
        max_index_bytes=budget, within_budget=fits, finalists=final,
        finalist_ms=final_ms,
    )


#: a worker moves to a cheaper layout only for at least this share fewer candidates per
#: query, or less index memory, than its own layout judged on the same sample and
#: queries: a move costs a copy of the catalogue in Redis and a re-hash of every item in
#: each worker, and a sample's figures are those of a sample
MOVE_GAIN = 0.2


def shape_of(params: LSHParams) -> tuple[str, int, int, float]:
    """(family, k, L, w): what a layout's bucket table depends on (T and vote do not)."""
    return (params.family, params.k, params.L, params.w)


def cheaper_move(result: TuneResult, current: tuple[str, int, int, float],
                 gain: float = MOVE_GAIN) -> str | None:
    """Why the tuned choice is worth moving to from the ``current`` layout shape (as
    walked in the same tune: same items, same queries), or None. The current layout is
    taken at its own best setting by the tuner's rule (:func:`_cheapest`). Worth moving
    when the choice reached the target within its memory budget and is ``gain`` cheaper
    on one count without being dearer on the others: ``gain`` fewer candidates per query
    and no slower, or ``gain`` faster and no more candidates (both counts must agree:
    times are measured beside live traffic, and a vote setting re-ranks few candidates
    but gathers many), or ``gain`` less index memory and neither. More memory than the
    current layout is fine within the budget (the default's). A current layout that did
    not reach the target there gives no comparison: the worker's live recall says it
    holds, so the sample is not telling the same story."""
    if not (result.reached and result.within_budget):
        return None
    mine = [t for t in result.trials if shape_of(t.params) == current
            and t.items == result.judged_items]
    if not mine:
        return None
    base, reached, _ = _cheapest(mine, result.target_recall)
    if not reached:
        return None
    cand, ms, size = result.candidates, result.query_ms, result.nbytes
    keep = 1 - gain
    if ((cand <= keep * base.candidates and ms <= base.query_ms)
            or (ms <= keep * base.query_ms and cand <= base.candidates)
            or (size <= keep * base.nbytes and cand <= base.candidates
                and ms <= base.query_ms)):
        return (f"{cand:.0f} candidates/query, {ms:.3f} ms, {size / 2**20:.1f} MiB against "
                f"{base.params.describe()}'s {base.candidates:.0f}, {base.query_ms:.3f} ms, "
                f"{base.nbytes / 2**20:.1f} MiB on the same sample")
    return None


def move_candidates(result: TuneResult, current: tuple[str, int, int, float],
                    ) -> tuple[Trial | None, list[Trial], str]:
    """(the ``current`` layout shape at its best setting, the layouts a move could go to,
    why none), of the trials judged at the result's size. The other layouts at their best
    setting (:func:`_cheapest`) reaching the target within the tune's budget, the
    ``FINALISTS`` fastest whose one pass is within ``FINALIST_SPAN`` of the fastest (as
    the tuner's finalists), and the smallest table of all (a worker whose memory budget
    allows no larger move may still gain from it, if it is clearly faster than the served
    one), smallest index first: the one the tie rule favours (a smaller table is a lower
    RSS, and a move that holds less beside the served one). Before, the
    one-pass pick within the served layout's memory and within the budget were the only
    ones timed: one pass put a 16-table layout ahead of an 8-table one by more than the
    tie, and the worker moved to the larger table."""
    judged = [t for t in result.trials if t.items == result.judged_items]
    mine = [t for t in judged if shape_of(t.params) == current]
    if not mine:
        return None, [], "the served layout was not judged"
    base, reached, _ = _cheapest(mine, result.target_recall)
    if not reached:
        return None, [], f"{base.params.describe()} does not reach the target here"
    best: list[Trial] = []
    for shape in dict.fromkeys(shape_of(t.params) for t in judged):
        if shape != current:
            pick, ok, fits = _cheapest([t for t in judged if shape_of(t.params) == shape],
                                       result.target_recall, result.max_index_bytes)
            if ok and fits:
                best.append(pick)
    if not best:
        return base, [], "no other layout reaches the target in budget"
    fastest = min(t.query_ms for t in best)
    near = sorted((t for t in best if t.query_ms <= fastest * (1 + FINALIST_SPAN)),
                  key=lambda t: t.query_ms)[:FINALISTS]
    smallest = min(best, key=lambda t: (t.nbytes, t.query_ms))
    near += [] if smallest in near else [smallest]
    return base, sorted(near, key=lambda t: (t.nbytes, t.query_ms)), ""


def preferred(picks: Sequence[Trial], times: Sequence[Sequence[float]]) -> list[int]:
    """The order a worker would move to ``picks`` (smallest index first, each one's
    alternated ``times``): the smallest, unless a larger one is clearly faster than it
    (:func:`clearly_faster`, the tuner's tie), each such one becoming the one to beat (as
    :func:`_confirmed`); then, should that one not fit the worker's memory, the same
    choice among the smaller ones (a smaller table holds less beside the served one)."""
    order: list[int] = []
    left = list(range(len(picks)))
    while left:
        best = left[0]
        for i in left[1:]:
            if clearly_faster(times[i], times[best]):
                best = i
        order.append(best)
        left = [i for i in left if picks[i].nbytes < picks[best].nbytes]
    return order


def confirmed_move(result: TuneResult, current: tuple[str, int, int, float],
                   served: LSHIndex | None, queries: np.ndarray, gain: float = TIME_TIE,
                   ) -> tuple[list[tuple[LSHParams, str]], str, list[float]]:
    """The layouts worth moving to from the ``current`` layout shape, best first, each
    with why, from a tune judged on the whole catalogue with that shape beside its
    choice (``judge_also``); ``served``: that shape's index over the whole catalogue
    (None only when :func:`move_candidates` proposes nothing); none: why not; the time
    ratios (the first move, else the first proposal, against the current layout) of the
    alternated passes. The proposals' tables are built over the served index's arrays
    (:meth:`LSHIndex.relayout`): the caller need not hold the float32 matrix meanwhile.

    The current layout at its best setting and the proposals (:func:`move_candidates`)
    all reach the target with their whole recall interval on the same queries (a worker
    holds its target: the probe controller lowers T toward it). A proposal faster by
    more than the tuner's tie in the median of ``CONFIRM_PASSES`` passes, and in every
    pass, is worth a move (a 1M run found 0.84x, passes 0.77-0.96, 191 MiB against 256:
    MOVE_GAIN's 20% guards a sample's guess); among those, the smallest index first
    unless a larger one is clearly faster than it (:func:`preferred`): the worker moves
    to the first its memory budget allows. Timed alternately, all over one vector
    matrix (:meth:`LSHIndex.relayout`): the tune's one pass per layout is minutes apart
    beside a worker's traffic (a quiet 1M run: the default 0.135 ms in the tuner, 0.188
    in the bench). Candidates do not decide: simhash L=8 re-ranks more but is faster."""
    base, picks, why = move_candidates(result, current)
    if base is None or not picks or served is None:
        return [], why, []
    runs, last = [(served, base.params)], served
    for pick in picks:  # each over the last one's arrays: all stay searchable
        last = last.relayout(pick.params)
        runs.append((last, pick.params))
    mine, *theirs = alternated_ms(runs, queries, result.k, CONFIRM_PASSES)
    ratios = [[a / b for a, b in zip(t, mine, strict=True)] for t in theirs]
    whys = []
    for pick, r in zip(picks, ratios, strict=True):
        ratio = float(np.median(r))
        whys.append(f"{pick.params.describe()}: {ratio:.2f}x the time of "
                    f"{base.params.describe()} (passes {min(r):.2f}-{max(r):.2f}), recall "
                    f"{pick.recall:.3f} against {base.recall:.3f}, {pick.nbytes / 2**20:.0f} "
                    f"against {base.nbytes / 2**20:.0f} MiB of index arrays, on all "
                    f"{len(served)} items")
    movable = [i for i, t in enumerate(theirs) if clearly_faster(t, mine, gain)]
    if not movable:
        return [], "not clearly faster: " + "; ".join(whys), ratios[0]
    order = [movable[i] for i in preferred([picks[i] for i in movable],
                                           [theirs[i] for i in movable])]
    return [(picks[i].params, whys[i]) for i in order], "; ".join(whys), ratios[order[0]]
