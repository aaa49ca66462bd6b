"""LSH parameters for a vector file: the core tuner run on user-like queries, saved as JSON.

Queries are what the worker will really ask: the rolling vectors of users of a click log
(their last ``RECALL_USER_WINDOW`` clicks), or, without a log, the tuner's default.
The parameter file (``<stem>.lsh.json`` next to the vectors) holds::

    {"params": LSHParams.to_dict(), "target_recall": float, "k": int, "items": int,
     "queries": int, "summary": str}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from offline.clicklog import ClickLog, atomic_path
from offline.userwin import user_windows
from offline.vectors import VectorFileError
from recall.cli import CommandError


def log_queries(clicks: ClickLog, ids: list[str], vectors: np.ndarray, window: int,
                half_life: float = 0.0, limit: int = 2000, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` users' rolling vectors (normalised), sampled with ``seed``."""
    win = user_windows(clicks, ids, vectors, window, half_life)
    q = win.vectors[win.usable]
    if len(q) > limit:
        q = q[np.random.default_rng(seed).choice(len(q), limit, replace=False)]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def tune_params(vectors: np.ndarray, queries: np.ndarray | None, target_recall: float,
                k: int, seed: int) -> tuple[Any, str]:
    """(LSHParams, printable summary) from :func:`recall.tuner.tune`."""
    try:
        from recall.tuner import tune
    except ModuleNotFoundError as exc:
        if exc.name != "recall.tuner":
            raise
        raise CommandError("the LSH tuner (recall.tuner) is not installed; pass --params"
                           ) from None
    result = tune(vectors, queries=queries, target_recall=target_recall, k=k, seed=seed)
    summary = result.summary() if callable(getattr(result, "summary", None)) else str(result)
    return result.params, summary


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
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VectorFileError(f"{path}: not an LSH parameter file: {exc!r}") from None
    if params.dim != dim:
        raise VectorFileError(f"{path}: parameters are for dimension {params.dim}, vectors "
                              f"have {dim}")
    return params
