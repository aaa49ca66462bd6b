"""The benches' settle phase reads the worker's recall monitor from its real exposition and
waits for the monitor's own rule for keeping T (recall.monitor.ProbeController.decide)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from devtools.e2e.settle import holds, monitor_state
from recall.monitor import DOWN_MARGIN, ProbeController, RecallWindow
from stream.metrics import Metrics
from stream.watch import MIN_SAMPLES, WINDOW

TARGET = 0.95


def exposition(values: list[float] | None, probes: int = 9) -> str:
    """A worker's /metrics after its monitor saw ``values`` (None: none yet) at T=probes."""
    m = Metrics()
    window = RecallWindow(WINDOW)
    for v in values or []:
        window.add(v)
    est = window.estimate()
    m.lsh_target.set(TARGET)
    m.lsh_probes.set(probes)
    m.lsh_recall.set(est.mean if est else math.nan)
    m.lsh_recall_low.set(est.low if est else math.nan)
    m.lsh_recall_samples.set(est.n if est else 0)
    m.lsh_recall_queries.inc(len(values or []))
    return generate_latest(m.registry).decode()


def keeps(values: list[float], probes: int = 9) -> bool:
    """What the worker's controller decides on the same samples: no change."""
    c = ProbeController(TARGET, probes, 64, window=WINDOW, min_samples=MIN_SAMPLES,
                        early_samples=30)
    for v in values:
        c.observe(v, probes)
    return c.decide() is None


def recalls(n: int, hits: int) -> list[float]:
    """n per-query recalls at k = 10 whose mean is ~hits/10, with some spread."""
    return [min(1.0, max(0.0, (hits + (i % 3 - 1)) / 10)) for i in range(n)]


def test_the_monitor_figures_are_read_from_the_workers_metrics() -> None:
    state = monitor_state(exposition(recalls(120, 9), probes=14))
    assert state["probes"] == 14 and state["target"] == TARGET
    assert state["samples"] == 120 and state["sampled_total"] == 120
    assert state["gauge"] == pytest.approx(0.9, abs=0.01)
    assert state["low"] < state["gauge"]
    assert math.isnan(monitor_state(exposition(None))["gauge"])


@pytest.mark.parametrize(("n", "hits", "why"), [
    (150, 9, "below target: steps up"),
    (MIN_SAMPLES - 1, 10, "too few samples: no decision yet"),
    (MIN_SAMPLES + 20, 10, "wholly above target + margin: steps down"),
])
def test_not_settled_while_the_monitor_would_still_move_t(n: int, hits: int, why: str) -> None:
    values = recalls(n, hits) if hits < 10 else [1.0] * n
    assert not holds(monitor_state(exposition(values))), why
    if n >= MIN_SAMPLES:
        assert not keeps(values), why  # the controller agrees: it would move


def test_settled_when_the_monitor_keeps_t() -> None:
    # at target, the interval's low end within the margin: neither up nor down
    values = [1.0] * 60 + [0.9] * 60
    state = monitor_state(exposition(values))
    assert state["gauge"] >= TARGET and state["low"] <= TARGET + DOWN_MARGIN
    assert holds(state) and keeps(values)
    # well above target with a full window and no step down (the lower T fell short)
    assert holds(monitor_state(exposition([1.0] * WINDOW)))
    assert not holds(monitor_state(exposition([1.0] * (WINDOW - 1))))


def test_a_phase_whose_probes_moved_says_so() -> None:
    from devtools.e2e.report import probes_moved

    assert probes_moved({"lsh_probes_start": 14.0, "lsh_probes": 21.0}) == (
        "the worker's probes moved during the phase (T=14 -> 21): its figures mix both "
        "settings")
    assert probes_moved({"lsh_probes_start": 14.0, "lsh_probes": 14.0}) == ""
    assert probes_moved({"lsh_probes_start": None, "lsh_probes": 9.0}) == ""
