"""The recall watch's truth: exact search of a batch of queries (one compiled call for all
of them, recall/exactkernels.py) gives what exact search of each query alone gives."""

from __future__ import annotations

import numpy as np
import pytest

from offline.synthetic import clustered_catalogue
from recall.lsh import LSHIndex, LSHParams
from recall.lsh import search as lsh_search


def _same(index: LSHIndex, q: np.ndarray, ks: list[int], excl: list[set[str]]) -> None:
    together = index.search(q, ks, excl, exact=True)
    for i in range(len(q)):
        alone = index.search(q[i], ks[i], [excl[i]], exact=True)[0]
        assert together[i].ids == alone.ids
        np.testing.assert_array_equal(together[i].scores, alone.scores)
        assert together[i].candidates == alone.candidates


@pytest.mark.parametrize(("block", "cap"), [(64, 1), (1000, 512), (32_768, 100)])
def test_a_batch_of_exact_searches_answers_as_each_alone(
        monkeypatch: pytest.MonkeyPatch, block: int, cap: int) -> None:
    """``block``: the single search's; ``cap``: the batch's shortlist buffer per query
    (the smallest makes it compact often)."""
    monkeypatch.setattr(lsh_search, "EXACT_BLOCK", block)
    monkeypatch.setattr(lsh_search, "EXACT_CAP", cap)
    x, _ = clustered_catalogue(3000, 16, seed=1)
    x[100:140] = x[99]  # ties: 41 equal vectors
    index = LSHIndex(LSHParams(dim=16, k=6, L=4, T=2, seed=3))
    ids = [f"i{i}" for i in range(len(x))]
    index.add(ids, x)
    index.remove(ids[5:300:7])  # holes in the slots
    rng = np.random.default_rng(2)
    q = np.concatenate([x[rng.choice(len(x), 20)] + 0.1 * rng.normal(size=(20, 16)),
                        x[[99, 120]]])  # queries on the ties
    ks = [int(k) for k in rng.integers(1, 60, size=len(q))]
    excl = [set(rng.choice(ids, 30).tolist()) | {ids[99], ids[101]} for _ in q]
    _same(index, q, ks, excl)


def test_more_near_ties_than_the_shortlist_buffer_holds_are_all_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """400 equal items and k=3: the batch's buffer (2 x 19 entries) grows to hold every
    tie, and the answers break the ties as a single search does (by slot)."""
    monkeypatch.setattr(lsh_search, "EXACT_CAP", 1)
    x, _ = clustered_catalogue(2000, 16, seed=4)
    x[500:900] = x[499]
    index = LSHIndex(LSHParams(dim=16, k=6, L=4, T=2, seed=3))
    ids = [f"i{i}" for i in range(len(x))]
    index.add(ids, x)
    q = np.stack([x[499], x[499] + 0.01, x[7]])
    _same(index, q, [3, 3, 3], [{ids[499]}, set(), {ids[600]}])
