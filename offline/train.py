"""Item embeddings: skip-gram with negative sampling (gensim Word2Vec) over click sequences.

Three ways to make the sequences (``TrainParams.method``):

- ``item2vec``: each user's clicks, in time order, cut into sessions wherever two
  consecutive clicks are more than ``session_gap`` seconds apart (Barkan & Koenigstein,
  2016). Single-click sessions carry no co-occurrence and are dropped;
- ``deepwalk`` / ``node2vec``: random walks over the item co-click graph built from the
  same sessions (:mod:`offline.walks`; Node2Vec biases them with ``p``, ``q``).

Items seen fewer than ``min_count`` times get no vector (the worker counts clicks on them
in a user's window but they add nothing). ``ns_exponent`` shapes the negative-sampling
distribution (count ** ns_exponent): 0.75 is word2vec's, 0 is uniform, negative values
favour rare items as negatives -- Caselles-Dupré et al. (RecSys 2018) found it one of the
settings that matter most for recommendation, and that the best value differs per data set.

Reproducibility: with ``workers=1`` and the same ``seed`` a training is bit-for-bit
repeatable within one Python version; with more threads gensim's result depends on thread
scheduling (the quality does not).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from offline.clicklog import ClickLog

log = logging.getLogger(__name__)

METHODS = ("item2vec", "deepwalk", "node2vec")
#: which of skip-gram's two vectors an item gets: the input ("word") vector, the output
#: ("context") vector, or their sum
VECTORS = ("in", "out", "in+out")

#: called after each epoch with (epoch number from 1, item ids, normalised vectors); it
#: may raise to stop the training (the model search prunes bad trials so)
EpochCallback = Callable[[int, list[str], np.ndarray], None]


@dataclass(frozen=True)
class TrainParams:
    """Defaults: chosen from model searches on MovieLens 100K and generated logs
    (docs/offline.md, "Defaults"); word2vec's own (ns_exponent 0.75, in vectors, 5 epochs,
    no popularity) lost to most-popular on real logs."""

    dim: int = 64
    method: str = "item2vec"
    window: int = 5
    negative: int = 5
    ns_exponent: float = 0.5
    min_count: int = 1
    epochs: int = 10
    sample: float = 1e-3
    session_gap: float = 1800.0
    # graph methods only
    walks_per_node: int = 10
    walk_length: int = 20
    p: float = 1.0
    q: float = 1.0
    #: weight of the popularity component (0 = none; see :func:`with_popularity`)
    pop_weight: float = 1.9
    #: one of VECTORS (see :func:`normalised`)
    vectors: str = "in+out"
    workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.vectors not in VECTORS:
            raise ValueError(f"vectors must be one of {VECTORS}, got {self.vectors!r}")
        if self.pop_weight < 0 or (self.pop_weight > 0 and self.dim < 2):
            raise ValueError("pop_weight must be >= 0 (and > 0 needs dim >= 2)")


def sessions(clicks: ClickLog, session_gap: float) -> list[list[str]]:
    """Per-user, time-ordered item-id sequences cut at gaps > ``session_gap`` seconds;
    sequences of one click are left out. ``clicks`` must be sorted by (user, ts)."""
    n = len(clicks)
    if n == 0:
        return []
    cut = np.ones(n, dtype=bool)
    cut[1:] = (clicks.user[1:] != clicks.user[:-1]) | (np.diff(clicks.ts) > session_gap)
    starts = np.flatnonzero(cut)
    lengths = np.diff(np.append(starts, n))
    keep = lengths >= 2
    names = np.asarray(clicks.item_ids, dtype=object)[clicks.item]
    pieces = np.split(names, starts[1:])
    return [p.tolist() for p, k in zip(pieces, keep, strict=True) if k]


def _frequent(clicks: ClickLog, min_count: int) -> ClickLog:
    """The clicks on items clicked at least ``min_count`` times."""
    counts = np.bincount(clicks.item, minlength=len(clicks.item_ids))
    return clicks.take(counts[clicks.item] >= min_count)


def sentences(clicks: ClickLog, params: TrainParams) -> list[list[str]]:
    """What the skip-gram reads: sessions (item2vec) or walks on the co-click graph."""
    if params.method == "item2vec":
        return sessions(clicks, params.session_gap)
    from offline.walks import coclick_graph, random_walks, walk_sentences

    # the graph holds the items that get vectors: rare items are no stepping stones
    graph = coclick_graph(sessions(_frequent(clicks, params.min_count), params.session_gap))
    if len(graph) == 0:
        return []
    p, q = (params.p, params.q) if params.method == "node2vec" else (1.0, 1.0)
    walks = random_walks(graph, params.walks_per_node, params.walk_length, p, q,
                         seed=params.seed)
    return walk_sentences(graph, walks)


def normalised(model: object, which: str = "in") -> tuple[list[str], np.ndarray]:
    """The model's (item ids, L2-normalised float32 vectors), zero/non-finite rows left out.

    ``which``: skip-gram scores a (item, next item) pair by input . output vector, while
    the worker compares an item with the mean of the user's items in one space. Input
    vectors alone are alike for items with alike neighbours (second order); adding the
    output vector (``in+out``, as GloVe sums its two) brings in the first-order "clicked
    right after" part, which next-click recall is about. The search picks."""
    wv = model.wv  # type: ignore[attr-defined]
    vin = wv.vectors.astype(np.float64)
    if which == "in":
        vectors = vin
    else:
        vout = model.syn1neg.astype(np.float64)  # type: ignore[attr-defined]
        if which == "out":
            vectors = vout
        else:
            def unit(v: np.ndarray) -> np.ndarray:
                return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            vectors = unit(vin) + unit(vout)
    vectors = vectors.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    ok = (norms[:, 0] > 0) & np.isfinite(norms[:, 0])
    ids = [key for key, good in zip(wv.index_to_key, ok, strict=True) if good]
    return ids, vectors[ok] / norms[ok]


