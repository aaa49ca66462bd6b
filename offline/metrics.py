"""Ranking metrics per user and their bootstrap intervals, all vectorised.

A method's answer is a (users, k) matrix of item codes, best first, -1 where it had
fewer than k items. Per user:

- HitRate@j: 1 if the user's *next* target item (their first held-out click on an item
  not already seen) is among the first j;
- MRR@k: 1 / rank of that next item in the first k (0 when absent);
- Recall@k: share of the user's distinct target items among the first k;
- NDCG@k: binary relevance over the distinct target items, DCG / ideal DCG.

The interval of a mean over users is a percentile bootstrap over users (resampled with
replacement, the same resamples for every method, so the interval of a *ratio* such as the
lift over most-popular is paired). Coverage (distinct items recommended / catalogue) is
not a mean over users: a resample holds only ~63% distinct users and so recommends fewer
items, so its bootstrap spread is centred on the estimate (:func:`centred_interval`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

#: per-user metrics reported for every method, in table order
METRICS = ("hit_rate", "recall", "ndcg", "mrr")


def per_user(pred: np.ndarray, next_item: np.ndarray, target_key: np.ndarray,
             n_targets: np.ndarray, n_codes: int) -> dict[str, np.ndarray]:
    """Per-user metric values; ``target_key`` = sorted unique ``user * n_codes + item``
    of the users' target items (user = row of ``pred``)."""
    m, k = pred.shape
    at_next = (pred == next_item[:, None]) & (pred >= 0)
    hit_at = np.cumsum(at_next, axis=1).clip(max=1).astype(np.float64)  # (m, k)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    mrr = (at_next / ranks).max(axis=1) if k else np.zeros(m)
    key = np.arange(m, dtype=np.int64)[:, None] * n_codes + pred
    rel = np.isin(key, target_key) & (pred >= 0)
    recall = rel.sum(axis=1) / np.maximum(n_targets, 1)
    disc = 1.0 / np.log2(ranks + 1.0)
    ideal = np.cumsum(disc)[np.clip(n_targets, 1, k) - 1]
    ndcg = (rel * disc).sum(axis=1) / ideal
    return {"hit_rate": hit_at[:, -1], "recall": recall, "ndcg": ndcg, "mrr": mrr,
            "hit_at": hit_at}


@dataclass
class Bootstrap:
    """``b`` resamples of ``m`` users as a (b, m) matrix of multiplicities."""

    counts: np.ndarray  # (b, m) float32; each row sums to m

    @classmethod
    def draw(cls, m: int, b: int, seed: int) -> Bootstrap:
        rng = np.random.default_rng(seed)
        if b <= 0 or m == 0:
            return cls(np.zeros((0, m), dtype=np.float32))
        idx = rng.integers(0, m, size=(b, m)) + (np.arange(b) * m)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * m).reshape(b, m)
        return cls(counts.astype(np.float32))

    @property
    def b(self) -> int:
        return self.counts.shape[0]

    def means(self, values: np.ndarray) -> np.ndarray:
        """(b,) or (b, cols): the mean of ``values`` (m,) / (m, cols) in each resample."""
        m = self.counts.shape[1]
        return (self.counts @ values.astype(np.float32)) / max(m, 1)

    def coverage(self, pred: np.ndarray, catalogue: int, chunk: int = 64) -> np.ndarray:
        """(b,) distinct recommended items / ``catalogue`` in each resample."""
        m = pred.shape[0]
        ok = pred >= 0
        rows = np.repeat(np.arange(m), ok.sum(axis=1))
        cols = pred[ok]
        if len(cols) == 0:
            return np.zeros(self.b)
        _, cols = np.unique(cols, return_inverse=True)
        inc = sparse.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)),
                                shape=(m, int(cols.max()) + 1))
        out = np.empty(self.b)
        for s in range(0, self.b, chunk):
            hit = sparse.csr_matrix(self.counts[s:s + chunk]) @ inc
            out[s:s + chunk] = np.diff(hit.indptr) if sparse.issparse(hit) else (
                np.count_nonzero(hit, axis=1))
        return out / max(catalogue, 1)


def interval(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Percentile interval of bootstrap ``samples`` (None when there are none)."""
    s = samples[np.isfinite(samples)]
    if len(s) == 0:
        return None
    lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
    return [round(float(lo), 5), round(float(hi), 5)]


def centred_interval(samples: np.ndarray, estimate: float, level: float = 0.95
                     ) -> list[float] | None:
    """The percentile interval moved so its median is ``estimate``: for coverage, which a
    resample (about 63% distinct users) biases low; the spread is kept, the bias not."""
    ci = interval(samples, level)
    if ci is None:
        return None
    shift = estimate - float(np.median(samples[np.isfinite(samples)]))
    return [round(max(ci[0] + shift, 0.0), 5), round(min(ci[1] + shift, 1.0), 5)]


def ratio_samples(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den per resample, nan where den is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
