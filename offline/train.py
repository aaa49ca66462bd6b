"""item2vec: gensim Word2Vec (skip-gram, negative sampling) over users' click sessions.

Each user's clicks, in time order, form "sentences" cut wherever two consecutive clicks
are more than ``session_gap`` seconds apart; items are the words. Single-click sessions
carry no co-occurrence and are dropped. Items seen fewer than ``min_count`` times get no
vector (the worker counts clicks on them in a user's window but they add nothing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from offline.clicklog import ClickLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainParams:
    dim: int = 64
    window: int = 5
    negative: int = 5
    min_count: int = 3
    epochs: int = 5
    sample: float = 1e-3
    session_gap: float = 1800.0
    workers: int = 2
    seed: int = 0


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


def train_item2vec(clicks: ClickLog, params: TrainParams, progress: bool = True,
                   ) -> tuple[list[str], np.ndarray]:
    """Train item2vec on ``clicks``; returns (item ids, (n, dim) float32 L2-normalised)."""
    from gensim.models import Word2Vec
    from gensim.models.callbacks import CallbackAny2Vec
    from tqdm import tqdm

    sentences = sessions(clicks, params.session_gap)
    if not sentences:
        raise ValueError("no session has two clicks: nothing to learn from")
    bar = tqdm(total=params.epochs, unit="epoch", desc="item2vec", disable=not progress)

    class _Progress(CallbackAny2Vec):  # type: ignore[misc]
        def on_epoch_end(self, model: Word2Vec) -> None:
            bar.update(1)

    model = Word2Vec(
        vector_size=params.dim, window=params.window, min_count=params.min_count,
        sg=1, hs=0, negative=params.negative, sample=params.sample,
        workers=params.workers, seed=params.seed,
    )
    model.build_vocab(sentences)
    if len(model.wv) == 0:
        bar.close()
        raise ValueError(f"no item was clicked at least min_count={params.min_count} times")
    log.info("item2vec: %d sessions, %d clicks, %d items in vocabulary",
             len(sentences), sum(map(len, sentences)), len(model.wv))
    with bar:
        model.train(sentences, total_examples=model.corpus_count, epochs=params.epochs,
                    callbacks=[_Progress()])
    vectors = model.wv.vectors.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    ok = (norms[:, 0] > 0) & np.isfinite(norms[:, 0])
    ids = [key for key, good in zip(model.wv.index_to_key, ok, strict=True) if good]
    return ids, vectors[ok] / norms[ok]
