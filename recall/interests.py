"""Merging the results of a multi-interest user's queries (``RECALL_USER_INTERESTS`` > 1).

Each interest vector (:meth:`recall.userstate.UserState.interests`) is searched on its own;
an item found by several keeps its best score (cosine to the nearest interest), and the
k best items of the union are the answer. Scores are cosines of normalised vectors, so
they compare across interests. Used by the worker and by the offline evaluation, so
both merge the same way.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np


def merge_by_score(ids: Sequence[Sequence[str]], scores: Sequence[np.ndarray], k: int,
                   ) -> tuple[list[str], np.ndarray]:
    """The ``k`` best distinct items of several result lists (each best first), by their
    best score: ``(ids, float32 scores)``, best first; ties keep the earlier list's item."""
    if len(ids) != len(scores):
        raise ValueError(f"{len(ids)} id lists but {len(scores)} score lists")
    if len(ids) == 1:
        return list(ids[0][:k]), np.asarray(scores[0][:k], dtype=np.float32)
    flat_ids = [i for part in ids for i in part]
    if not flat_ids:
        return [], np.zeros(0, dtype=np.float32)
    flat = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores])
    if len(flat) != len(flat_ids):
        raise ValueError("an id list and its score list differ in length")
    order = np.argsort(-flat, kind="stable")  # best first; ties: list order
    ranked = np.asarray(flat_ids, dtype=object)[order]
    _, first = np.unique(ranked.astype(str), return_index=True)  # best copy of each id
    keep = np.sort(first)[:k]
    return ranked[keep].tolist(), flat[order][keep]


def merge_results(found: Sequence[tuple[Sequence[str], np.ndarray]], seen: Collection[str],
                  k: int) -> tuple[list[tuple[str, float]], list[list[str]]]:
    """Per-interest results ``(ids, scores)`` (best first, possibly with ``seen`` items:
    the worker asks for k + |seen| without exclusion) -> the merged ``(item, score)`` top
    k, and each interest's own top k ids after exclusion (for the recall monitor)."""
    ids: list[list[str]] = []
    scores: list[np.ndarray] = []
    for res_ids, res_scores in found:
        keep = [n for n, i in enumerate(res_ids) if i not in seen][:k]
        ids.append([res_ids[n] for n in keep])
        scores.append(np.asarray(res_scores)[keep])
    got, best = merge_by_score(ids, scores, k)
    return list(zip(got, best.tolist(), strict=True)), ids
