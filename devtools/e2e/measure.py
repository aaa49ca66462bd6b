"""The e2e benchmark's measured phase: load processes, progress lines, the figures."""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

from devtools.e2e.phase import PhaseWatch
from devtools.e2e.probes import DRAIN, freshness_probes
from devtools.e2e.report import TIMEOUT, ms, pct
from devtools.e2e.responses import BenchResponses
from devtools.e2e.traffic import click_process, request_process, warm_clicks
from devtools.procinfo import RssWatch
from devtools.scrape import histogram_delta, metric_value, metrics_url, scrape

#: seconds between progress lines
PROGRESS_EVERY = 2.0


def scrape_all(ports: int | list[int] | None) -> str:
    """The expositions of one or several workers, concatenated: sums and histograms read
    from it add up over the workers (the parser sums a name over all its samples)."""
    if not ports:
        return ""
    return "\n".join(scrape(metrics_url(p)) for p in ([ports] if isinstance(ports, int)
                                                       else ports))


async def measure(settings: Any, args: argparse.Namespace, run: str,
                  port: int | list[int] | None, rss: RssWatch,
                  phase: PhaseWatch | None = None) -> dict[str, Any]:
    """The measured phase and its figures; ``phase``: CPU use (and a py-spy profile)
    over it, from its start to its last request's send."""
    import multiprocessing as mp

    import numpy as np

    ctx = mp.get_context("spawn")
    reader = BenchResponses(settings, run)
    await reader.start()
    before = scrape_all(port)
    start_at = time.time() + 3.0  # the children need a moment to import and connect
    req_count, click_count = ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False)
    req_out, click_out = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=request_process, name="bench-requests", daemon=True, args=(
        settings.kafka_bootstrap, settings.topic_requests, run, args.rate, args.seconds,
        args.users, args.k, args.seed, start_at, req_count, req_out))]
    if args.click_rate > 0:
        procs.append(ctx.Process(target=click_process, name="bench-clicks", daemon=True, args=(
            settings.kafka_bootstrap, settings.topic_clicks, run, args.click_rate,
            args.seconds, args.users, args.items, args.seed, start_at, click_count,
            click_out)))
    for p in procs:
        p.start()
    stop_at = start_at + args.seconds
    probes = None
    windows: list[dict[str, float]] = []
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        if phase is not None:
            phase.start(args.seconds)
        if args.freshness > 0:
            probes = asyncio.create_task(freshness_probes(
                settings, reader, args.freshness, args.items, run, args.seed, stop_at))
        seen = 0
        while any(p.is_alive() for p in procs) and time.time() < stop_at + 30:
            await asyncio.sleep(PROGRESS_EVERY)
            window = np.asarray(reader.latencies[seen:]) * 1000
            seen = len(reader.latencies)
            figures = "-"
            if len(window):
                p50, p99 = np.percentile(window, 50), np.percentile(window, 99)
                figures = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
                windows.append({"t": round(time.time() - start_at, 1),
                                "responses": len(window), "p50_ms": round(float(p50), 3),
                                "p99_ms": round(float(p99), 3)})
            print(f"[{time.time() - start_at:5.1f}s] requests {req_count.value}, "
                  f"responses {seen}, clicks {click_count.value}; last {PROGRESS_EVERY:.0f}s "
                  f"e2e {figures}; worker RSS {rss.sample() / 2**20:.0f} MB", flush=True)
        req = req_out.get(timeout=30)
        clicks = click_out.get(timeout=30) if args.click_rate > 0 else {"sent": 0}
        used = phase.stop() if phase is not None else {}
        for p in procs:
            p.join(10)
        # the outstanding responses
        deadline = time.time() + DRAIN
        while len(reader.ids) < req["sent"] and time.time() < deadline:
            await asyncio.sleep(0.05)
        fresh, missed = await probes if probes is not None else ([], 0)
        probes = None
        after = scrape_all(port)
        rss.sample()
    finally:
        if probes is not None:
            probes.cancel()
        for p in procs:
            if p.is_alive():
                p.terminate()
        await reader.stop()
    lat = np.asarray(reader.latencies)
    duration = max(1e-9, req["last"] - req["first"])
    worker_req = histogram_delta(before, after, "recall_request_duration_seconds")
    worker_e2e = histogram_delta(before, after, "recall_end_to_end_seconds")
    cand = histogram_delta(before, after, "recall_candidates")
    lag = histogram_delta(before, after, "recall_event_loop_lag_seconds")
    gc_pause = {g: histogram_delta(before, after, "recall_gc_pause_seconds", {"generation": g})
                for g in ("1", "2")}
    stages = {st: histogram_delta(before, after, "recall_request_stage_seconds",
                                  {"stage": st}) for st in ("kafka", "queued", "delivery")}
    to_worker, from_worker = np.asarray(reader.to_worker), np.asarray(reader.from_worker)
    clicks_applied = (metric_value(after, "recall_clicks_total")
                      - metric_value(before, "recall_clicks_total")) if after else None
    out = {
        "items": args.items, "users": args.users, "warm_clicks": warm_clicks(args),
        "k": args.k,
        "rate": args.rate, "click_rate": args.click_rate, "seconds": args.seconds,
        "requests_sent": req["sent"], "responses": len(reader.ids),
        "lost": req["sent"] - len(reader.ids), "send_errors": req["send_errors"],
        # the first lost ones, for looking them up (request_id "{run}.{seq}.{send us}")
        "lost_seqs": sorted(set(range(req["sent"])) - reader.ids)[:20], "run": run,
        "duplicates": reader.duplicates,
        "errors": sum(n for s, n in reader.statuses.items() if s != "ok"),
        "timeouts": int((lat > TIMEOUT).sum()),
        "sources": reader.sources,
        "offered_rate": round(req["sent"] / duration, 1),
        "throughput": round(len(reader.ids) / duration, 1),
        "e2e_p50_ms": ms(pct(lat, 50)), "e2e_p95_ms": ms(pct(lat, 95)),
        "e2e_p99_ms": ms(pct(lat, 99)),
        "e2e_max_ms": ms(float(lat.max()) if len(lat) else None),
        # e2e split at the response's Kafka timestamp (the worker's send): the request's
        # way in plus the worker's work, and the response's way out
        "e2e_to_worker_p50_ms": ms(pct(to_worker, 50)),
        "e2e_to_worker_p99_ms": ms(pct(to_worker, 99)),
        "e2e_from_worker_p50_ms": ms(pct(from_worker, 50)),
        "e2e_from_worker_p99_ms": ms(pct(from_worker, 99)),
        "clicks_sent": clicks["sent"],
        "click_rate_achieved": round(clicks["sent"] / max(1e-9, clicks["last"] - clicks["first"]),
                                     1) if clicks["sent"] else 0.0,
        "clicks_applied": clicks_applied,
        "worker_request_p50_ms": ms(worker_req["p50"]),
        "worker_request_p95_ms": ms(worker_req["p95"]),
        "worker_request_p99_ms": ms(worker_req["p99"]),
        "worker_e2e_p50_ms": ms(worker_e2e["p50"]),
        "worker_e2e_p95_ms": ms(worker_e2e["p95"]),
        "worker_e2e_p99_ms": ms(worker_e2e["p99"]),
        "worker_loop_lag_p50_ms": ms(lag["p50"]), "worker_loop_lag_p99_ms": ms(lag["p99"]),
        # recall_gc_pause_seconds: the cyclic GC's full collections (generation 2) and the
        # generation-1 ones over the phase
        "worker_gc_full_collections": gc_pause["2"]["count"],
        "worker_gc_full_mean_ms": ms(gc_pause["2"]["mean"]),
        "worker_gc_gen1_collections": gc_pause["1"]["count"],
        "worker_gc_gen1_p99_ms": ms(gc_pause["1"]["p99"]),
        # recall_request_stage_seconds: Kafka timestamp -> fetched, fetched -> handled,
        # response handed over -> acknowledged
        **{f"worker_{st}_{q}_ms": ms(h[q]) for st, h in stages.items() for q in ("p50", "p99")},
        "candidates_mean": None if cand["mean"] is None else round(cand["mean"], 1),
        "freshness_probes": args.freshness, "freshness_done": len(fresh) + missed,
        "freshness_missed": missed,
        "freshness_p50_ms": ms(pct(fresh, 50)), "freshness_p99_ms": ms(pct(fresh, 99)),
        "freshness_max_ms": ms(max(fresh) if fresh else None),
        **lsh_recall_figures(before, after),
        **load_cpu(used, req, clicks, duration),
    }
    worker = (out.get("cpu_share") or {}).get("worker")
    # what a deployment is sized by: the worker's own CPU per request it answered (with
    # the clicks of the phase), whatever the CPUs of the broker and load did
    out["worker_cpu_ms_per_request"] = (round(1000 * worker / out["throughput"], 3)
                                        if worker is not None and out["throughput"] > 0
                                        else None)
    # the responses read in each progress window: whether latency grew over the phase
    # (a broker slowing as its partitions fill, a queue building) or stayed flat
    out["e2e_windows"] = windows
    out["_latencies"] = lat
    out["_fresh"] = fresh
    return out


