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

#: called after each epoch with (epoch number from 1, item ids, normalised vectors); it
#: may raise to stop the training (the model search prunes bad trials so)
EpochCallback = Callable[[int, list[str], np.ndarray], None]


@dataclass(frozen=True)
class TrainParams:
    dim: int = 64
    method: str = "item2vec"
    window: int = 5
    negative: int = 5
    ns_exponent: float = 0.75
    min_count: int = 3
    epochs: int = 5
    sample: float = 1e-3
    session_gap: float = 1800.0
    # graph methods only
    walks_per_node: int = 10
    walk_length: int = 20
    p: float = 1.0
    q: float = 1.0
    workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


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


def normalised(model: object) -> tuple[list[str], np.ndarray]:
    """The model's (item ids, L2-normalised float32 vectors), zero/non-finite rows left out."""
    wv = model.wv  # type: ignore[attr-defined]
    vectors = wv.vectors.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    ok = (norms[:, 0] > 0) & np.isfinite(norms[:, 0])
    ids = [key for key, good in zip(wv.index_to_key, ok, strict=True) if good]
    return ids, vectors[ok] / norms[ok]


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
                on_epoch(self.done, *normalised(model))

    graph = params.method != "item2vec"
    model = Word2Vec(
        vector_size=params.dim, window=params.window,
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
    return normalised(model)


def train_item2vec(clicks: ClickLog, params: TrainParams, progress: bool = True,
                   ) -> tuple[list[str], np.ndarray]:
    """:func:`train_embeddings` (the name the eval and tests know)."""
    return train_embeddings(clicks, params, progress)
