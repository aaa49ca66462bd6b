"""The recall watch's samples (:mod:`stream.watch`): a sampled LSH answer, how far its
catalogue moved since, and the exact answers of a batch, computed in one thread at the
lowest OS priority."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from recall.lsh import LSHIndex

#: the niceness of the thread computing exact answers: the lowest priority, so on a busy
#: (or pinned) core the event loop's thread runs first whenever it has work
EXACT_NICE = 19


@dataclass
class Sample:
    vector: np.ndarray
    k: int
    exclude: frozenset[str]
    found: list[str]
    probes: int
    index: LSHIndex
    token: tuple[int, ...]
    #: the next lower T, and the ids the same search gives with it (None: not measured)
    below: int | None = None
    found_below: list[str] | None = None


def index_token(index: LSHIndex) -> tuple[int, ...]:
    """Changes whenever items are added, updated or removed (or another index serves)."""
    s = index.stats()
    return (id(index), s["items"], s["pending_items"], s["stale_items"], s["merges"])


def drift(then: tuple[int, ...], now: tuple[int, ...]) -> float:
    """How far the catalogue moved between two tokens of one index: the changes in its
    item, pending and stale counts (an added item counts twice: an upper bound of the
    items changed); infinite across another index or a merge (not counted through)."""
    if then[0] != now[0] or then[4] != now[4]:
        return math.inf
    return float(sum(abs(a - b) for a, b in zip(then[1:4], now[1:4], strict=True)))


def _lower_priority() -> None:
    """Thread initializer: this thread (Linux: a thread id is a process id to
    setpriority) at EXACT_NICE. Samples are a check on the answers, not an answer: at
    1M items a batch is ~0.3 s of CPU at once, and at equal priority on the worker's
    pinned core the scheduler gave it half the core while requests waited (in-worker p99
    22.8 ms with the monitor, 11.1 ms without, at 200 requests/s)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: a normal thread
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), EXACT_NICE)


def _exact(samples: Sequence[Sample]) -> tuple[list[list[str] | None], float]:
    """The exact top-k of each sample on its index, one batched search per index (run
    in a thread), and the CPU seconds it took (this thread's: BLAS runs in it)."""
    t0 = time.thread_time()
    out: list[list[str] | None] = [None] * len(samples)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(id(s.index), []).append(i)
    # one BLAS thread: the worker is sized per core, and OpenBLAS's threads spinning on a
    # busy (or pinned) core made the same product ~3x dearer in CPU time
    with threadpool_limits(1, user_api="blas"):
        for members in groups.values():
            batch = [samples[i] for i in members]
            try:
                results = batch[0].index.search(
                    np.stack([s.vector for s in batch]), [s.k for s in batch],
                    [s.exclude for s in batch], exact=True)
            except Exception:  # an index changed under us: the token check drops it
                continue
            for i, r in zip(members, results, strict=True):
                out[i] = r.ids
    return out, time.thread_time() - t0
