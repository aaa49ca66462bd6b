"""The tuner as the recall watch (:mod:`stream.watch`) runs it: in a spawned child
process, so its seconds of CPU never hold the worker's GIL and its sample and trial
indexes leave the worker's memory with the child; results come back as plain dicts
(what a process pool pickles cheaply). A cost try, which nothing waits for, runs at the
lowest priority."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from recall.lsh import LSHIndex, LSHParams

#: k of the tuner's recall@k when re-tuning
TUNE_K = 10
#: the child's niceness: the lowest priority, below the worker's event loop
CHILD_NICE = 19
#: prctl(2) option: the signal this process gets when its parent dies (Linux)
PR_SET_PDEATHSIG = 1


def child_pool() -> ProcessPoolExecutor:
    """One spawned child process for a tuning job, which dies with the worker. A whole
    catalogue's cost re-tune runs for minutes; a worker killed meanwhile (SIGKILL, OOM, a
    bench's stop) left its child running as an orphan at ~0.55 of a core (seen at 1M: it
    went on loading the next benchmark's two cores for minutes)."""
    import multiprocessing as mp

    return ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))


async def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new child process (:func:`child_pool`), awaited; the child exits
    after it. Cancelled (the worker stopping) or failed, the child is killed at once: a
    pool's own shutdown leaves a running job to finish (a whole catalogue's cost try:
    minutes at ~0.55 of a core), and used as a context manager waits for it on the event
    loop's thread: a stopping worker hung there until the tune ended."""
    loop = asyncio.get_running_loop()
    pool = child_pool()
    try:
        out = await loop.run_in_executor(pool, fn, *args)
    except BaseException:
        kill_pool(pool)
        raise
    pool.shutdown(wait=False)
    return out


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """Drop the pool's queued jobs and SIGKILL its processes, without waiting."""
    kill = getattr(pool, "kill_workers", None)  # Python 3.14+: it shuts the pool down too
    if kill is not None:
        kill()
        return
    # before 3.14 no public call kills a pool's processes: its own table of them
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        with contextlib.suppress(OSError, ValueError):
            proc.kill()


