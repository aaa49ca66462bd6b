"""The memory budget of index moves (stream/memory.py) with injected numbers: where the
budget comes from (RECALL_MEMORY_LIMIT_MB, the cgroup's limit files), the guard's
decision, and ``LSHIndex.relayout_bytes``, the estimate it weighs, against what a
relayout allocates (numpy's arrays as tracemalloc counts them)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from recall.config import Settings, SettingsError
from recall.lsh import LSHIndex, LSHParams
from stream.memory import (
    MIB,
    MoveGuard,
    cgroup_limit,
    container_budget,
    memory_budget,
    rss_bytes,
)


def limit_files(tmp_path: Path, v2: str | None, v1: str | None) -> tuple[str, str]:
    paths = (str(tmp_path / "memory.max"), str(tmp_path / "memory.limit_in_bytes"))
    for path, text in zip(paths, (v2, v1), strict=True):
        if text is not None:
            Path(path).write_text(text + "\n")
    return paths


@pytest.mark.parametrize(("v2", "v1", "limit"), [
    ("629145600", None, 600 * MIB),  # v2 with a limit
    ("max", "629145600", None),  # v2 without one: v1's files are not this cgroup's
    (None, "629145600", 600 * MIB),  # v1 with a limit
    (None, "9223372036854771712", None),  # v1 without one (2**63, page-rounded)
    (None, None, None),  # no cgroup files (not Linux, or not mounted)
    ("junk", "629145600", 600 * MIB),  # unreadable: the next file
])
def test_the_cgroup_limit_is_read_from_v2_then_v1(tmp_path: Path, v2: str | None,
                                                  v1: str | None, limit: int | None) -> None:
    assert cgroup_limit(limit_files(tmp_path, v2, v1)) == limit


def test_the_re_tunes_child_is_held_to_the_container_not_the_workers_share() -> None:
    """The cost re-tune's child is another process in the worker's container: it is
    held to the container's limit (the cgroup's, what the kernel enforces), not to a
    RECALL_MEMORY_LIMIT_MB set for the worker's own RSS (600 MiB against a ~940 MiB
    child at 1M x 64 skipped every try); 0 turns every guard off."""
    two_gib = 2048 * MIB
    assert container_budget(600, lambda: two_gib) == two_gib
    assert container_budget(600, lambda: None) is None
    assert container_budget(-1, lambda: two_gib) == two_gib
    assert container_budget(0, lambda: two_gib) is None


def test_the_budget_is_the_setting_else_the_cgroups_limit() -> None:
    cgroup = lambda: 700 * MIB  # noqa: E731
    assert memory_budget(600, cgroup) == 600 * MIB  # set: it wins over the cgroup's
    assert memory_budget(-1, cgroup) == 700 * MIB  # unset: the cgroup's limit
    assert memory_budget(-1, lambda: None) is None  # no cgroup limit: no guard
    assert memory_budget(0, cgroup) is None  # 0: no guard at all


def test_the_setting_is_read_and_checked() -> None:
    assert Settings().memory_limit_mb == -1
    assert Settings.from_env({"RECALL_MEMORY_LIMIT_MB": "600"}).memory_limit_mb == 600
    with pytest.raises(SettingsError, match="RECALL_MEMORY_LIMIT_MB"):
        Settings.from_env({"RECALL_MEMORY_LIMIT_MB": "-2"})
    with pytest.raises(SettingsError, match="RECALL_MEMORY_LIMIT_MB"):
        Settings.from_env({"RECALL_MEMORY_LIMIT_MB": "0.5"})


def test_the_guard_refuses_a_move_past_the_budget_only() -> None:
    guard = MoveGuard(600 * MIB, rss=lambda: 560 * MIB)
    assert guard.refusal(40 * MIB) is None  # exactly at the budget: fits
    why = guard.refusal(40 * MIB + 1)
    assert why is not None and "560 MiB" in why and "600 MiB" in why
    assert MoveGuard(None, rss=lambda: 10**12).refusal(10**12) is None  # no budget
    assert MoveGuard(600 * MIB, rss=lambda: None).refusal(10**12) is None  # RSS unknown


def test_rss_is_read_from_proc_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  900 kB\nVmRSS:\t  512 kB\n")
    assert rss_bytes(str(status)) == 512 * 1024
    assert rss_bytes(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(("src", "dst"), [
    (LSHParams(dim=16, k=6, L=8, w=1.25, T=2), LSHParams(family="simhash", dim=16, k=12, L=4)),
    (LSHParams(family="simhash", dim=16, k=12, L=4), LSHParams(dim=16, k=6, L=8, w=1.25)),
])
def test_relayout_bytes_bounds_what_a_relayout_allocates(src: LSHParams,
                                                         dst: LSHParams) -> None:
    """The estimate, given the new table's size (as the tuner measures it) or not (from
    the served table's bytes per entry), is at least the peak of the arrays a relayout
    allocates beside the index, and not wildly above it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 16)).astype(np.float32)
    index = LSHIndex(src)
    index.stage([f"i{i}" for i in range(len(x))], x)
    index.build()
    guess = index.relayout_bytes(dst)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        new = index.relayout(dst)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    known = index.relayout_bytes(dst, new._buckets.nbytes() - index._buckets.nbytes())
    assert new._buckets.nbytes() < peak <= known < 2 * peak
    assert peak <= guess < 3 * peak


def test_the_childs_estimate_covers_what_was_measured_at_1m() -> None:
    """865-920 MiB was the whole-catalogue child's peak at 1M x 64 (README)."""
    from stream.memory import child_bytes

    assert 920 * MIB <= child_bytes(1_000_000, 64) <= 1000 * MIB
