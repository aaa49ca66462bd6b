"""The tuner's measurements and its rule: what a layout is judged by, apart from the walk
over layouts that :mod:`recall.tuner` makes.

Role: exact top-k and user-like queries (the ground truth a layout is judged against),
a layout's recall with its 95% interval (the query as the unit), the median time of one
search (what a lone request waits), and the choice among trials (:func:`_cheapest`: the
target reached, within a memory budget, the fastest; times within ``TIME_TIE`` a tie).
Kept apart from the walk so the timing and the rule are one code, whoever asks: the
tuner's walk, its full-size judgement and a worker's whole-catalogue move.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recall.lsh import LSHIndex, LSHParams, QueryResult, normalize
from recall.monitor import Estimate, mean_interval


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """(Q, k) row indices of the exact top-k by inner product (unit vectors: cosine),
    a block of queries at a time: scores and argpartition's indices ~48 MB (scores alone
    held to 64 MB, with a negated copy, held 256 MB at 1M items: a re-tune child's peak)."""
    n = len(vectors)
    k = min(k, n)
    block = max(1, min(block, (4 << 20) // max(n, 1)))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ vectors.T
        out[start : start + block] = np.argpartition(scores, n - k, axis=1)[:, n - k:]
    return out


def user_like_queries(
    vectors: np.ndarray,
    n: int,
    seed: int = 0,
    group: tuple[int, int] = (2, 8),
    neighbourhood: int = 32,
) -> np.ndarray:
    """n queries, each the normalised mean of 2-8 items picked among the `neighbourhood`
    nearest items of a random seed item (what a user's recent clicks look like)."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, len(vectors), size=n)
    near = exact_topk(vectors, vectors[seeds], min(neighbourhood, len(vectors)))
    sizes = rng.integers(group[0], group[1] + 1, size=n)
    out = np.empty((n, vectors.shape[1]), dtype=np.float32)
    for i in range(n):
        pick = rng.choice(near[i], size=min(int(sizes[i]), near.shape[1]), replace=False)
        out[i] = vectors[pick].mean(axis=0)
    return normalize(out)


def query_hits(found: Sequence[Iterable[int]], truth: np.ndarray) -> list[float]:
    """Per query, the fraction of its exact top-k row found."""
    return [len(set(f) & set(t.tolist())) / max(len(t), 1)
            for f, t in zip(found, truth, strict=True)]


def recall_at_k(found: Sequence[Iterable[int]], truth: np.ndarray) -> float:
    """Mean fraction of each exact top-k row found."""
    hits = query_hits(found, truth)
    return float(np.mean(hits)) if hits else 0.0


@dataclass
class Trial:
    params: LSHParams
    recall: float
    candidates: float  # mean per query
    query_ms: float  # median time of one search (what a lone request waits)
    items: int = 0  # catalogue size the trial was measured on
    recall_low: float = 0.0  # 95% interval of the recall, the query as the unit
    recall_high: float = 1.0
    nbytes: int = 0  # the index's arrays (LSHIndex.nbytes) on the items measured

    def meets(self, target: float) -> bool:
        """The whole 95% interval of the recall at or above ``target``: a layout chosen
        where only its mean was (0.952 on the tuner's 300 queries at 1M) gave 0.949 on
        the bench's 1,000 others; a recall target is a promise about queries not seen."""
        return self.recall_low >= target

    def as_dict(self) -> dict[str, Any]:
        return {**self.params.to_dict(), "recall": round(self.recall, 4),
                "recall_ci": [round(self.recall_low, 4), round(self.recall_high, 4)],
                "candidates": round(self.candidates, 1), "query_ms": round(self.query_ms, 4),
                "items": self.items, "index_mib": round(self.nbytes / 2**20, 1)}


def evaluate(index: LSHIndex, queries: np.ndarray, truth: np.ndarray, k: int) -> Trial:
    """Recall (with its 95% interval), candidates and the median time of one search per
    query (what a lone request sees; a few preempted queries moved the mean 2x)."""
    index.search(queries[0], k)  # a first call may find cold caches
    results, lat = _timed_searches(index, queries, k)
    cands = sum(res.candidates for res in results)
    hits = query_hits([[int(i) for i in res.ids] for res in results], truth)
    mean = float(np.mean(hits)) if hits else 0.0
    est = mean_interval(hits) or Estimate(mean, mean, mean, len(hits))
    return Trial(index.params, mean, cands / len(queries), 1000 * float(np.median(lat)),
                 items=len(index), recall_low=est.low, recall_high=est.high,
                 nbytes=index.nbytes())


#: medians within this fraction of the fastest are a tie (one layout's median moved ~10%
#: between runs here), won by the smaller index
TIME_TIE = 0.10


def _cheapest(trials: Sequence[Trial], target: float,
              budget: float = math.inf) -> tuple[Trial, bool, bool]:
    """(choice, target reached, within the memory budget): of the trials reaching the
    target within ``budget`` bytes of index arrays, the fastest (a tie within TIME_TIE:
    the smallest index); none within budget: the one with the least memory; none
    reaching the target: the best recall."""
    reached = [t for t in trials if t.meets(target)]
    if not reached:
        return max(trials, key=lambda t: (t.recall, -t.query_ms)), False, True
    fits = [t for t in reached if t.nbytes <= budget]
    if not fits:
        return min(reached, key=lambda t: (t.nbytes, t.query_ms)), True, False
    fastest = min(t.query_ms for t in fits)
    tied = [t for t in fits if t.query_ms <= fastest * (1 + TIME_TIE)]
    return min(tied, key=lambda t: (t.nbytes, t.query_ms)), True, True


def _timed_searches(index: LSHIndex, queries: np.ndarray, k: int,
                    ) -> tuple[list[QueryResult], np.ndarray]:
    """Each query searched alone, as a lone request is, and its wall time in seconds: the
    one timing loop of a layout's pass, whether its recall is judged too
    (:func:`evaluate`) or only its time (:func:`_median_ms`), so both time the same."""
    results: list[QueryResult] = []
    lat = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        results.append(index.search(q, k)[0])
        lat[i] = time.perf_counter() - t0
    return results, lat


def _median_ms(index: LSHIndex, queries: np.ndarray, k: int) -> float:
    """The median ms of one search over ``queries`` (:func:`_timed_searches`)."""
    return 1000 * float(np.median(_timed_searches(index, queries, k)[1]))


def alternated_ms(runs: Sequence[tuple[LSHIndex, LSHParams]], queries: np.ndarray, k: int,
                  passes: int) -> list[list[float]]:
    """Per run (an index searched at its params' probes and vote; runs may share an
    index), its median ms (:func:`_median_ms`) in each of ``passes`` passes, the runs
    timed one after another within each pass. Load that comes and goes then falls on all
    of them alike: one pass per layout, minutes apart in the tuner's walk, timed the
    default 0.135 ms there and 0.188 ms in the bench on a quiet 1M run."""
    for index, params in runs:
        index.probes, index.vote = params.T, params.vote
        index.search(queries[0], k)  # a first call may find cold caches
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(passes):
        for out, (index, params) in zip(times, runs, strict=True):
            index.probes, index.vote = params.T, params.vote
            out.append(_median_ms(index, queries, k))
    return times


def clearly_faster(times: Sequence[float], than: Sequence[float],
                   gain: float = TIME_TIE) -> bool:
    """``times`` beat ``than`` (the same alternated passes, :func:`alternated_ms`) by more
    than ``gain`` in the median pass's ratio and in every pass: a median alone let a
    layout win on a few passes taken while the other was preempted."""
    ratios = [a / b for a, b in zip(times, than, strict=True)]
    return bool(ratios) and float(np.median(ratios)) <= 1 - gain and max(ratios) < 1