def with_popularity(clicks: ClickLog, ids: list[str], vectors: np.ndarray, weight: float,
                    ) -> np.ndarray:
    """``vectors`` (n, D-1) with a last component ``weight * log(1 + clicks) /
    log(1 + most clicks)`` appended, rows L2-normalised again.

    Cosine to a user's mean then adds a bonus for popular items (the user's mean has a
    positive popularity component): skip-gram similarity alone ranks a rarely clicked
    item next to the blockbuster it co-occurs with, while real next clicks lean heavily
    to popular items (most-popular beats raw item2vec on real logs). One dimension of
    ``RECALL_DIM`` carries it, so the worker needs nothing new."""
    counts = np.bincount(clicks.item, minlength=len(clicks.item_ids)).astype(np.float64)
    code = {item_id: c for c, item_id in enumerate(clicks.item_ids)}
    n = np.fromiter((counts[code[i]] if i in code else 0.0 for i in ids), dtype=np.float64,
                    count=len(ids))
    g = np.log1p(n) / max(np.log1p(n.max()), 1e-12)
    out = np.concatenate([vectors, (weight * g)[:, None]], axis=1).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def train_embeddings(clicks: ClickLog, params: TrainParams, progress: bool = True,
                     on_epoch: EpochCallback | None = None) -> tuple[list[str], np.ndarray]:
    """Train on ``clicks``; returns (item ids, (n, dim) float32 L2-normalised)."""
    from gensim.models import Word2Vec
    from gensim.models.callbacks import CallbackAny2Vec
    from tqdm import tqdm

    corpus = sentences(clicks, params)
    if not corpus:
        raise ValueError("no session has two clicks: nothing to learn from")
    bar = tqdm(total=params.epochs, unit="epoch", desc=params.method, disable=not progress)

    class _Epochs(CallbackAny2Vec):  # type: ignore[misc]
        def __init__(self) -> None:
            self.done = 0

        def on_epoch_end(self, model: Word2Vec) -> None:
            self.done += 1
            bar.update(1)
            if on_epoch is not None:
                on_epoch(self.done, *finish(model))

    def finish(model: Word2Vec) -> tuple[list[str], np.ndarray]:
        ids, vectors = normalised(model, params.vectors)
        if params.pop_weight > 0:
            vectors = with_popularity(clicks, ids, vectors, params.pop_weight)
        return ids, vectors

    graph = params.method != "item2vec"
    model = Word2Vec(
        vector_size=params.dim - (params.pop_weight > 0), window=params.window,
        min_count=1 if graph else params.min_count,  # the graph already left rare items out
        sg=1, hs=0, negative=params.negative, ns_exponent=params.ns_exponent,
        sample=params.sample, workers=params.workers, seed=params.seed,
    )
    model.build_vocab(corpus)
    if len(model.wv) == 0:
        bar.close()
        raise ValueError(f"no item was clicked at least min_count={params.min_count} times")
    log.log(logging.INFO if progress else logging.DEBUG,
            "%s: %d sequences, %d tokens, %d items in vocabulary", params.method,
            len(corpus), sum(map(len, corpus)), len(model.wv))
    with bar:
        model.train(corpus, total_examples=model.corpus_count, epochs=params.epochs,
                    callbacks=[_Epochs()])
    return finish(model)


def train_item2vec(clicks: ClickLog, params: TrainParams, progress: bool = True,
                   ) -> tuple[list[str], np.ndarray]:
    """:func:`train_embeddings` (the name the eval and tests know)."""
    return train_embeddings(clicks, params, progress)
