"""The worker's live recall monitor: sampled LSH answers against exact search, and the
probes and parameters that keep recall at ``RECALL_TARGET_RECALL``.

The pure logic (budget, estimate, controller) is :mod:`recall.monitor`; this is the
wiring, on the worker's event loop:

- :meth:`RecallWatch.offer` is called with every LSH answer (cheap: a token bucket of
  ``RECALL_RECALL_SAMPLE_PER_S``); a granted sample (the query vector, k, the excluded
  items, the ids answered, the probes) goes to a small queue (full = dropped).
- :meth:`RecallWatch.run` gathers samples for up to ``GATHER`` seconds (or ``BATCH`` of
  them) and computes their exact top-k as one batch (``search(..., exact=True)``: one
  compiled call, ``recall.exactkernels``, that reads the vectors once per batch, not
  once per sample: 128 MB per read at 1M x 64, and holds no GIL) in its own thread at
  the lowest OS priority (``EXACT_NICE``), so neither the GIL nor the CPU is taken from
  the event loop when it has work; then it counts each query's recall. A sample whose
  index changed meanwhile by more than ``DRIFT`` of its items (items applied, another
  index swapped in, a merge) is dropped: the exact answer would describe another
  catalogue. A few changes are tolerated: a catalogue changing every few seconds
  otherwise left no sample. The controller still looks at the
  index every ``ACT_EVERY`` second while samples gather (a grown catalogue is re-picked
  as soon as before).
- **CPU budget** (``RECALL_RECALL_SAMPLE_CPU``, a fraction of one core): the CPU time
  of each batch is measured (BLAS limited to one thread, which runs in it), and the
  next batch starts no sooner than that time over the budget after this one began, so
  the thread's CPU cannot exceed the budget, whatever a batch costs. The cost is per
  batch more than per sample (at 1M x 64 a batch of 8, 24 or 32 samples each took
  ~270 ms: the pass over the vectors dominates), so the sampling rate is set for *full*
  batches at that pace: the batch's CPU spread over ``BATCH`` samples (a moving
  average), the budget over it. Spread over the samples a short batch happened to
  hold, the rate fell after every short batch while batches still came every
  ``GATHER`` seconds: 0.07 of a core for a budget of 0.05, and fewer samples each time
  (0.8 a second after two minutes at 1M). The rate in use is exported
  (``recall_lsh_recall_sample_rate``) with the seconds spent (``_exact_seconds_total``)
  and the number of samples behind the estimate (``recall_lsh_recall_samples``), so the
  interval's width can be read off with the estimate.
- The controller's decisions are applied on the loop: ``LSHIndex.probes = T`` (the
  buckets do not change, only how many are read); a re-tune is :meth:`_rebuild`.

Re-picking parameters. Three triggers, off with ``RECALL_RETUNE_ITEMS=0`` or explicit
``RECALL_LSH_*`` parameters:

- **size**: the catalogue has grown to 4x the size the served parameters were chosen for
  (a version this worker created empty, with the default parameters, counts as chosen
  for 0 items, so this fires once it passes the exact-search size): the new layout is
  ``recall.tuner.suggested_params`` for the size it will serve until the next re-pick
  (``recall.monitor.served_size``: 2x now), an instant heuristic; the probe controller
  then finds T by measurement.
- **recall**: the probes are at ``RECALL_LSH_MAX_PROBES`` and the recall interval is wholly
  below target: ``recall.tuner.tune`` runs on ``RECALL_RETUNE_ITEMS`` sampled items in a
  child process (its Python loops would hold the worker's GIL), with k scaled from the
  sample to the catalogue served (``serve_items``): tuned on 20,000 items and served to
  1M, the sample's layout would put 50x the sample's items in each bucket. Not to the
  size it may grow to: this re-tune is for a recall the probes could not reach now. The
  child gets the sample only (the whole catalogue would be a second copy of the vectors
  in the worker while it is sent); the live monitor measures the result at full size and
  sets T.
- **cost**: the recall holds (a full window at or above target, the probes settled), the
  layout has been served ``RECALL_RETUNE_COST_SETTLE`` seconds (600), and
  ``RECALL_RETUNE_COST_CPU`` allows a try: the tuner runs in a child process at the
  lowest priority, beside the traffic, on what is served (no size extrapolated). Up to
  ``RECALL_RETUNE_ITEMS`` items: on all of them, the served layout's shape walked beside
  its grid; a choice with ``recall.tuner.MOVE_GAIN`` (20%) fewer candidates at the
  target, or that much less index memory, within the memory budget
  (``recall.tuner.cheaper_move``) is re-picked.
  Larger, up to ``RECALL_RETUNE_COST_MAX_ITEMS``: the stored vectors are written to a
  temporary file (a block at a time: no second matrix in the worker) and the child tunes
  the whole catalogue as ``recall tune`` does (grid on a sample, the best layouts, the
  default and the served layout judged on every item); the other layouts over 10%
  faster (the tuner's tie) in alternated timing passes, smallest table first unless a
  larger one is clearly faster (``recall.tuner.confirmed_move``), are re-picked: the
  first whose move fits the memory budget. A streamed 1M catalogue otherwise kept the size
  re-pick's default, ~4x hnswlib's time where the tuner's layout is ~1.7x. The monitor
  then sets T. The next try waits for this one's CPU time over
  the budget (at 20,000 items a try takes a few seconds of CPU: one every few minutes at
  0.01 of a core). The probe controller alone cannot do this: it lowers T until the
  recall nears the target, whatever the layout re-ranks there. Probe changes go on while
  a try runs; other re-picks wait for it.

Parameters live with the index version in Redis, so every worker and every restart serves
the same ones (and gives the same answers):

- a probe change is applied in memory and written to the live version's ``meta``
  (``Store.set_params``: T does not change the stored bucket keys);
- a new hash layout is a new version (:func:`copy_version`): under the ``{p}:index:repick``
  lock (one worker at a time), the live version's offsets are read, then its items are
  copied and re-hashed into a new version with those offsets (marked ``relayout_of`` the
  live one), which is switched live and the old one deleted. Every worker then switches
  through ``ItemsFollower.rebuild``: one serving the version copied re-hashes the items
  it holds in memory (:mod:`recall.lsh.move`: the vector matrix and ids go to the new
  index, its table is built a slice of the items at a time as the old one drops them,
  item changes held back meanwhile and applied to the new index after); any other reads
  the copy from Redis, replaying item changes from its recorded offsets. Cost: the copy
  in Redis, and in each worker a slice's share of a second table (and the new one's
  growth, if larger) while it moves: a move that would take the deciding worker past its
  memory budget waits (:mod:`stream.memory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from recall.config import Settings
from recall.lsh import LSHIndex, LSHParams
from recall.lsh.move import move_bytes
from recall.monitor import ProbeController, SampleBudget, grown, query_recall, served_size
from recall.store import Store
from stream.memory import MoveGuard, child_bytes, container_budget, memory_budget
from stream.metrics import Metrics
from stream.samples import Sample, _exact, _lower_priority, drift, index_token
from stream.state import IndexSlot
from stream.tunejobs import (
    in_child,
    tune_cheaper,
    tune_cheaper_whole,
    tune_layout,
    write_snapshot,
)
from stream.versions import copy_version

log = logging.getLogger(__name__)

#: samples waiting for their exact answer (more are dropped: the budget is exceeded)
QUEUE = 512
#: samples whose exact answers are computed in one thread call (one matrix product per
#: block of items for all of them)
BATCH = 32
#: seconds the monitor waits for a batch to fill before measuring what it has (a longer
#: wait batches more, but a sample whose catalogue changed meanwhile is dropped)
GATHER = 4.0
#: a sample still counts when the catalogue changed by at most this fraction of its items
#: (as :func:`drift` counts) before its exact answer was computed: items arriving all the
#: time (one every few seconds is enough) otherwise dropped every batch, and the monitor
#: saw nothing. A changed item lands in a query's exact top-k with probability ~k/items
#: and costs it 1/k: the estimate moves by at most ~DRIFT
DRIFT = 0.002
#: seconds between the controller's looks at the index (probes, growth re-pick), whether
#: or not samples are measured
ACT_EVERY = 1.0
#: weight of the newest batch in the moving average of the exact-search time per sample
COST_WEIGHT = 0.3
#: per-query recalls kept, and needed before the controller acts
WINDOW, MIN_SAMPLES = 200, 100
#: samples after which the controller raises T when the whole 95% interval is below the
#: target: at 1M items the CPU budget allows ~8 samples a second, so 100 samples per
#: step made each step of T take 12-50 s; a recall far below target shows in 30
EARLY_SAMPLES = 30
#: size trigger: parameters are re-picked when the catalogue grows by this factor
GROWTH = 4.0
#: seconds between re-pick attempts of one worker
REPICK_QUIET = 30.0
#: seconds before a move postponed for memory is tried again: the budget is read against
#: the RSS then (no new tuning child); every 30 s (REPICK_QUIET) it was a warning each time
POSTPONED_RETRY = 300.0
#: the fewest tables of a layout a cost re-tune proposes (recall.tuner.default_layouts)
LEAST_TABLES = 8
#: seconds the re-pick lock is held at most (a crashed holder does not block forever)
REPICK_LOCK_SECONDS = 600


class RecallWatch:
    """Samples LSH answers, measures their recall, adjusts probes, re-picks parameters."""

    def __init__(self, settings: Settings, slot: IndexSlot, metrics: Metrics, store: Store,
                 positions: Callable[[], Awaitable[dict[int, int]]], exact_max_items: int, *,
                 explicit_params: bool = False, chosen_for: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.slot = slot
        self.metrics = metrics
        self.store = store
        self.positions = positions  # the items follower's positions (copy_version)
        self.exact_max_items = exact_max_items
        self.clock = clock
        wanted = settings.recall_sample_per_s if settings.recall_sample_cpu > 0 else 0.0
        self.budget = SampleBudget(wanted, burst=max(1.0, wanted))
        self._told = -math.inf  # when the rate was last logged
        #: seconds of exact search per sample (moving average; None: none measured yet)
        self.cost: float | None = None
        self.queue: asyncio.Queue[Sample] = asyncio.Queue(QUEUE)
        self._full = asyncio.Event()  # a batch is waiting
        self._oldest = 0.0  # when the oldest sample waiting was queued (clock)
        self._next_at = -math.inf  # no batch measured before (clock): the CPU budget
        self.controller = ProbeController(settings.target_recall, slot.index.params.T,
                                          settings.lsh_max_probes, window=WINDOW,
                                          min_samples=MIN_SAMPLES,
                                          early_samples=EARLY_SAMPLES)
        self.repick = settings.retune_items > 0 and not explicit_params
        self.guard = MoveGuard(memory_budget(settings.memory_limit_mb))
        self.container = MoveGuard(container_budget(settings.memory_limit_mb))  # + child
        self._index = slot.index
        #: catalogue size the served parameters were chosen for (None: at load time)
        self.chosen_for = len(slot.index) if chosen_for is None else chosen_for
        #: catalogue size each version this worker re-picked was chosen for
        self._picked_for: dict[int, int] = {}
        self.rebuilding = False
        self.quiet_until = 0.0  # no re-pick before (clock): one was just made or refused
        #: a cost move postponed for memory: (the index it was measured on, its options)
        self._postponed: tuple[LSHIndex, list[dict]] | None = None
        self._size_held = False  # a size re-pick was postponed for memory on this index
        #: no cost re-tune before (clock): the last one's CPU over RECALL_RETUNE_COST_CPU
        self.cost_at = clock() + settings.retune_cost_settle
        self.cost_began = 0.0  # when the last one began (clock)
        self._cost_task: asyncio.Task | None = None
        self.dropped = 0
        self._task: asyncio.Task | None = None
        #: the one thread exact search runs in, at the lowest priority (_lower_priority)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="recall-exact",
                                        initializer=_lower_priority)
        metrics.lsh_target.set(settings.target_recall)
        metrics.lsh_sample_rate.set(wanted)
        metrics.lsh_probes.set(slot.index.params.T)

    # --- on the request path ---------------------------------------------------------

    def offer(self, vector: np.ndarray, k: int, exclude: Collection[str],
              found: Sequence[str], index: LSHIndex) -> None:
        """One LSH answer (``found``: the ids answered, best first, after exclusions)."""
        if not self.budget.take(self.clock()):
            return
        sample = Sample(np.array(vector, dtype=np.float32), int(k), frozenset(exclude),
                        list(found), index.params.T, index, index_token(index),
                        below=self.controller.below)
        try:
            self.queue.put_nowait(sample)
        except asyncio.QueueFull:
            self.dropped += 1
            return
        if sample.below is not None:
            # after the answer is on its way: one search at the T below, on this thread
            # (the index's kernels share per-slot scratch: not in the exact thread)
            asyncio.get_running_loop().call_soon(self._answer_below, sample)
        if self.queue.qsize() == 1:
            self._oldest = self.clock()
        if self.queue.qsize() >= BATCH:
            self._full.set()

    @staticmethod
    def _answer_below(s: Sample) -> None:
        """The sample's query answered again with the next lower T (what serving it would
        give); the catalogue moved since by at most the loop's turn (``record``'s drift
        check covers both answers)."""
        try:
            s.found_below = s.index.search(s.vector, s.k, [s.exclude], probes=s.below)[0].ids
        except Exception:  # (as _exact) an index changed under us: no second answer
            log.debug("recall monitor: the answer at T=%s failed", s.below, exc_info=True)

    # --- the background task -----------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="recall-watch-lsh")

    async def stop(self) -> None:
        for task in (self._task, self._cost_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self) -> None:
        while True:
            try:
                paced = self._next_at - self.clock()
                if paced > 0:  # the CPU budget: the last batch's time is not paid yet
                    await asyncio.sleep(min(paced, ACT_EVERY))
                elif self.queue.qsize() < BATCH:  # else measure the next batch at once
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._full.wait(), ACT_EVERY)
                self._full.clear()
                n = self.queue.qsize()
                if self.clock() >= self._next_at and (
                        n >= BATCH or (n and self.clock() - self._oldest >= GATHER)):
                    await self.step(timeout=0.0)
                    self._oldest = self.clock()  # (what is left waits a whole GATHER)
                else:  # gathering: the index may still have changed or grown
                    self._follow_slot()
                    await self.act()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recall monitor step failed; going on")
                await asyncio.sleep(1.0)

    async def step(self, timeout: float = 1.0) -> None:
        """Measure the samples waiting (up to BATCH; none waiting: wait up to
        ``timeout`` for one), act on the result."""
        batch: list[Sample] = []
        if self.queue.empty() and timeout > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                batch.append(await asyncio.wait_for(self.queue.get(), timeout))
        while len(batch) < BATCH and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        self._follow_slot()
        if batch:
            loop = asyncio.get_running_loop()
            began = self.clock()
            truths, seconds = await loop.run_in_executor(self._pool, _exact, batch)
            self.metrics.lsh_exact_seconds.inc(seconds)
            if self.settings.recall_sample_cpu > 0:
                self._next_at = began + seconds / self.settings.recall_sample_cpu
            self._fit_budget(seconds / BATCH)
            self.record(batch, truths)
        await self.act()

    def _fit_budget(self, per_sample: float) -> None:
        """The sampling rate that fills a batch in the time the CPU budget leaves between
        batches: RECALL_RECALL_SAMPLE_CPU over the cost per sample of a full batch (never
        above RECALL_RECALL_SAMPLE_PER_S)."""
        w = COST_WEIGHT
        self.cost = per_sample if self.cost is None else (1 - w) * self.cost + w * per_sample
        wanted, cpu = self.settings.recall_sample_per_s, self.settings.recall_sample_cpu
        rate = min(wanted, cpu / self.cost) if self.cost > 0 else wanted
        now = self.clock()
        if now - self._told >= 60 or (rate < wanted) != (self.budget.per_second < wanted):
            self._told = now
            log.info("recall monitor: exact search %.1f ms a sample in full batches: "
                     "%.2f samples/s "
                     "(RECALL_RECALL_SAMPLE_CPU=%g of a core, RECALL_RECALL_SAMPLE_PER_S=%g)",
                     self.cost * 1e3, rate, cpu, wanted)
        self.budget.set_rate(rate)
        self.metrics.lsh_sample_rate.set(rate)

    def _follow_slot(self) -> None:
        """Another index is served (a version rebuilt from Redis): start afresh on it."""
        index = self.slot.index
        if index is not self._index:
            self._index = index
            self.controller.reset(index.params.T)
            self.metrics.lsh_probes.set(index.params.T)
            self._publish()
            # the size its parameters were chosen for: a catalogue arriving on the topic
            # keeps growing while the copy is made and loaded (from the size of the
            # index served then, a re-pick at 3,000 items counted as chosen for 76,000
            # and the next came only at 4x that: 1M items served with a 3,000-item
            # layout); a version another worker picked: its size now
            self.chosen_for = self._picked_for.pop(self.slot.version, len(index))
            self.quiet_until, self._postponed, self._size_held = 0.0, None, False
            self.cost_at = max(self.cost_at, self.clock() + self.settings.retune_cost_settle)

    def record(self, batch: Sequence[Sample], truths: Sequence[list[str] | None]) -> int:
        """Count the samples still describing the served index; returns how many."""
        m, counted = self.metrics, 0
        for s, truth in zip(batch, truths, strict=True):
            if (truth is None or s.index is not self.slot.index
                    or drift(s.token, index_token(s.index)) > DRIFT * len(s.index)):
                continue
            r = query_recall(s.found, truth)
            if r is None:
                continue
            m.lsh_recall_queries.inc()
            m.lsh_recall_found.inc(r)
            self.controller.observe(r, s.probes)
            r_below = None if s.found_below is None else query_recall(s.found_below, truth)
            if r_below is not None and s.below is not None:
                self.controller.observe(r_below, s.below)
            counted += 1
        self._publish()
        return counted

    def _publish(self) -> None:
        publish_estimates(self.metrics, self.controller)

    async def act(self) -> None:
        """Apply the controller's decision; re-pick parameters when due."""
        if self.rebuilding:
            return
        index = self.slot.index
        repick = (self.repick and self.clock() >= self.quiet_until
                  and (self._cost_task is None or self._cost_task.done()))
        d = self.controller.decide()
        if d is not None and d.probes is not None:
            index.probes = d.probes
            self.controller.applied(d.probes)
            self.metrics.lsh_probes.set(d.probes)
            self._publish()
            log.info("LSH probes: %s", d.reason)
            # restarts and new workers start from it (T keeps the stored keys valid)
            with contextlib.suppress(ValueError):  # the version was replaced meanwhile
                await self.store.set_params(self.slot.version, index.params.to_dict())
        elif d is not None and d.retune and repick:
            log.info("LSH parameters: %s", d.reason)
            await self._repick("recall", None)
        elif repick and self._postponed is not None:
            await self._cost_move(*self._postponed)
        elif repick and grown(len(index), self.chosen_for, self.exact_max_items, GROWTH
                              ) and not (self._size_held and self._cost_due()):
            # (a size re-pick the memory budget holds back lets a cost try look for a
            # layout that fits: it judges smaller tables too)
            from recall.tuner import suggested_params

            p = index.params
            size = served_size(len(index), GROWTH)
            params = suggested_params(size, p.dim, p.seed)
            log.info("LSH parameters: %d items, chosen for %d: %s -> %s (the default for "
                     "%d items, the middle of the sizes it will serve)", len(index),
                     self.chosen_for, p.describe(), params.describe(), size)
            await self._repick("size", params)
        elif repick and d is None and self._cost_due():
            self._cost_task = asyncio.create_task(self._cost_retune(index),
                                                  name="recall-watch-cost")

    def _cost_due(self) -> bool:
        """A cost re-tune may run: on, paid for (its CPU budget), an index searched by
        LSH, and its recall holding: a full window at or above the target with the probes
        settled (the caller saw no decision). Not only when it is far above: the probe
        controller lowers T until the recall is near the target, so a layout that re-ranks
        twice what another needs settles there as well (k=3 L=16 on 3,000 items: T 8 ->
        1, recall 1.0 -> 0.953).

        Only a catalogue the tuner can measure whole: one the sample holds (up to
        ``RECALL_RETUNE_ITEMS`` items), or one written out to the child process (up to
        ``RECALL_RETUNE_COST_MAX_ITEMS``, :meth:`_cost_retune`). A layout chosen on a
        sample and scaled up is a guess the tuner itself judges again at full size
        before choosing (recall.tuner): on a 20,000-item sample of a 1M catalogue the
        best simhash k was 10 (16 once scaled), where judged on all 1M items it was 23."""
        cpu = self.settings.retune_cost_cpu
        n = len(self.slot.index)
        most = max(self.settings.retune_items, self.settings.retune_cost_max_items)
        if cpu <= 0 or self.clock() < self.cost_at or n <= self.exact_max_items or n > most:
            return False
        est = self.controller.estimate()
        return (est is not None and est.n >= MIN_SAMPLES
                and est.mean >= self.settings.target_recall)

    async def _cost_retune(self, index: LSHIndex) -> None:
        """In the background, beside the traffic: the tuner on ``RECALL_RETUNE_ITEMS``
        sampled items in a child process at the lowest priority, the served layout walked
        beside its grid on the same queries; a clearly cheaper layout meeting the target
        there is re-picked as any other (:meth:`_repick`: a new version, swapped
        atomically). The next try waits for this one's CPU time over
        ``RECALL_RETUNE_COST_CPU``, so the tries take at most that share of a core."""
        began = self.cost_began = self.clock()
        self.cost_at = began + REPICK_LOCK_SECONDS  # (if this one fails)
        least = replace(index.params, L=min(index.params.L, LEAST_TABLES))
        if len(index) > self.settings.retune_items and (why := self.container.refusal(
                child_bytes(len(index), index.dim), "the re-tune's child") or self.guard.refusal(
                move_bytes(index, least), f"the least move it could propose (L={least.L})")):
            self.metrics.lsh_retunes_postponed.labels("cost").inc()
            log.warning("LSH cost re-tune skipped, again in %ds: %s", REPICK_LOCK_SECONDS, why)
            return
        snapshot = None
        try:
            if len(index) <= self.settings.retune_items:
                vectors = index.sample_vectors(self.settings.retune_items, np.random.default_rng())
                n = len(vectors)
                out = await in_child(tune_cheaper, vectors, self.settings.target_recall,
                                     index.params.to_dict(), len(index))
            else:
                snapshot, n = await asyncio.to_thread(write_snapshot, index)
                log.info("LSH cost re-tune: %d items written out in %.1fs, tuned whole in "
                         "a child process", n, self.clock() - began)
                out = await in_child(tune_cheaper_whole, snapshot, n,
                                     self.settings.target_recall, index.params.to_dict())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("LSH cost re-tune failed; not again for %ds", REPICK_LOCK_SECONDS)
            return
        finally:
            if snapshot is not None:
                with contextlib.suppress(OSError):
                    os.unlink(snapshot)
        self.cost_at = began + out["cpu"] / self.settings.retune_cost_cpu
        self.metrics.lsh_cost_tune_seconds.inc(out["cpu"])
        if out["params"] is None:
            log.info("LSH cost re-tune on %d items: no layout clearly cheaper than %s "
                     "(%s); next try in %.0fs\n%s", n, index.params.describe(),
                     out["why"] or "", self.cost_at - self.clock(), out["summary"])
            return
        log.info("LSH cost re-tune on %d items: cheaper than %s at the target: %s\n%s", n,
                 index.params.describe(), out["why"], out["summary"])
        await self._cost_move(index, out.get("options") or [out])

    async def _cost_move(self, index: LSHIndex, options: list[dict]) -> None:
        """The first of a cost try's ``options`` (best first, ``recall.tuner.
        confirmed_move``) whose move fits the memory budget, re-picked; none: all kept and
        tried again after POSTPONED_RETRY against the RSS then, without a new child."""
        self._postponed = None
        if self.slot.index is not index or self.rebuilding:
            return  # the index moved on meanwhile: what was measured is not served
        refused = []
        for o in options:
            params = LSHParams.from_dict(o["params"])
            if why := self.guard.refusal(move_bytes(index, params, o.get("table_delta"))):
                refused.append(f"{params.describe()}: {why}")
                continue
            log.info("LSH parameters: %s -> %s (cost)", index.params.describe(),
                     params.describe())
            await self._repick("cost", params, o.get("table_delta"))
            return
        self._postponed = (index, options)
        self.quiet_until = self.clock() + POSTPONED_RETRY
        self.metrics.lsh_retunes_postponed.labels("cost").inc()
        log.warning("LSH cost move postponed, again in %.0fs: %s", POSTPONED_RETRY,
                    "; ".join(refused))

    async def _repick(self, reason: str, params: LSHParams | None,
                      table_delta: int | None = None) -> bool:
        """New parameters (``None``: tune them) as a new live version (module docstring);
        False when another worker holds the lock, the live version moved on, or the move
        would not fit the memory budget (``table_delta``: recall.lsh.move.move_bytes's)."""
        self.rebuilding = True
        t0 = time.perf_counter()
        store, version = self.store, self.slot.version
        lock = store.keys.repick_lock
        size = len(self.slot.index)
        # whatever happens, not again before the workers (this one too) loaded a new
        # version, or the lock holder is done
        self.quiet_until = self.clock() + REPICK_QUIET
        try:
            if params is None:
                params = await self._tuned(self.slot.index)
            if why := self.guard.refusal(move_bytes(self.slot.index, params, table_delta)):
                self.metrics.lsh_retunes_postponed.labels(reason).inc()
                self.quiet_until = self.clock() + POSTPONED_RETRY
                self._size_held = self._size_held or reason == "size"
                log.warning("LSH parameters %s (%s) postponed, again in %.0fs: %s",
                            params.describe(), reason, POSTPONED_RETRY, why)
                return False
            if not await store.acquire(lock, REPICK_LOCK_SECONDS):
                log.info("LSH parameters: another worker is re-picking them")
                return False
            try:
                if await store.live_version() != version:
                    return False
                new = await copy_version(store, version, params, self.settings.dim,
                                         await self.positions())
                self._picked_for[new] = size
                await store.switch_live(new)
            finally:
                await store.release(lock)
            # not again until this worker serves the new version (_follow_slot): loading
            # a 500,000-item copy took longer than REPICK_QUIET, and the worker kept
            # deciding re-picks of the version it still served (each refused)
            self.quiet_until = self.clock() + REPICK_LOCK_SECONDS
            await store.delete_version(version)
            self.metrics.lsh_retunes.labels(reason).inc()
            log.info("LSH parameters %s (%s): version %d -> %d in %.1fs; workers rebuild "
                     "from it", params.describe(), reason, version, new,
                     time.perf_counter() - t0)
            return True
        finally:
            self.rebuilding = False

    async def _tuned(self, index: LSHIndex) -> LSHParams:
        """The tuner's parameters for a sample of the index, computed in a child process."""
        vectors = index.sample_vectors(self.settings.retune_items, np.random.default_rng())
        out = await in_child(tune_layout, vectors, self.settings.target_recall,
                             index.params.seed, len(index))
        log.info("LSH re-tune on %d items: %s", len(vectors), out["summary"])
        return LSHParams.from_dict(out["params"])


def publish_estimates(m: Metrics, controller: ProbeController) -> None:
    """The monitor's gauges: the estimates at the probes served now and at the next lower
    T (NaN: none yet). A function of the controller alone, so what a scraper reads of it
    (``devtools/e2e/settle.py``) is checked against the controller's own decisions."""
    est = controller.estimate()
    m.lsh_recall.set(est.mean if est is not None else math.nan)
    m.lsh_recall_low.set(est.low if est is not None else math.nan)
    m.lsh_recall_high.set(est.high if est is not None else math.nan)
    m.lsh_recall_samples.set(est.n if est is not None else 0)
    below = controller.estimate_below()
    m.lsh_probes_below.set(controller.below or 0)
    m.lsh_recall_below.set(below.mean if below is not None else math.nan)
    m.lsh_recall_below_low.set(below.low if below is not None else math.nan)
    m.lsh_recall_below_samples.set(below.n if below is not None else 0)
