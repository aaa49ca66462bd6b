"""The recall monitor's pure logic: budget, estimate, probe controller (recall.monitor)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from offline.synthetic import clustered_catalogue
from recall.lsh import LSHIndex, LSHParams
from recall.monitor import (
    ProbeController,
    RecallWindow,
    SampleBudget,
    grown,
    probe_ladder,
    query_recall,
)
from recall.tuner import exact_topk, user_like_queries


def test_the_budget_grants_its_rate_whatever_the_offered_load():
    budget = SampleBudget(per_second=5.0, burst=2.0)
    granted = sum(budget.take(t * 0.001) for t in range(10_000))  # 1,000 offers/s for 10 s
    assert 50 <= granted <= 52  # 5/s for 10 s, plus the initial burst
    assert not SampleBudget(0.0).take(0.0)  # 0 = off
    idle = SampleBudget(per_second=1.0, burst=3.0)
    assert [idle.take(100.0 + i * 1e-3) for i in range(4)] == [True, True, True, False]


def test_query_recall_counts_the_exact_items_found():
    assert query_recall(["a", "b", "x"], ["a", "b", "c", "d"]) == 0.5
    assert query_recall([], ["a"]) == 0.0
    assert query_recall(["a"], []) is None


def test_the_interval_covers_the_true_recall_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    true = 0.9
    covered = 0
    for _ in range(400):
        w = RecallWindow(100)
        for v in rng.binomial(10, true, size=100) / 10:
            w.add(v)
        est = w.estimate()
        assert est is not None and est.n == 100
        covered += est.low <= true <= est.high
    assert 0.91 <= covered / 400 <= 0.99


def test_the_window_keeps_the_last_samples_only():
    w = RecallWindow(10)
    assert w.estimate() is None
    for _ in range(10):
        w.add(0.0)
    for _ in range(10):
        w.add(1.0)
    est = w.estimate()
    assert est is not None and est.mean == 1.0 and est.low == est.high == 1.0
    with pytest.raises(ValueError):
        w.add(1.5)


def test_the_probe_ladder_climbs_by_bounded_steps():
    ladder = probe_ladder(64)
    assert ladder[0] == 1 and ladder[-1] == 64
    assert all(a < b <= max(a + 1, round(a * 1.5)) for a, b in itertools.pairwise(ladder))


def feed(ctl: ProbeController, recall_at: Callable[[int], float], n: int, seed: int = 0
         ) -> None:
    """n queries of 10 items each, found with probability recall_at(T) at the current T,
    and answered again at the T below (as the worker does)."""
    rng = np.random.default_rng(seed)
    below = ctl.below
    for v in rng.binomial(10, recall_at(ctl.probes), size=n) / 10:
        ctl.observe(float(v), ctl.probes)
        if below is not None:
            ctl.observe(float(rng.binomial(10, recall_at(below)) / 10), below)


def run(ctl: ProbeController, recall_at: Callable[[int], float], rounds: int) -> list[int]:
    """Let the controller act ``rounds`` times; the probe counts it went through."""
    path = [ctl.probes]
    for r in range(rounds):
        feed(ctl, recall_at, ctl.min_samples, seed=r)
        d = ctl.decide()
        if d is not None and d.probes is not None:
            ctl.applied(d.probes)
            path.append(ctl.probes)
    return path


def curve(at: int, low: float, high: float) -> Callable[[int], float]:
    """Recall rising with T: ``low`` below ``at`` probes, ``high`` from ``at`` on."""
    return lambda t: high if t >= at else low


def test_the_controller_raises_probes_until_the_target_holds_then_stays():
    ctl = ProbeController(0.95, probes=2, max_probes=64, min_samples=50)
    path = run(ctl, curve(9, 0.85, 0.985), 40)
    assert path == [2, 3, 4, 6, 9], path  # and stays at 9: 6 fell short, 9 holds


def test_the_controller_lowers_probes_when_recall_is_well_above_target():
    ctl = ProbeController(0.95, probes=32, max_probes=64, min_samples=50)
    path = run(ctl, curve(6, 0.9, 1.0), 40)
    assert path == [32, 21, 14, 9, 6], path  # down to the cheapest T holding the target,
    # and no further: the answers at T=4 were measured beside those served, short of it


def test_the_controller_asks_for_a_retune_once_when_probes_cannot_reach_the_target():
    ctl = ProbeController(0.95, probes=16, max_probes=32, min_samples=50)
    decisions = []
    for r in range(20):
        feed(ctl, lambda t: 0.7, 50, seed=r)
        d = ctl.decide()
        if d is not None:
            decisions.append(d)
            if d.probes is not None:
                ctl.applied(d.probes)
    assert [d.probes for d in decisions if d.probes] == [21, 32]
    assert [d.retune for d in decisions].count(True) == 1
    ctl.reset(4)
    assert ctl.probes == 4 and not ctl.windows and ctl.estimate() is None
    feed(ctl, lambda t: 0.7, 50)
    assert ctl.decide().probes == 6  # a new index: climbs again


def test_samples_from_other_probes_do_not_count():
    ctl = ProbeController(0.95, probes=9, max_probes=64, min_samples=10)
    for _ in range(50):
        assert not ctl.observe(0.0, 4) and not ctl.observe(0.0, 14)
    assert ctl.estimate() is None and ctl.estimate_below() is None and ctl.decide() is None
    assert ctl.below == 6 and ctl.observe(1.0, 6) and ctl.estimate() is None


def serve(ctl: ProbeController, recall_at: Callable[[int], float], n: int, seed: int,
          decide_every: int = 6) -> list[int]:
    """n sampled queries as a worker sees them (each answered at the served T and at the
    one below; a decision every ``decide_every`` samples): the T each was served with.
    A query's recall@10 is Binomial(10, p) / 10 with p ~ Beta around recall_at(T) (some
    queries are harder than others, so the spread is a real one's: std ~0.1)."""
    rng = np.random.default_rng(seed)
    served = []
    for i in range(n):
        t, below = ctl.probes, ctl.below
        served.append(t)
        for probes in (t, below) if below is not None else (t,):
            m = recall_at(probes)
            ctl.observe(float(rng.binomial(10, rng.beta(30 * m, 30 * (1 - m))) / 10), probes)
        if i % decide_every == decide_every - 1:
            d = ctl.decide()
            if d is not None and d.probes is not None:
                ctl.applied(d.probes)
    return served


