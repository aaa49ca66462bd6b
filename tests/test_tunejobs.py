"""The tuning child (stream/tunejobs.py): its reading of the worker's snapshot (the matrix
it hands the tuner must be one the tuner uses as it is, or the child holds two float32
copies of the catalogue, 244 MB each at 1M x 64), and its life, which ends with the
worker's."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recall.lsh import LSHIndex, LSHParams
from recall.tuner import _unit_rows
from stream.tunejobs import in_child, read_snapshot, write_snapshot


def test_the_snapshot_is_read_into_rows_the_tuner_uses_as_they_are(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 64)).astype(np.float32)
    index = LSHIndex(LSHParams(dim=64, k=4, L=2, seed=1))
    index.stage([f"i{i}" for i in range(len(x))], x)
    path, rows = write_snapshot(index)
    got = read_snapshot(path, rows, 64)
    assert got.shape == (20_000, 64) and got.dtype == np.float32
    assert _unit_rows(got) is got  # no second matrix in the tuner
    # the same rows the worker stores, to half precision
    stored = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.abs(got - stored).max() < 2e-3


def test_a_short_snapshot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.f16"
    path.write_bytes(np.ones((3, 4), dtype=np.float16).tobytes())
    with pytest.raises(ValueError, match="3 rows, not 5"):
        read_snapshot(str(path), 5, 4)


def test_the_move_reports_its_table_over_the_served_one() -> None:
    """A cost try's ``table_delta``: the index arrays of two layouts judged on the same
    items (the tuner's trials, looked up by shape at the size judged), whose difference
    is their bucket tables' alone: what a move adds beside the served table."""
    from types import SimpleNamespace

    from recall.tuner import bulk_index, shape_of
    from stream.tunejobs import layout_bytes

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a, b = LSHParams(dim=8, k=4, L=8, w=1.25), LSHParams(family="simhash", dim=8, k=9, L=4)
    ia, ib = bulk_index(a, x), bulk_index(b, x)
    trials = [SimpleNamespace(params=a, items=3000, nbytes=ia.nbytes()),
              SimpleNamespace(params=b, items=3000, nbytes=ib.nbytes()),
              SimpleNamespace(params=b, items=500, nbytes=1)]  # a sample's: not it
    result = SimpleNamespace(trials=trials, judged_items=3000)
    delta = layout_bytes(result, shape_of(b)) - layout_bytes(result, shape_of(a))
    assert delta == ib._buckets.nbytes() - ia._buckets.nbytes()
    assert layout_bytes(result, ("simhash", 99, 4, 1.0)) is None


#: a worker's stand-in: a tuning child doing a long job, its pid printed, then waiting
PARENT = """
import os, time
from stream.tunejobs import child_pool
pool = child_pool()
pid = pool.submit(os.getpid).result()
job = pool.submit(time.sleep, 300)
print(pid, flush=True)
job.result()
"""


def running(pid: int) -> bool:
    """The process exists and is not a zombie (exited, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_tuning_child_dies_with_a_killed_worker() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert running(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 20
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(child), "the tuning child outlived its worker"
    finally:
        parent.kill()
        if "child" in locals() and running(child):
            os.kill(child, signal.SIGKILL)


def start_then_mark(started: str, finished: str, seconds: float) -> int:
    """A tuning job's stand-in, run in the child: marks its start, and its end after
    ``seconds``."""
    Path(started).write_text("")
    time.sleep(seconds)
    Path(finished).write_text("")
    return os.getpid()


async def test_a_tuning_job_runs_in_a_child_and_returns_its_result(tmp_path: Path) -> None:
    pid = await in_child(start_then_mark, str(tmp_path / "s"), str(tmp_path / "f"), 0.0)
    assert pid != os.getpid() and (tmp_path / "f").exists()


async def test_a_cancelled_tuning_job_is_killed_not_waited_for(tmp_path: Path) -> None:
    """A worker stopping cancels its re-tune: the child is killed at once. Neither does
    the cancel wait for the job (a pool used as a context manager did, on the event
    loop's thread), nor does the job go on after it (a pool's shutdown leaves it to run:
    a whole catalogue's cost try, for minutes)."""
    started, finished = tmp_path / "started", tmp_path / "finished"
    job = asyncio.create_task(in_child(start_then_mark, str(started), str(finished), 2.0))
    deadline = time.monotonic() + 60  # the spawned child imports this module first
    while not started.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert started.exists()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert not finished.exists(), "the cancel waited for the job"
    await asyncio.sleep(3.0)
    assert not finished.exists(), "the job went on after the cancel"
