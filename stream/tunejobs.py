"""The tuner as the recall watch (:mod:`stream.watch`) runs it: in a spawned child
process, so its seconds of CPU never hold the worker's GIL and its sample and trial
indexes leave the worker's memory with the child; results come back as plain dicts
(what a process pool pickles cheaply). A cost try, which nothing waits for, runs at the
lowest priority."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from typing import Any

import numpy as np

from recall.lsh import LSHParams

#: k of the tuner's recall@k when re-tuning
TUNE_K = 10
#: the child's niceness: the lowest priority, below the worker's event loop
CHILD_NICE = 19


def tune_cheaper(vectors: np.ndarray, target: float, current: dict[str, Any],
                 serve_items: int) -> dict[str, Any]:
    """Child process, at the lowest priority: the tuner on the sample ``vectors`` of a
    catalogue of ``serve_items`` served with the ``current`` layout, that layout's shape
    (k scaled down to the sample) walked beside the tuner's grid on the same queries; the
    choice (k scaled back up) if it is clearly cheaper (:func:`recall.tuner.cheaper_move`),
    and the CPU seconds this process took (imports included)."""
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    from recall.tuner import cheaper_move, default_layouts, scaled_k, shape_of, tune

    cur = LSHParams.from_dict(current)
    n = len(vectors)
    mine = shape_of(replace(cur, k=scaled_k(cur.family, cur.k, serve_items, n)))
    layouts = list(dict.fromkeys([*default_layouts(n, cur.dim), mine]))
    result = tune(vectors, target_recall=target, k=TUNE_K, seed=cur.seed, layouts=layouts,
                  serve_items=serve_items, progress=False)
    why = cheaper_move(result, mine)
    return {"params": None if why is None else result.params.to_dict(), "why": why,
            "summary": result.summary(), "cpu": time.process_time()}


def tune_layout(vectors: np.ndarray, target: float, seed: int, serve_items: int) -> dict[str, Any]:
    """Child process: the tuner's choice for these vectors, k scaled to ``serve_items``,
    as a dict."""
    from recall.tuner import tune

    result = tune(vectors, target_recall=target, k=TUNE_K, seed=seed,
                  serve_items=serve_items, progress=False)
    return {"params": result.params.to_dict(), "recall": result.recall,
            "reached": result.reached, "summary": result.summary()}