@pytest.mark.parametrize("seed", range(3))
def test_a_chance_dip_below_the_target_does_not_move_t_up_for_good(seed):
    """T=14 holds the target (0.962) and T=21 costs more (0.985). Over a long run the mean
    of a window at 14 dips below 0.95 by chance now and then; the controller may step up
    then, but must come back once the samples at 14 (measured beside those at 21) say
    it holds. Judged on the served window alone, with a T once seen short never tried
    again, one dip left it at 21 for good (at 1M: 3,637 -> 5,224 candidates a request)."""
    recall_at = {6: 0.85, 9: 0.92, 14: 0.962, 21: 0.985, 32: 0.995}.__getitem__
    ctl = ProbeController(0.95, probes=9, max_probes=64, window=200, min_samples=100,
                          early_samples=30)
    served = serve(ctl, recall_at, 40_000, seed)
    later = served[5_000:]
    assert set(later) <= {14, 21}, sorted(set(later))
    assert later.count(14) / len(later) > 0.8, (later.count(14), later.count(21))
    assert served[-1] == 14 or later.count(21) < len(later) / 5


def test_growth_trigger():
    assert not grown(900, 0, floor=1000)
    assert grown(1001, 0, floor=1000)
    assert not grown(3000, 1001, floor=1000)
    assert grown(4004, 1001, floor=1000)


def test_on_a_real_index_the_controller_reaches_the_target_from_too_few_probes():
    """The controller against a real LSH index and exact search (what the worker does)."""
    x, _ = clustered_catalogue(3000, 32, seed=2)
    q = user_like_queries(x, 600, seed=3)
    truth = exact_topk(x, q, 10)
    index = LSHIndex(LSHParams(dim=32, k=6, L=8, T=1, seed=1))
    index.add([str(i) for i in range(len(x))], x)
    ctl = ProbeController(0.95, probes=1, max_probes=64, min_samples=60)
    for i in range(3000):
        j = i % len(q)
        found = index.search(q[j], 10)[0].ids
        ctl.observe(query_recall(found, [str(t) for t in truth[j]]), index.params.T)
        d = ctl.decide()
        if d is not None and d.probes is not None:
            index.probes = d.probes
            ctl.applied(d.probes)
    held = [query_recall(index.search(qi, 10)[0].ids, [str(t) for t in ti])
            for qi, ti in zip(q, truth, strict=True)]
    assert np.mean(held) >= 0.95, (index.params.T, np.mean(held))
    assert index.params.T > 1


def test_a_mean_just_below_the_target_raises_probes():
    """Holding the target means the mean at or above it, not "not clearly below it"."""
    ctl = ProbeController(0.95, probes=4, max_probes=64, min_samples=50)
    for v in [0.8] * 15 + [1.0] * 35:  # mean 0.94, interval reaching above 0.95
        ctl.observe(v, 4)
    est = ctl.estimate()
    assert est is not None and est.mean < 0.95 < est.high
    assert ctl.decide().probes == 6


def test_a_recall_far_below_the_target_raises_probes_before_min_samples():
    """A recall plainly below target (the whole interval below it) is acted on after
    ``early_samples``; one near the target still waits for ``min_samples``."""
    ctl = ProbeController(0.95, probes=5, max_probes=64, min_samples=100, early_samples=30)
    feed(ctl, lambda t: 0.85, 30)
    est = ctl.estimate()
    assert est is not None and est.n == 30 and est.high < 0.95
    d = ctl.decide()
    assert d is not None and d.probes == 6, d
    ctl.applied(6)
    for v in [0.8] * 3 + [1.0] * 27:  # mean 0.98 at 30 samples: not early
        ctl.observe(v, 6)
    for v in [0.8] * 9:  # mean 0.935: below target, interval reaching above it
        ctl.observe(v, 6)
    est = ctl.estimate()
    assert est is not None and est.mean < 0.95 < est.high and est.n < 100
    assert ctl.decide() is None
    with pytest.raises(ValueError):
        ProbeController(0.95, probes=5, max_probes=64, min_samples=40, early_samples=50)


@pytest.mark.parametrize("seed", range(3))
def test_a_t_just_short_of_the_target_is_seldom_served(seed):
    """The other side of stepping down on the samples at the T below: a T whose recall is
    just short of the target (0.94) is tried again only when a window of its samples,
    measured beside those served, is wholly above the target, so it is seldom served and
    the recall served stays above the target."""
    recall_at = {6: 0.85, 9: 0.92, 14: 0.94, 21: 0.985, 32: 0.995}.__getitem__
    ctl = ProbeController(0.95, probes=9, max_probes=64, window=200, min_samples=100,
                          early_samples=30)
    later = serve(ctl, recall_at, 40_000, seed)[5_000:]
    assert later.count(21) / len(later) > 0.95, (later.count(14), later.count(21))
    assert np.mean([recall_at(t) for t in later]) >= 0.95
