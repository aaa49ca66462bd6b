"""The cost re-tune's CPU budget (stream/watch.py), at unit level: an injected clock and a
fake tuning job that reports the CPU seconds it took, run in place of the child process.

A try may begin only once the last one's CPU time over ``RECALL_RETUNE_COST_CPU`` has
passed since it began; the integration test that moves a live index to a cheaper layout
(tests/test_watch_rebuild.py) also checks this, but there the tries' timing is the
machine's, and it passed with the check removed."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from recall.config import Settings
from recall.lsh import LSHIndex, LSHParams
from stream import watch as watch_mod
from stream.metrics import Metrics
from stream.state import IndexSlot
from stream.watch import MIN_SAMPLES, RecallWatch

#: CPU seconds each fake try reports, and the budget: a try "costs" 300 s of waiting
TRY_CPU, BUDGET = 3.0, 0.01
#: seconds a layout is served before its first try (RECALL_RETUNE_COST_SETTLE's default)
COST_SETTLE = Settings().retune_cost_settle


async def in_place(fn: Callable[..., Any], *args: Any) -> Any:
    """Runs a tuning job at once, in the caller (the child process's stand-in)."""
    return fn(*args)


def holding_watch(monkeypatch: pytest.MonkeyPatch
                  ) -> tuple[RecallWatch, list[float], list[float]]:
    """A watch on 300 items (a catalogue the sample holds) whose recall holds at the
    lowest probes (no probe decision is due), with a clock the test moves (``now[0]``)
    and cost tries that take ``TRY_CPU`` seconds of CPU and find nothing cheaper; and the
    clock readings at which the tries ran."""
    now, tries = [0.0], []
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    index = LSHIndex(LSHParams(dim=8, k=4, L=2, T=1, seed=1))
    index.add([f"i{i}" for i in range(len(x))], x)

    def fake_tune(vectors: np.ndarray, target: float, current: dict[str, Any],
                  serve_items: int) -> dict[str, Any]:
        tries.append(now[0])
        return {"params": None, "why": None, "summary": "fake", "cpu": TRY_CPU}

    monkeypatch.setattr(watch_mod, "tune_cheaper", fake_tune)
    monkeypatch.setattr(watch_mod, "in_child", in_place)

    async def positions() -> dict[int, int]:
        return {}

    settings = Settings(dim=8, retune_items=1000, retune_cost_cpu=BUDGET)
    w = RecallWatch(settings, IndexSlot(index, 1), Metrics(), None,  # type: ignore[arg-type]
                    positions, exact_max_items=100, clock=lambda: now[0])
    for _ in range(MIN_SAMPLES):
        w.controller.observe(1.0, index.params.T)
    return w, now, tries


async def look(w: RecallWatch) -> None:
    """What the watch does every second: act, and let a try it began run to its end."""
    await w.act()
    if w._cost_task is not None:
        await w._cost_task


async def test_a_cost_try_waits_for_the_last_ones_cpu_time_over_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    w, now, tries = holding_watch(monkeypatch)
    try:
        now[0] = COST_SETTLE - 1.0
        await look(w)
        assert tries == []  # the layout settles first
        now[0] = COST_SETTLE
        await look(w)
        assert tries == [COST_SETTLE]
        allowed = COST_SETTLE + TRY_CPU / BUDGET
        assert w.cost_at == pytest.approx(allowed)
        for t in np.arange(COST_SETTLE + 1.0, allowed, 10.0):  # every look until allowed
            now[0] = float(t)
            await look(w)
        assert tries == [COST_SETTLE]
        now[0] = allowed
        await look(w)
        assert tries == [COST_SETTLE, allowed]
        assert w.metrics.lsh_cost_tune_seconds._value.get() == pytest.approx(2 * TRY_CPU)
    finally:
        await w.stop()


async def test_no_cost_try_while_the_budget_is_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    w, now, tries = holding_watch(monkeypatch)
    w.settings = Settings(dim=8, retune_items=1000, retune_cost_cpu=0.0)
    try:
        now[0] = 10 * COST_SETTLE
        await look(w)
        assert tries == []
    finally:
        await w.stop()


class LockStore:
    """The store a re-pick reaches first: its lock, held by another worker (so a move
    that passes the memory guard stops there); records that it was asked."""

    keys = SimpleNamespace(repick_lock="repick")

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def acquire(self, lock: str, seconds: float) -> bool:
        self.asked.append(lock)
        return False


def cheaper_watch(monkeypatch: pytest.MonkeyPatch, rss: int, budget: int,
                  table_delta: int) -> tuple[RecallWatch, LockStore, list[float]]:
    """A holding watch whose cost try finds a cheaper layout, the new table
    ``table_delta`` bytes over the served one, in a worker of ``rss`` bytes with a memory
    budget of ``budget`` (injected: no /proc, no cgroup)."""
    from stream.memory import MoveGuard

    w, now, tries = holding_watch(monkeypatch)
    cheaper = LSHParams(dim=8, k=3, L=2, T=1, seed=1).to_dict()

    def fake_tune(vectors: np.ndarray, target: float, current: dict[str, Any],
                  serve_items: int) -> dict[str, Any]:
        tries.append(now[0])
        return {"params": cheaper, "why": "fake", "summary": "fake", "cpu": TRY_CPU,
                "table_delta": table_delta}

    monkeypatch.setattr(watch_mod, "tune_cheaper", fake_tune)
    store = LockStore()
    w.store = store  # type: ignore[assignment]
    w.guard = MoveGuard(budget, rss=lambda: rss)
    now[0] = COST_SETTLE
    return w, store, tries


async def test_a_move_that_would_exceed_the_memory_budget_is_postponed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    mib = 2**20
    w, store, tries = cheaper_watch(monkeypatch, rss=560 * mib, budget=600 * mib,
                                    table_delta=40 * mib)
    try:
        await look(w)
        assert len(tries) == 1
        assert store.asked == []  # no version made: the move waits
        need = w.slot.index.relayout_bytes(LSHParams(dim=8, k=3, L=2, T=1, seed=1),
                                           40 * mib)
        assert need >= 40 * mib  # the new table at least: 560 + it > 600
        postponed = w.metrics.lsh_retunes_postponed.labels("cost")._value.get()
        assert postponed == 1
        assert w.metrics.lsh_retunes.labels("cost")._value.get() == 0
        assert not w.rebuilding
    finally:
        await w.stop()


async def test_a_move_within_the_memory_budget_goes_ahead(
        monkeypatch: pytest.MonkeyPatch) -> None:
    mib = 2**20
    w, store, tries = cheaper_watch(monkeypatch, rss=400 * mib, budget=600 * mib,
                                    table_delta=40 * mib)
    try:
        await look(w)
        assert len(tries) == 1
        assert store.asked == ["repick"]  # on to the re-pick lock (another worker's)
        assert w.metrics.lsh_retunes_postponed.labels("cost")._value.get() == 0
    finally:
        await w.stop()


def whole_watch(monkeypatch: pytest.MonkeyPatch, rss: int, child: int,
                worker_mb: int | None = 600, container_mb: int | None = None
                ) -> tuple[RecallWatch, list[float], list[int]]:
    """A holding watch whose catalogue is tuned whole (larger than the sample), at ``rss``
    bytes, with a worker budget of ``worker_mb`` MiB (None: none) and a container limit
    of ``container_mb`` (None: none), and a child that would take ``child`` bytes; and
    the clock readings of the sample's tries (none should run: not for this size) and
    the rows of each whole try."""
    from stream.memory import MoveGuard

    w, now, tries = holding_watch(monkeypatch)
    # (the budgets are the guards set below: the watch reads memory_limit_mb only when built)
    w.settings = Settings(dim=8, retune_items=100, retune_cost_cpu=BUDGET)
    whole: list[int] = []

    def fake_whole(path: str, rows: int, target: float, current: dict[str, Any]
                   ) -> dict[str, Any]:
        whole.append(rows)
        return {"params": None, "why": None, "summary": "fake", "cpu": TRY_CPU}

    monkeypatch.setattr(watch_mod, "tune_cheaper_whole", fake_whole)
    monkeypatch.setattr(watch_mod, "child_bytes", lambda rows, dim: child)
    mib = 2**20
    w.guard = MoveGuard(None if worker_mb is None else worker_mb * mib, rss=lambda: rss)
    w.container = MoveGuard(None if container_mb is None else container_mb * mib,
                            rss=lambda: rss)
    now[0] = COST_SETTLE
    return w, tries, whole


@pytest.mark.parametrize("room", [-1, 1])
async def test_a_whole_catalogue_try_needs_room_for_its_child(
        monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """A catalogue larger than the sample is tuned whole in a child process beside the
    worker (~1 GB at 1M x 64): with less room than the child takes in the container, the
    try is skipped (no snapshot written, no child) and waits as a failed one does."""
    budget = 600 * 2**20
    need = 900 * 2**20
    w, tries, whole = whole_watch(monkeypatch, rss=budget - need + (1 if room < 0 else 0),
                                  child=need, worker_mb=None, container_mb=600)
    try:
        await look(w)
        assert tries == []
        assert whole == ([] if room < 0 else [300])
        if room < 0:
            assert w.cost_at == COST_SETTLE + watch_mod.REPICK_LOCK_SECONDS
    finally:
        await w.stop()


async def test_the_whole_try_runs_when_the_container_holds_its_child(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RECALL_MEMORY_LIMIT_MB=600 is the worker's own share: a ~900 MiB child, another
    process, is held to the container (no limit here), so the try runs while the worker
    has room for a move. Before, the child was added to the worker's 600 MiB and every
    try at 1M x 64 was skipped: the worker never looked for a cheaper layout."""
    mib = 2**20
    w, _, whole = whole_watch(monkeypatch, rss=500 * mib, child=900 * mib)
    try:
        await look(w)
        assert whole == [300]
    finally:
        await w.stop()


async def test_no_whole_try_when_not_even_the_least_move_would_fit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker with no room under its budget for the smallest move a try could propose
    (8 tables at the served table's bytes per entry) does not pay for a ~1 GB child
    whose answer it could not use: skipped, counted as postponed, again after
    REPICK_LOCK_SECONDS."""
    mib = 2**20
    w, _, whole = whole_watch(monkeypatch, rss=600 * mib - 1024, child=mib)
    try:
        await look(w)
        assert whole == []
        assert w.metrics.lsh_retunes_postponed.labels("cost")._value.get() == 1
        assert w.cost_at == COST_SETTLE + watch_mod.REPICK_LOCK_SECONDS
    finally:
        await w.stop()


def options_watch(monkeypatch: pytest.MonkeyPatch, rss: list[int],
                  options: list[tuple[LSHParams, int]]
                  ) -> tuple[RecallWatch, LockStore, list[float], list[float]]:
    """A holding watch whose one cost try proposes ``options`` (layout, its table's
    bytes over the served one's), best first, in a worker of ``rss[0]`` bytes (the test
    may change it) with a budget of 600 MiB; the clock, the store, the tries."""
    from stream.memory import MoveGuard

    w, now, tries = holding_watch(monkeypatch)
    found = [{"params": p.to_dict(), "why": "fake", "table_delta": d} for p, d in options]

    def fake_tune(vectors: np.ndarray, target: float, current: dict[str, Any],
                  serve_items: int) -> dict[str, Any]:
        tries.append(now[0])
        return {**found[0], "options": found, "summary": "fake", "cpu": TRY_CPU}

    monkeypatch.setattr(watch_mod, "tune_cheaper", fake_tune)
    store = LockStore()
    w.store = store  # type: ignore[assignment]
    w.guard = MoveGuard(600 * 2**20, rss=lambda: rss[0])
    now[0] = COST_SETTLE
    return w, store, now, tries


BIG = LSHParams(dim=8, k=3, L=4, T=1, seed=1)
SMALL = LSHParams(dim=8, k=3, L=2, T=1, seed=1)


async def test_a_cost_move_goes_to_the_best_layout_that_fits_the_budget(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The try's first choice would take the worker past its budget (its table 100 MiB
    over the served one, at 560 of 600 MiB); the next, a smaller table, fits: the
    worker moves there rather than stay where it is. Before, the first choice alone was
    weighed and the move was postponed."""
    mib = 2**20
    w, store, _, tries = options_watch(monkeypatch, [560 * mib],
                                       [(BIG, 100 * mib), (SMALL, 0)])
    caplog.set_level("INFO", logger="stream.watch")
    try:
        await look(w)
        assert len(tries) == 1
        assert store.asked == ["repick"]  # on to the re-pick lock (another worker's)
        assert f"-> {SMALL.describe()} (cost)" in caplog.text
        assert w.metrics.lsh_retunes_postponed.labels("cost")._value.get() == 0
    finally:
        await w.stop()


async def test_a_postponed_move_is_tried_again_later_without_a_new_child(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No option fits: the move is postponed (counted, no version made) and kept; it is
    weighed again only after POSTPONED_RETRY, against the RSS then, and goes ahead once
    it fits, from the same try (no second ~1 GB child). Before, a postponed cost move
    was dropped until the next try, hours later at 1M (its CPU over 0.01 of a core)."""
    mib = 2**20
    rss = [560 * mib]
    w, store, now, tries = options_watch(monkeypatch, rss, [(BIG, 100 * mib)])
    try:
        await look(w)
        assert store.asked == []
        assert w.metrics.lsh_retunes_postponed.labels("cost")._value.get() == 1
        now[0] = COST_SETTLE + watch_mod.POSTPONED_RETRY - 1
        await look(w)
        assert store.asked == [] and len(tries) == 1  # nothing weighed meanwhile
        rss[0] = 400 * mib
        now[0] = COST_SETTLE + watch_mod.POSTPONED_RETRY
        await look(w)
        assert store.asked == ["repick"] and len(tries) == 1
        assert w.metrics.lsh_retunes_postponed.labels("cost")._value.get() == 1
    finally:
        await w.stop()


async def test_a_size_repick_held_back_by_memory_lets_a_cost_try_look_for_one_that_fits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A size re-pick the budget postpones is weighed again only after POSTPONED_RETRY
    (every 30 s it was a warning each time), and meanwhile a due cost try runs: it
    judges smaller tables too. Before, the size re-pick was retried every 30 s and, the
    catalogue staying grown, no cost try ever ran."""
    from stream.memory import MoveGuard

    w, now, tries = holding_watch(monkeypatch)
    w.chosen_for = 10  # the catalogue (300) has grown 4x past it
    w.store = LockStore()  # type: ignore[assignment]
    w.guard = MoveGuard(600 * 2**20, rss=lambda: 600 * 2**20 - 1024)
    try:
        now[0] = COST_SETTLE
        await look(w)
        assert w.metrics.lsh_retunes_postponed.labels("size")._value.get() == 1
        assert tries == []
        for t in np.arange(COST_SETTLE + 10, COST_SETTLE + watch_mod.POSTPONED_RETRY, 10.0):
            now[0] = float(t)
            await look(w)
        assert w.metrics.lsh_retunes_postponed.labels("size")._value.get() == 1
        now[0] = COST_SETTLE + watch_mod.POSTPONED_RETRY
        await look(w)
        assert tries == [now[0]]
    finally:
        await w.stop()
