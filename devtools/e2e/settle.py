"""Before a measured phase: recall requests until the worker's recall monitor holds.

A worker serves a new layout at T=5 probes per table and its monitor (``stream/watch.py``)
raises T a step at a time until the answers it samples reach ``RECALL_TARGET_RECALL``: at
1M items 20-40 s of traffic (README "How long until the target"). A phase measured from
the first request was therefore partly measured at fewer probes than the worker settles
on: cheaper answers of a recall below the target (at 1M x 64, 500 requests/s, the
answers sampled over a 30 s phase had recall 0.89; the gauge was 0.96, at T=9, only at
its end). So the benches first send requests at :data:`SETTLE_RATE` (no clicks) until the
monitor holds T by its own rules (:func:`holds`): not up, not down. The monitor steps
down too, when the answers it measures at the next lower T hold the target (on a
2,000-item catalogue, under the earlier rule, T went 4 -> 2), so "at target" alone was
not enough. The requests of this phase
carry their own run id, so the measured phase does not count their responses.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from devtools.e2e.traffic import request_process
from devtools.scrape import metric_value, metrics_url, scrape
from stream.watch import MIN_SAMPLES

#: requests per second while settling (at most the measured rate): the monitor samples
#: at most 20 answers a second (~6 at 1M, its CPU budget), and each record sent now is
#: one more the broker holds during the measured phase: on Tansu, whose produce and
#: fetch slow down as a topic fills, 100 a second (~5,000 records) took the e2e p50 of a
#: 100 requests/s phase at 1M from 11 to 19 ms
SETTLE_RATE = 25.0
#: seconds without a single sampled answer after which there is nothing to wait for (the
#: monitor is off, or every answer is exact)
NO_SAMPLES_AFTER = 20.0
#: seconds between two reads of the worker's metrics, and between progress lines
POLL = 1.0
PROGRESS_EVERY = 5.0


def monitor_state(text: str) -> dict[str, float]:
    """The recall monitor's figures in one exposition (the gauge is NaN until measured;
    absent figures read 0)."""
    return {key: metric_value(text, name) for key, name in (
        ("gauge", "recall_lsh_recall"), ("low", "recall_lsh_recall_low"),
        ("samples", "recall_lsh_recall_samples"),
        ("below", "recall_lsh_probes_below"), ("below_low", "recall_lsh_recall_below_low"),
        ("below_samples", "recall_lsh_recall_below_samples"),
        ("target", "recall_lsh_recall_target"), ("probes", "recall_lsh_probes"),
        ("sampled_total", "recall_lsh_recall_queries_total"))}


def holds(state: dict[str, float]) -> bool:
    """The monitor keeps T (``recall.monitor.ProbeController.decide``): its gauge at or
    above the target over at least ``MIN_SAMPLES`` answers (else it steps up), and no
    lower T, or the same answers at the next lower T over at least ``MIN_SAMPLES`` with
    an interval not wholly above the target (else it steps down)."""
    return (state["samples"] >= MIN_SAMPLES and state["target"] > 0
            and state["gauge"] >= state["target"]
            and (state["below"] == 0 or (state["below_samples"] >= MIN_SAMPLES
                                         and state["below_low"] <= state["target"])))


async def settle(settings: Any, args: Any, run: str, port: int | None, rate: float,
                 max_seconds: float) -> dict[str, Any]:
    """Requests at ``min(rate, SETTLE_RATE)`` until the worker on ``port`` :func:`holds`,
    for at most ``max_seconds``; the figures of the wait. ``settled``: True when it holds,
    False after ``max_seconds``, None when nothing was sampled (or no wait: ``max_seconds``
    0 or no metrics port)."""
    if max_seconds <= 0 or not port:
        return {"settle_seconds": 0.0, "settled": None}
    import multiprocessing as mp

    url = metrics_url(port)
    rate = min(rate, SETTLE_RATE)
    ctx = mp.get_context("spawn")
    count, out = ctx.Value("q", 0, lock=False), ctx.Queue()
    start_at = time.time() + 3.0  # the child needs a moment to import and connect
    proc = ctx.Process(target=request_process, name="bench-settle", daemon=True, args=(
        settings.kafka_bootstrap, settings.topic_requests, f"{run}s", rate, max_seconds,
        args.users, args.k, args.seed, start_at, count, out))
    proc.start()
    print(f"settling: {rate:g} requests/s until the worker's recall monitor holds "
          f"(at most {max_seconds:g}s)", flush=True)
    first = monitor_state(await asyncio.to_thread(scrape, url))
    settled: bool | None = False
    state = first
    printed = 0.0
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < max_seconds and proc.is_alive():
            await asyncio.sleep(POLL)
            was, state = state, monitor_state(await asyncio.to_thread(scrape, url))
            # twice in a row: a read between a batch's gauges and the decision on them
            # (the metrics are served from another thread) would not see the step
            if holds(state) and holds(was):
                settled = True
                break
            if elapsed >= NO_SAMPLES_AFTER and not state["sampled_total"] > first[
                    "sampled_total"]:
                settled = None
                print("settling: the worker sampled no answer: nothing to wait for",
                      flush=True)
                break
            if elapsed - printed >= PROGRESS_EVERY:
                printed = elapsed
                print(f"settling [{elapsed:5.1f}s] T={state['probes']:g}, gauge "
                      f"{state['gauge']:.3f} over {state['samples']:g} samples (target "
                      f"{state['target']:g})", flush=True)
        elapsed = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.join(10)
    verdict = {True: "holds", False: "did not hold in time", None: "no samples"}[settled]
    print(f"settled ({verdict}) after {elapsed:.1f}s, {count.value} requests: T="
          f"{state['probes']:g}, gauge {state['gauge']:.3f} over {state['samples']:g} "
          f"samples", flush=True)

    # (the probes and gauge the phase starts from are the phase's own figures:
    # lsh_probes_start, lsh_recall_gauge_start)
    return {"settle_seconds": round(elapsed, 1), "settled": settled,
            "settle_requests": count.value}