def die_with_parent(parent: int) -> None:
    """Child initializer: SIGKILL when the parent process dies (Linux ``prctl``; elsewhere
    nothing), and exit at once if it already has (the death came before the prctl)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


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
    served = layout_bytes(result, mine)
    return {"params": None if why is None else result.params.to_dict(), "why": why,
            "table_delta": None if served is None else result.nbytes - served,
            "summary": result.summary(), "cpu": time.process_time()}


def layout_bytes(result: Any, shape: tuple[str, int, int, float]) -> int | None:
    """Bytes of the index arrays of the layout ``shape`` as the tune ``result`` measured
    them on all the items it judged (None: not judged there). Two layouts' figures on the
    same items differ by their bucket tables alone: what a move adds to the worker's
    memory (``recall.lsh.move.move_bytes``'s ``table_delta``)."""
    from recall.tuner import shape_of

    return next((t.nbytes for t in result.trials
                 if shape_of(t.params) == shape and t.items == result.judged_items), None)


#: a snapshot's file name: the prefix, the writing worker's process id, a random part
SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX = "recall-retune-", ".f16"


def drop_orphan_snapshots(directory: str | None = None) -> list[str]:
    """Delete the snapshots of workers no longer running (a worker killed during a try
    cannot delete its own: 128 MB at 1M x 64 each); the paths deleted."""
    from pathlib import Path

    dropped = []
    pattern = f"{SNAPSHOT_PREFIX}*-*{SNAPSHOT_SUFFIX}"
    for path in Path(directory or tempfile.gettempdir()).glob(pattern):
        pid = path.name[len(SNAPSHOT_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                path.unlink()
                dropped.append(str(path))
    return dropped


def write_snapshot(index: LSHIndex) -> tuple[str, int]:
    """The index's stored vectors in a temporary file (path, rows) for a cost re-tune's
    child process: written a block at a time, so the worker holds no second matrix (the
    file's pages are the page cache's, not the worker's RSS); the caller deletes it, and
    the next try of any worker on the machine deletes those of workers gone."""
    drop_orphan_snapshots()
    fd, path = tempfile.mkstemp(prefix=f"{SNAPSHOT_PREFIX}{os.getpid()}-",
                                suffix=SNAPSHOT_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            rows = index.write_vectors(out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path, rows


#: items the grid is walked on when a cost re-tune judges the whole catalogue (as
#: ``recall bench index --tune-items``); the best layouts are judged on all of it
WALK_ITEMS = 200_000
#: user-like queries (from a sample of this many items) the move's alternated timing uses
CONFIRM_QUERIES, CONFIRM_FROM = 500, 50_000


#: snapshot rows read (and normalised in float64) at a time: 32 MB of temporaries at 64-D
READ_ROWS = 65_536


def read_snapshot(path: str, rows: int, dim: int) -> np.ndarray:
    """The ``rows`` stored vectors at ``path`` (raw :data:`VECTOR_DTYPE`) as one float32
    matrix of unit rows, read a block at a time, each row divided by its float64 norm.

    Not :func:`normalize`: it keeps rows within its tolerance (1e-5) as they are, and a
    half-precision row often is (87,687 of the 1M bench rows) but beyond the half of it
    that the tuner's check of unit rows allows, so the tuner made its own normalised copy
    of the whole matrix and held both (+244 MB at 1M x 64, for the whole run). Divided
    here, every row is within ~4e-8 of unit: the tuner uses this matrix as it is, and
    normalize() returns its rows unchanged. Mapped instead of read, the file's pages
    (122 MiB at 1M x 64) were this process's RSS beside the matrix."""
    from recall.lsh.params import VECTOR_DTYPE

    vectors = np.empty((rows, dim), dtype=np.float32)
    with open(path, "rb") as f:
        for start in range(0, rows, READ_ROWS):
            m = min(READ_ROWS, rows - start)
            block = np.fromfile(f, dtype=VECTOR_DTYPE, count=m * dim)
            if len(block) != m * dim:
                raise ValueError(f"{path}: {start + len(block) // dim} rows, not {rows}")
            x = block.reshape(m, dim).astype(np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", x, x))
            if not (norms.min(initial=1.0) > 0 and np.isfinite(norms).all()):
                raise ValueError(f"{path}: a zero or non-finite row in rows {start}-"
                                 f"{start + m - 1}")
            vectors[start:start + m] = x / norms[:, None]
    return vectors


def tune_cheaper_whole(path: str, rows: int, target: float, current: dict[str, Any],
                       walk_items: int = WALK_ITEMS) -> dict[str, Any]:
    """Child process, at the lowest priority: the tuner on a whole catalogue of ``rows``
    stored vectors (raw :data:`VECTOR_DTYPE` at ``path``, :meth:`LSHIndex.write_vectors`)
    served with the ``current`` layout: its grid walked on ``walk_items`` of them, the best
    layouts, the default and the served layout's shape judged on all of them (as ``recall
    tune`` does), and the choice timed against the served layout in alternated passes
    (:func:`recall.tuner.confirmed_move`); the layouts clearly cheaper (``options``, each
    with its table's bytes over the served one's, in the order the worker tries them
    against its memory budget; the first also as ``params``), the figures, and the CPU
    seconds this process took."""
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    from recall.tuner import (
        bulk_index,
        confirmed_move,
        move_candidates,
        shape_of,
        tune,
        user_like_queries,
    )

    cur = LSHParams.from_dict(current)
    vectors = read_snapshot(path, rows, cur.dim)
    mine = shape_of(cur)
    # finalists=0: confirmed_move times its own candidates against the served layout in
    # alternated passes (move_candidates reads the trials, not the tune's pick), so the
    # tune's finalist passes would only hold up to three more tables (+~80 MB at 1M)
    result = tune(vectors, target_recall=target, k=TUNE_K, seed=cur.seed,
                  max_items=walk_items, judge_also=[mine], finalists=0, progress=False)
    rng = np.random.default_rng(cur.seed)
    some = np.sort(rng.choice(rows, size=min(rows, CONFIRM_FROM), replace=False))
    queries = user_like_queries(vectors[some], CONFIRM_QUERIES, seed=cur.seed)
    # the served layout over every item; then the float32 matrix goes (244 MiB at 1M x
    # 64): the alternated passes search the index's own vectors, the proposals' tables
    # built over them, and the child's peak was made there, the matrix beside the tables
    base, picks, _ = move_candidates(result, mine)
    served = bulk_index(base.params, vectors) if base is not None and picks else None
    del vectors, some
    moves, why, ratios = confirmed_move(result, mine, served, queries)
    served = layout_bytes(result, mine)
    options = []
    for params, its_why in moves:
        new = layout_bytes(result, shape_of(params))
        options.append({"params": params.to_dict(), "why": its_why,
                        "table_delta": None if new is None or served is None
                        else new - served})
    first = options[0] if options else {"params": None, "table_delta": None}
    # why: every proposal's figures (the worker's log says what was weighed)
    return {**first, "why": why, "options": options, "ratios": [round(r, 3) for r in ratios],
            "summary": result.summary(), "cpu": time.process_time()}


def tune_layout(vectors: np.ndarray, target: float, seed: int, serve_items: int) -> dict[str, Any]:
    """Child process: the tuner's choice for these vectors, k scaled to ``serve_items``,
    as a dict."""
    from recall.tuner import tune

    result = tune(vectors, target_recall=target, k=TUNE_K, seed=seed,
                  serve_items=serve_items, progress=False)
    return {"params": result.params.to_dict(), "recall": result.recall,
            "reached": result.reached, "summary": result.summary()}
