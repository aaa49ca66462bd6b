"""A worker's move to a new hash layout, alone: its peak memory, its time, and what the
searches served meanwhile cost and found.

``python -m devtools.bench_move --items 1000000 --how slices`` (or ``--how whole``):
``recall bench index``'s clustered catalogue (same seed) staged and built with the layout
suggested for ``--from-items`` (default: three quarters of the catalogue, as a growth
re-pick finds it) at ``--probes``, the worker's malloc settings applied, the load's
garbage handed back, then the process's peak RSS reset (``/proc/self/clear_refs``) and
the move to the layout suggested for the whole catalogue run on an event loop, as the
worker runs it: ``slices`` through :func:`recall.lsh.move.move_off_loop` (the worker
since this bench), ``whole`` through :meth:`LSHIndex.relayout` in a thread (before).
Meanwhile the loop serves one-query searches at ``--rate`` per second (items' vectors
with a little noise, k = 10); their latency and their recall@10 against exact search are
printed for before, during and after the move, with the peak RSS over the resident
memory before it (and what the worker's memory guard estimates for that move), and one
JSON line. One move per process: the peak is this move's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np

from devtools.procinfo import reset_peak_rss, status_mb

#: queries in the fixed set whose exact top 10 is computed once (recall@10)
QUERIES = 512


class Searches:
    """One-query searches at a fixed rate on the event loop, each phase's latency and
    recall@10 kept apart."""

    def __init__(self, queries: np.ndarray, truth: list[set[str]], rate: float) -> None:
        self.queries, self.truth, self.rate = queries, truth, rate
        self.phase = "before"
        self.ms: dict[str, list[float]] = {}
        self.hits: dict[str, list[float]] = {}
        self.index: Any = None

    async def run(self, stop: asyncio.Event) -> None:
        i, t_next = 0, time.perf_counter()
        while not stop.is_set():
            j = i % len(self.queries)
            t0 = time.perf_counter()
            got = self.index.search(self.queries[j], 10)[0].ids
            self.ms.setdefault(self.phase, []).append(1e3 * (time.perf_counter() - t0))
            self.hits.setdefault(self.phase, []).append(len(self.truth[j] & set(got)) / 10)
            i += 1
            t_next += 1 / self.rate
            await asyncio.sleep(max(0.0, t_next - time.perf_counter()))

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for phase, ms in self.ms.items():
            a = np.array(ms)
            out[phase] = {"searches": len(a), "p50_ms": round(float(np.percentile(a, 50)), 3),
                          "p99_ms": round(float(np.percentile(a, 99)), 3),
                          "recall_at_10": round(float(np.mean(self.hits[phase])), 4)}
        return out


async def run_move(served: list[Any], params: Any, how: str, slice_entries: int,
                   searches: Searches, seconds_around: float
                   ) -> tuple[Any, float, dict[str, float]]:
    """The move of the index in ``served`` (taken out: nothing else holds the old
    layout once the move is done), with the searches before (``seconds_around``),
    during and after it."""
    from recall.lsh.move import move_off_loop
    from stream.items import release_free_heap

    index = served.pop()

    stop = asyncio.Event()
    searches.index = index
    task = asyncio.ensure_future(searches.run(stop))
    await asyncio.sleep(seconds_around)
    rss_before = status_mb("VmRSS")
    reset = reset_peak_rss()
    searches.phase = "during"
    t0 = time.perf_counter()
    if how == "slices":
        new = await move_off_loop(index, params, slice_entries)
    else:
        new = await asyncio.to_thread(index.relayout, params)
    del index  # the old layout goes, as the worker drops it (its caller holds none)
    wall = time.perf_counter() - t0
    searches.index, searches.phase = new, "after"
    await asyncio.to_thread(release_free_heap)
    peak = status_mb("VmHWM")
    await asyncio.sleep(seconds_around)
    stop.set()
    await task
    return new, wall, {"rss_before_mb": round(rss_before, 1), "peak_mb": round(peak, 1),
                       "peak_over_before_mb": round(peak - rss_before, 1),
                       "rss_after_mb": round(status_mb("VmRSS"), 1), "peak_reset": reset}


def main(argv: list[str] | None = None) -> int:
    from devtools.procinfo import loadavg
    from offline.synthetic import clustered_catalogue
    from recall.lsh.move import MOVE_ENTRIES, move_bytes
    from recall.tuner import bulk_index, suggested_params
    from stream.worker import _release_load_memory, _return_big_frees, _warm_up

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--from-items", type=int, default=None,
                   help="the served layout is the one suggested for this many items "
                        "(default: 3/4 of --items)")
    p.add_argument("--probes", type=int, default=14, help="T of both layouts")
    p.add_argument("--how", choices=("slices", "whole"), default="slices")
    p.add_argument("--slice-entries", type=int, default=None,
                   help="table entries a slice moves (default: recall.lsh.move's)")
    p.add_argument("--rate", type=float, default=200.0, help="searches a second")
    p.add_argument("--around", type=float, default=3.0,
                   help="seconds of searches before and after the move")
    p.add_argument("--seed", type=int, default=0, help="the catalogue's (bench index's)")
    args = p.parse_args(argv)
    _return_big_frees()
    _warm_up()
    load_start = loadavg()
    x, _ = clustered_catalogue(args.items, args.dim, seed=args.seed)
    served = replace(suggested_params(args.from_items or args.items * 3 // 4, args.dim),
                     T=args.probes)
    target = replace(suggested_params(args.items, args.dim), T=args.probes, seed=7)
    index = bulk_index(served, x)
    rng = np.random.default_rng(1)
    rows = rng.choice(len(x), QUERIES, replace=False)
    queries = x[rows] + 0.3 * rng.normal(size=(QUERIES, args.dim)).astype(np.float32) / (
        args.dim ** 0.5)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    del x
    truth = [set(r.ids) for r in index.search(queries, 10, exact=True)]
    _release_load_memory()
    searches = Searches(queries, truth, args.rate)
    guess = (move_bytes(index, target, None, args.slice_entries or MOVE_ENTRIES)
             if args.how == "slices" else index.relayout_bytes(target)) / 2**20
    holder = [index]
    del index
    slice_entries = args.slice_entries or MOVE_ENTRIES
    new, wall, mem = asyncio.run(run_move(holder, target, args.how, slice_entries, searches,
                                          args.around))
    phases = searches.summary()
    print(f"move {served.describe()} -> {target.describe()} at {len(new)} items ({args.how}): "
          f"{wall:.1f} s; RSS {mem['rss_before_mb']} MB before, peak {mem['peak_mb']} MB "
          f"(+{mem['peak_over_before_mb']} MB; the memory guard's estimate +{guess:.1f} MB), "
          f"{mem['rss_after_mb']} MB after", flush=True)
    for phase, s in phases.items():
        print(f"  searches {phase:6s}: {s['searches']:5d}, p50 / p99 {s['p50_ms']} / "
              f"{s['p99_ms']} ms, recall@10 {s['recall_at_10']}")
    print(json.dumps({"bench": "move", "how": args.how, "slice_entries": slice_entries,
                      "items": len(new), "dim": args.dim,
                      "from": served.to_dict(), "to": target.to_dict(),
                      "wall_s": round(wall, 2), **mem, "guard_estimate_mb": round(guess, 1),
                      "searches": phases,
                      "loadavg_start": load_start, "loadavg_end": loadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
