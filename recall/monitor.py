"""Live recall monitor, the pure part: sampling budget, recall estimate, probe controller.

Role: the worker compares a few of its LSH answers with exact search (off the event loop)
and feeds the per-query recall here; this module says what the recall is (with an
interval) and what to do about it. No I/O, no clock reads (callers pass ``now``), no
threads: the wiring lives in ``stream/watch.py``.

- :class:`SampleBudget` is a token bucket: at most ``per_second`` samples a second on
  average, so exact search (O(items) per query) has a bounded cost whatever the load.
- :class:`RecallWindow` keeps the per-query recall of the last ``size`` samples taken with
  the parameters now served; its :class:`Estimate` is the mean with a normal-approximation
  95% interval (the query is the unit: its found items are not independent).
- :class:`ProbeController` holds a target recall by moving the probes per table T along a
  geometric ladder. It keeps two windows: the answers served at T, and the same sampled
  queries answered again at the next lower T (the worker measures both against one exact
  answer). Up once ``min_samples`` samples put T's mean below the target, or sooner,
  after ``early_samples``, when the whole interval is below it (a recall far below target
  is plain from a few samples, and the sampling rate is bounded: waiting for
  ``min_samples`` at each step kept a 1M catalogue below target for minutes). Down when
  the lower T's own interval, over at least ``min_samples``, is wholly above the target.
  A window lives as long as it is fed without a break (a step keeps the one it shares
  with the new pair), so a T left for its neighbour is judged again on fresh samples, and
  a chance dip of one window is undone once the samples say so. (Judged on the served T's
  interval alone, with a lower T once seen short never tried again, one dip of a 200-sample
  mean below the target left a 1M catalogue one step up for good: T=14 -> 21, 3,637 ->
  5,224 candidates a request, where T=14 held 0.97.) When T is at its maximum and the
  interval is wholly below the target, it asks for a re-tune of the hash layout.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass

#: the normal quantile of a two-sided 95% interval
Z95 = 1.959963984540054


class SampleBudget:
    """Token bucket: ``take(now)`` grants at most ``per_second`` a second on average and
    ``burst`` at once. ``per_second`` 0 grants nothing (monitor off)."""

    def __init__(self, per_second: float, burst: float = 1.0) -> None:
        if not (per_second >= 0 and math.isfinite(per_second)):
            raise ValueError(f"per_second must be a finite number >= 0, got {per_second!r}")
        if not burst >= 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.per_second = float(per_second)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    def set_rate(self, per_second: float) -> None:
        """A new average rate; the burst follows it (at least 1), so a lowered rate is not
        outrun by the tokens saved up at the old one."""
        self.per_second = max(0.0, float(per_second))
        self.burst = max(1.0, self.per_second)
        self._tokens = min(self._tokens, self.burst)

    def take(self, now: float) -> bool:
        if self.per_second <= 0:
            return False
        if self._last is not None:
            self._tokens = min(self.burst,
                               self._tokens + max(0.0, now - self._last) * self.per_second)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def query_recall(found: Sequence[str], truth: Sequence[str]) -> float | None:
    """Fraction of the exact top-k (``truth``) among the ``found`` items; None when the
    exact answer is empty (nothing to find: the query says nothing about recall)."""
    if not truth:
        return None
    return len(set(found) & set(truth)) / len(truth)


@dataclass(frozen=True)
class Estimate:
    """Mean per-query recall of ``n`` samples and its 95% interval (clipped to [0, 1])."""

    mean: float
    low: float
    high: float
    n: int


class RecallWindow:
    """The per-query recall of the last ``size`` samples."""

    def __init__(self, size: int = 200) -> None:
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        self.values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"a recall is in [0, 1], got {value!r}")
        self.values.append(float(value))

    def clear(self) -> None:
        self.values.clear()

    def __len__(self) -> int:
        return len(self.values)

    def estimate(self) -> Estimate | None:
        """None with fewer than two samples (no spread, no interval)."""
        return mean_interval(self.values)


def mean_interval(values: Collection[float]) -> Estimate | None:
    """The mean of per-query recalls and its normal-approximation 95% interval (the query
    as the unit, clipped to [0, 1]); None with fewer than two values. The live gauge, the
    tuner and the benchmarks all report recall this way, so their intervals compare."""
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = Z95 * math.sqrt(var / n)
    return Estimate(mean, max(0.0, mean - half), min(1.0, mean + half), n)


def probe_ladder(max_probes: int) -> list[int]:
    """Probe counts the controller moves between: 1, 2, 3, 4, 6, 8, 12, 16, ... (steps of
    about 1.5x, so one step changes the candidates by a bounded factor) up to the max."""
    if max_probes < 1:
        raise ValueError(f"max_probes must be >= 1, got {max_probes}")
    out = [1]
    while out[-1] < max_probes:
        out.append(min(max_probes, max(out[-1] + 1, round(out[-1] * 1.5))))
    return out


@dataclass(frozen=True)
class Decision:
    """What the controller wants: new probes per table, or a re-tune; ``reason`` for logs."""

    probes: int | None = None
    retune: bool = False
    reason: str = ""


class ProbeController:
    """Holds ``target`` recall by adjusting the probes per table (see the module docstring).

    Feed it with :meth:`observe` (a query's recall and the probes it was answered with:
    the T served, or :attr:`below`) and ask :meth:`decide`; apply what it returns, then
    tell it with :meth:`applied` (probes) or :meth:`reset` (a new index with new
    parameters).
    """

    def __init__(self, target: float, probes: int, max_probes: int, *,
                 window: int = 200, min_samples: int = 40,
                 early_samples: int | None = None) -> None:
        if not 0 < target <= 1:
            raise ValueError(f"target must be in (0, 1], got {target!r}")
        if min_samples < 2 or min_samples > window:
            raise ValueError(f"min_samples must be in 2..window, got {min_samples}")
        early = min_samples if early_samples is None else early_samples
        if not 2 <= early <= min_samples:
            raise ValueError(f"early_samples must be in 2..min_samples, got {early}")
        self.target = float(target)
        self.min_samples = int(min_samples)
        #: samples after which an interval wholly below the target raises T
        self.early_samples = int(early)
        self.max_probes = max(int(max_probes), int(probes))
        self.ladder = probe_ladder(self.max_probes)
        self.size = int(window)
        self.probes = int(probes)
        #: per-query recalls by the probes they were answered with: the served T's and
        #: the next lower T's, each since it was last fed without a break
        self.windows: dict[int, RecallWindow] = {}
        self.retune_asked = False

    @property
    def below(self) -> int | None:
        """The next lower T on the ladder: the worker answers its samples with it too."""
        lower = [t for t in self.ladder if t < self.probes]
        return lower[-1] if lower else None

    @property
    def window(self) -> RecallWindow:
        """The window of the T served now."""
        return self._window(self.probes)

    def _window(self, probes: int) -> RecallWindow:
        w = self.windows.get(probes)
        if w is None:
            w = self.windows[probes] = RecallWindow(self.size)
        return w

    def observe(self, value: float, probes: int) -> bool:
        """Count one query's recall if it was answered with the T served or the one below."""
        if probes != self.probes and probes != self.below:
            return False
        self._window(probes).add(value)
        return True

    def estimate(self) -> Estimate | None:
        return self.window.estimate()

    def estimate_below(self) -> Estimate | None:
        """The recall the next lower T gives the same queries (None: no lower T, or fewer
        than two samples)."""
        below = self.below
        return None if below is None else self._window(below).estimate()

    def _up(self) -> int | None:
        higher = [t for t in self.ladder if t > self.probes]
        return higher[0] if higher else None

    def decide(self) -> Decision | None:
        """A change when the windows hold enough samples and call for one, else None."""
        est = self.window.estimate()
        judged = est is not None and (
            est.n >= self.min_samples or (est.n >= self.early_samples and est.high < self.target))
        if est is not None and judged and est.mean < self.target:
            up = self._up()
            if up is not None:
                return Decision(probes=up, reason=f"recall {est.mean:.3f} < target "
                                f"{self.target:g} at T={self.probes}: T={up}")
            if est.high < self.target and not self.retune_asked:
                self.retune_asked = True
                return Decision(retune=True, reason=f"recall {est.mean:.3f} (95% CI "
                                f"{est.low:.3f}-{est.high:.3f}) < target {self.target:g} "
                                f"at the most probes, T={self.probes}: re-tune")
            return None
        low = self.estimate_below()
        if low is not None and low.n >= self.min_samples and low.low > self.target:
            return Decision(probes=self.below, reason=f"recall {low.mean:.3f} (95% CI from "
                            f"{low.low:.3f}, {low.n} samples) > target {self.target:g} at "
                            f"T={self.below}, the step below T={self.probes}: T={self.below}")
        return None

    def applied(self, probes: int) -> None:
        """The index now answers with ``probes`` per table. The windows fed before and
        after (the T left and the T entered, one of them the other's neighbour below)
        keep their samples; any other starts empty."""
        fed = {self.probes, self.below}
        self.probes = int(probes)
        keep = fed & {self.probes, self.below}
        self.windows = {t: w for t, w in self.windows.items() if t in keep}

    def reset(self, probes: int) -> None:
        """A new index (new hash layout): forget everything learnt about the old one."""
        self.windows.clear()
        self.applied(probes)
        self.max_probes = max(self.max_probes, self.probes)
        self.ladder = probe_ladder(self.max_probes)
        self.retune_asked = False


def grown(items: int, chosen_for: int, floor: int, factor: float = 4.0) -> bool:
    """The catalogue has outgrown the parameters: over ``floor`` items (below it search is
    exact anyway) and at least ``factor`` times the size they were chosen for."""
    return items > floor and items >= factor * max(chosen_for, 1)


def served_size(items: int, factor: float = 4.0) -> int:
    """The catalogue size to pick a layout for when re-picking at ``items``: a growing
    catalogue keeps it until it reaches ``factor`` times that (the size trigger), so the
    layout is chosen for the middle of that range (geometric: k follows log n), not for
    its start. Chosen for ``items``, a layout re-picked at 473,000 items (k=9) served a
    1M catalogue with T raised to 9 (k=9 T=8 re-ranked 12,408 candidates at 1M where the
    default for 1M, k=10 T=5, re-ranks 4,352)."""
    return max(1, round(items * math.sqrt(factor)))


def excluded(found: Sequence[str], skip: Collection[str], k: int) -> list[str]:
    """The first ``k`` of ``found`` not in ``skip`` (what a response with exclusions holds)."""
    return [i for i in found if i not in skip][:k]
