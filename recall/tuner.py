"""Chooses LSH parameters: the cheapest (family, k, L, w, vote, T) reaching a target
recall@k.

Role: called by ``recall tune`` (offline) and ``recall bench index --tune``. On a sample
of the catalogue and user-like queries (means of 2-8 items that are near each other),
it computes the exact top-k, then walks a grid of hash layouts (family, k, L, w); for
each layout it builds one index and, for each vote setting (keep candidates found in at
least m of the L tables: fewer to re-rank, so more probes may pay), raises the probes per
table T (1, 2, 4, ...) until recall@k reaches the target. Among the settings that reach
it, the one with the lowest measured mean query time wins. Fixed recall for fixed
parameters tends to hold or rise when the catalogue grows (neighbours get closer) while
candidates grow with it, so tune on a sample close to the catalogue's size for the
cheapest setting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recall.lsh import LSHIndex, LSHParams, normalize

PROBE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128)


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """(Q, k) row indices of the exact top-k by inner product (unit vectors: cosine)."""
    k = min(k, len(vectors))
    block = max(1, min(block, (16 << 20) // max(len(vectors), 1)))  # scores <= ~64 MB
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out[start : start + block] = top
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


def recall_at_k(found: Sequence[Iterable[int]], truth: np.ndarray) -> float:
    """Mean fraction of each exact top-k row found."""
    hits = [len(set(f) & set(t.tolist())) / max(len(t), 1) for f, t in zip(found, truth,
                                                                              strict=True)]
    return float(np.mean(hits)) if hits else 0.0


@dataclass
class Trial:
    params: LSHParams
    recall: float
    candidates: float  # mean per query
    query_ms: float  # mean per query

    def as_dict(self) -> dict[str, Any]:
        return {**self.params.to_dict(), "recall": round(self.recall, 4),
                "candidates": round(self.candidates, 1), "query_ms": round(self.query_ms, 4)}


@dataclass
class TuneResult:
    params: LSHParams
    recall: float
    candidates: float
    query_ms: float
    target_recall: float
    k: int
    sample_items: int
    sample_queries: int
    reached: bool
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        verdict = "cheapest reaching" if self.reached else "target NOT reached; best recall at"
        lines = [
            f"tuned on {self.sample_items} items, {self.sample_queries} user-like queries, "
            f"{len(self.trials)} settings tried in {self.seconds:.1f}s",
            f"chose {self.params.describe()} ({verdict} recall@{self.k} >= "
            f"{self.target_recall:g}): recall {self.recall:.3f}, "
            f"{self.candidates:.0f} candidates/query, {self.query_ms:.3f} ms/query",
        ]
        ok = sorted((t for t in self.trials if t.recall >= self.target_recall),
                    key=lambda t: t.query_ms)[1:4]
        if ok:
            lines.append("runners-up: " + "; ".join(
                f"{t.params.describe()} {t.query_ms:.3f} ms r={t.recall:.3f}" for t in ok))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def suggested_params(n: int, dim: int, seed: int = 42) -> LSHParams:
    """Untuned starting point for a catalogue of n items: p-stable with about
    log2(n)/2 hashes per table, 16 tables, a few probes each. Measured on clustered
    1M x 64 (offline.synthetic): recall@10 ~0.96 with ~4k candidates per query."""
    k = max(2, min(14, round(math.log2(max(n, 4)) / 2)))
    return LSHParams(family="pstable", dim=dim, k=k, L=16, w=1.25, T=5, seed=seed)


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


def evaluate(index: LSHIndex, queries: np.ndarray, truth: np.ndarray, k: int) -> Trial:
    """Recall, candidates and mean time of one search per query (the latency a lone
    request sees)."""
    found, cands = [], 0
    t0 = time.perf_counter()
    for q in queries:
        res = index.search(q, k)[0]
        found.append(res.ids)
        cands += res.candidates
    elapsed = time.perf_counter() - t0
    rows = [[int(i) for i in ids] for ids in found]
    return Trial(index.params, recall_at_k(rows, truth), cands / len(queries),
                 1000 * elapsed / len(queries))


def tune(
    vectors: np.ndarray,
    queries: np.ndarray | None = None,
    target_recall: float = 0.95,
    k: int = 10,
    *,
    n_queries: int = 300,
    max_items: int | None = None,
    layouts: Sequence[tuple[str, int, int, float]] | None = None,
    families: Sequence[str] = ("pstable", "simhash"),
    votes: Sequence[int] = (1, 2),
    seed: int = 42,
    progress: bool = True,
) -> TuneResult:
    """Pick the cheapest LSH parameters reaching `target_recall` recall@k on a sample.

    vectors: (n, D) catalogue (or a sample of it; `max_items` subsamples). queries: (Q, D)
    user vectors; default: `n_queries` user-like queries made from the sample. votes:
    the vote settings tried on every layout (a candidate must be found in that many
    tables): voting re-ranks fewer candidates, so it can pay for more probes.
    """
    from tqdm import tqdm

    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    x = normalize(np.asarray(vectors))
    if x.ndim != 2 or len(x) == 0:
        raise ValueError("tune needs a non-empty (n, D) matrix of vectors")
    if max_items is not None and len(x) > max_items:
        x = x[np.sort(rng.choice(len(x), size=max_items, replace=False))]
    n, dim = x.shape
    q = user_like_queries(x, n_queries, seed=seed) if queries is None else normalize(queries)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must have shape (Q, {dim}), got {q.shape}")
    truth = exact_topk(x, q, k)
    ids = [str(i) for i in range(n)]
    grid = [lay for lay in (layouts or default_layouts(n, dim)) if lay[0] in families]
    trials: list[Trial] = []
    bar = tqdm(grid, desc="tuning LSH", unit="layout", disable=not progress)
    for family, kk, L, w in bar:
        bar.set_postfix_str(f"{family} k={kk} L={L} w={w:g}")
        index = LSHIndex(LSHParams(family=family, dim=dim, k=kk, L=L, w=w, T=1, seed=seed))
        index.add(ids, x)
        for vote in (v for v in votes if 1 <= v <= L):
            index.vote = vote
            for T in PROBE_STEPS:
                index.probes = T
                trial = evaluate(index, q, truth, k)
                trials.append(trial)
                if trial.recall >= target_recall:
                    break
    bar.close()
    reached = [t for t in trials if t.recall >= target_recall]
    best = (min(reached, key=lambda t: t.query_ms) if reached
            else max(trials, key=lambda t: (t.recall, -t.query_ms)))
    return TuneResult(
        params=best.params, recall=best.recall, candidates=best.candidates,
        query_ms=best.query_ms, target_recall=target_recall, k=k, sample_items=n,
        sample_queries=len(q), reached=bool(reached), trials=trials,
        seconds=time.perf_counter() - started,
    )
