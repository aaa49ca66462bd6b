"""The benches' settle phase reads the worker's recall monitor from its real exposition and
waits for the monitor's own rule for keeping T (recall.monitor.ProbeController.decide)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from devtools.e2e.settle import holds, monitor_state
from recall.monitor import ProbeController
from stream.metrics import Metrics
from stream.watch import MIN_SAMPLES, WINDOW, publish_estimates

TARGET = 0.95


def controller(values: list[float] | None, probes: int = 9,
               below: list[float] | None = None) -> ProbeController:
    """A worker's controller after it saw ``values`` at T=probes and ``below`` at the next
    lower T (the same queries answered again)."""
    c = ProbeController(TARGET, probes, 64, window=WINDOW, min_samples=MIN_SAMPLES,
                        early_samples=30)
    for v in values or []:
        c.observe(v, probes)
    for v in below or []:
        assert c.below is not None and c.observe(v, c.below)
    return c


def exposition(values: list[float] | None, probes: int = 9,
               below: list[float] | None = None) -> str:
    """The worker's /metrics for that controller, its gauges set by the worker's code."""
    m = Metrics()
    c = controller(values, probes, below)
    m.lsh_target.set(TARGET)
    m.lsh_probes.set(probes)
    publish_estimates(m, c)
    m.lsh_recall_queries.inc(len(values or []))
    return generate_latest(m.registry).decode()


def keeps(values: list[float], probes: int = 9, below: list[float] | None = None) -> bool:
    """What the worker's controller decides on the same samples: no change."""
    return controller(values, probes, below).decide() is None


def recalls(n: int, hits: int) -> list[float]:
    """n per-query recalls at k = 10 whose mean is ~hits/10, with some spread."""
    return [min(1.0, max(0.0, (hits + (i % 3 - 1)) / 10)) for i in range(n)]


def test_the_monitor_figures_are_read_from_the_workers_metrics() -> None:
    state = monitor_state(exposition(recalls(120, 9), probes=14, below=recalls(110, 8)))
    assert state["probes"] == 14 and state["target"] == TARGET
    assert state["samples"] == 120 and state["sampled_total"] == 120
    assert state["gauge"] == pytest.approx(0.9, abs=0.01)
    assert state["low"] < state["gauge"]
    assert state["below"] == 9 and state["below_samples"] == 110
    assert state["below_low"] < 0.8
    assert math.isnan(monitor_state(exposition(None))["gauge"])


AT_TARGET = [1.0] * 60 + [0.9] * 60  # mean 0.95
SHORT = recalls(MIN_SAMPLES, 9)  # mean ~0.9


@pytest.mark.parametrize(("values", "probes", "below", "why"), [
    (recalls(150, 9), 9, SHORT, "below target: steps up"),
    ([1.0] * (MIN_SAMPLES - 1), 9, SHORT, "too few samples: no decision yet"),
    ([1.0] * WINDOW, 9, [1.0] * MIN_SAMPLES, "the T below holds the target: steps down"),
    (AT_TARGET, 9, [1.0] * (MIN_SAMPLES - 1), "too few samples at the T below yet"),
])
def test_not_settled_while_the_monitor_would_still_move_t(values: list[float], probes: int,
                                                          below: list[float], why: str
                                                          ) -> None:
    assert not holds(monitor_state(exposition(values, probes, below))), why
    if len(values) >= MIN_SAMPLES and len(below) >= MIN_SAMPLES:
        assert not keeps(values, probes, below), why  # the controller agrees: it moves


@pytest.mark.parametrize(("values", "probes", "below"), [
    (AT_TARGET, 9, SHORT),  # at target, the T below short of it
    ([1.0] * WINDOW, 9, AT_TARGET),  # well above, the T below not wholly above target
    ([1.0] * WINDOW, 1, None),  # no lower T
])
def test_settled_when_the_monitor_keeps_t(values: list[float], probes: int,
                                          below: list[float] | None) -> None:
    assert holds(monitor_state(exposition(values, probes, below)))
    assert keeps(values, probes, below)


def test_a_phase_whose_probes_moved_says_so() -> None:
    from devtools.e2e.report import probes_moved

    assert probes_moved({"lsh_probes_start": 14.0, "lsh_probes": 21.0}) == (
        "the worker's probes moved during the phase (T=14 -> 21): its figures mix both "
        "settings")
    assert probes_moved({"lsh_probes_start": 14.0, "lsh_probes": 14.0}) == ""
    assert probes_moved({"lsh_probes_start": None, "lsh_probes": 9.0}) == ""