def lsh_recall_figures(before: str, after: str) -> dict[str, Any]:
    """The worker's own recall monitor (stream/watch.py) over the measured phase: found /
    compared of the answers it sampled against exact search, its windowed gauge and the
    probes it served at the start and at the end."""
    def value(text: str, name: str) -> float | None:
        v = metric_value(text, name) if text else math.nan
        return None if math.isnan(v) else v

    queries = (value(after, "recall_lsh_recall_queries_total") or 0.0) - (
        value(before, "recall_lsh_recall_queries_total") or 0.0)
    found = (value(after, "recall_lsh_recall_found_total") or 0.0) - (
        value(before, "recall_lsh_recall_found_total") or 0.0)
    gauge, gauge_start = value(after, "recall_lsh_recall"), value(before, "recall_lsh_recall")
    return {"lsh_recall_sampled": round(found / queries, 4) if queries > 0 else None,
            "lsh_recall_samples": int(queries),
            "lsh_recall_gauge_start": None if gauge_start is None else round(gauge_start, 4),
            "lsh_recall_gauge": None if gauge is None else round(gauge, 4),
            "lsh_probes_start": value(before, "recall_lsh_probes"),
            "lsh_probes": value(after, "recall_lsh_probes")}


def load_cpu(used: dict[str, Any], req: dict[str, Any], clicks: dict[str, Any],
             duration: float) -> dict[str, Any]:
    """The phase's CPU figures with the load generators' own (each reports its CPU
    seconds while sending) as fractions of a core."""
    if not used:
        return {}
    share = dict(used["cpu_share"])
    for name, r in (("load_requests", req), ("load_clicks", clicks)):
        if "cpu_seconds" in r:
            share[name] = round(r["cpu_seconds"] / max(1e-9, duration), 3)
    return {"cpu_share": share, "cpu_busy": used["cpu_busy"],
            **{k: used[k] for k in ("worker_threads", "worker_system", "worker_minor_faults_per_s")
               if k in used},
            **({"py_spy": used["py_spy"]} if "py_spy" in used else {})}
