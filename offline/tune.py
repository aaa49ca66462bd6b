"""LSH parameters for a vector file: the core tuner run on user-like queries, saved as JSON.

Queries are what the worker will really ask: the rolling vectors of users of a click log
(their last ``RECALL_USER_WINDOW`` clicks), or, without a log, the tuner's default.
The parameter file (``<stem>.lsh.json`` next to the vectors) holds::

    {"params": LSHParams.to_dict(), "target_recall": float, "k": int, "items": int,
     "queries": int, "tuner_recall": float, "recall_exclude_seen": float,
     "probes_raised_from": int, "summary": str}

The core tuner measures recall@k of plain nearest-neighbour queries; the worker leaves
the user's window items out of a recall (``exclude_seen``), which asks the index for
deeper neighbours. So with log queries the chosen parameters are checked that way too,
and the probes per table raised until the target holds there (:func:`tune_params`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from offline.clicklog import ClickLog, atomic_path
from offline.userwin import user_windows
from offline.vectors import VectorFileError

#: the most probes per table the check raises T to
_MAX_PROBES = 128


@dataclass
class LogQueries:
    """Users' rolling vectors and, per query, the item ids of that user's window: the
    worker leaves those out of a recall (``exclude_seen``), so recall is measured so."""

    vectors: np.ndarray  # (Q, D) float32, normalised
    seen: list[list[str]]

    def __len__(self) -> int:
        return len(self.vectors)


def log_queries(clicks: ClickLog, ids: list[str], vectors: np.ndarray, window: int,
                half_life: float = 0.0, limit: int = 2000, seed: int = 0) -> LogQueries:
    """Up to ``limit`` users' rolling vectors (normalised) and their window items,
    sampled with ``seed``."""
    win = user_windows(clicks, ids, vectors, window, half_life)
    pick = np.flatnonzero(win.usable)
    if len(pick) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(pick, limit, replace=False))
    q = win.vectors[pick]
    bounds = win.clicks.user_bounds()
    names = clicks.item_ids
    items = win.clicks.item
    seen = [sorted({names[i] for i in items[bounds[j]:bounds[j + 1]].tolist()})
            for j in pick.tolist()]
    return LogQueries(q / np.linalg.norm(q, axis=1, keepdims=True), seen)


def recall_with_exclusion(index: Any, ids: list[str], vectors: np.ndarray,
                          queries: LogQueries, k: int) -> float:
    """Mean |LSH top-k ∩ exact top-k| / |exact top-k| with each query's window items
    left out of both, as the worker answers (``exclude_seen``)."""
    row_of = {item_id: r for r, item_id in enumerate(ids)}
    hits = []
    for start in range(0, len(queries), 512):
        q = queries.vectors[start:start + 512]
        scores = q @ vectors.T
        for j, seen in enumerate(queries.seen[start:start + 512]):
            rows = [row_of[i] for i in seen if i in row_of]
            scores[j, rows] = -np.inf
        kk = min(k, vectors.shape[0])
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        for j in range(len(q)):
            truth = {ids[r] for r in top[j].tolist() if np.isfinite(scores[j, r])}
            res = index.search(q[j], k, [queries.seen[start + j]])[0]
            hits.append(len(truth & set(res.ids)) / max(len(truth), 1))
    return float(np.mean(hits)) if hits else 0.0


def tune_params(vectors: np.ndarray, queries: LogQueries | None, target_recall: float,
                k: int, seed: int, ids: list[str] | None = None,
                progress: bool = True, sample_items: int | None = None,
                ) -> tuple[Any, str, dict[str, Any]]:
    """(LSHParams, printable summary, figures) from :func:`recall.tuner.tune`.

    ``sample_items``: the tuner walks its grid on a sample of that many items, then
    judges the best layouts on all of them (a bigger catalogue: the grid's coarse
    layouts are slow to measure at full size).

    The core tuner measures recall@k without leaving anything out; the worker leaves a
    user's window items out. With log queries (and ``ids``), the chosen parameters are
    checked on exactly that, and the probes per table (T, query-time only) doubled
    until the target is met there too (or T reaches 128)."""
    from recall.tuner import tune

    result = tune(vectors, queries=None if queries is None else queries.vectors,
                  target_recall=target_recall, k=k, seed=seed, max_items=sample_items,
                  progress=progress)
    summary = result.summary()
    params = result.params
    figures: dict[str, Any] = {"tuner_recall": round(float(result.recall), 4),
                               "sample_items": result.sample_items}
    if queries is None or ids is None or len(queries) == 0:
        return params, summary, figures
    from recall.lsh import LSHIndex

    index = LSHIndex(params)
    index.add(ids, vectors)
    tuned_t = params.T
    while True:
        rec = recall_with_exclusion(index, ids, vectors, queries, k)
        if rec >= target_recall or params.T >= _MAX_PROBES:
            break
        params = replace(params, T=min(2 * params.T, _MAX_PROBES))
        index.probes = params.T
    figures.update(recall_exclude_seen=round(rec, 4), probes_raised_from=tuned_t)
    if tuned_t != params.T:
        summary += (f"\nwith each user's window items left out (exclude_seen) recall@{k} "
                    f"needed more probes: T {tuned_t} -> {params.T}")
    summary += (f"\nchecked with exclude_seen on {len(queries)} users' windows: "
                f"recall@{k} {rec:.3f} at T={params.T}"
                + ("" if rec >= target_recall else " (target NOT reached)"))
    return params, summary, figures


def write_params(path: str | os.PathLike[str], params: Any, **info: Any) -> None:
    doc = {"params": params.to_dict(), **info}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def read_params(path: str | os.PathLike[str], dim: int) -> Any:
    """The LSHParams of a parameter file; errors name the file."""
    from recall.lsh import LSHParams

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        params = LSHParams.from_dict(doc["params"])
    except FileNotFoundError:
        raise VectorFileError(f"{path}: no such file (run `recall tune` first)") from None
    except KeyError as exc:
        raise VectorFileError(f"{path}: not an LSH parameter file: no {exc} key") from None
    except (OSError, ValueError, TypeError) as exc:
        raise VectorFileError(f"{path}: not an LSH parameter file: {exc}") from None
    if params.dim != dim:
        raise VectorFileError(f"{path}: parameters are for dimension {params.dim}, vectors "
                              f"have {dim}")
    return params
