"""``recall bench e2e``: end-to-end latency of the worker through Kafka, under load.

What it does, in order:

1. The world: a local broker (Tansu, or with ``--broker rdkafka-mock`` librdkafka's mock
   cluster) + redis-server + ``recall worker`` (or, with ``--external``,
   the broker, Redis and worker of ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` /
   ``RECALL_METRICS_PORT``).
2. The catalogue: ``--items`` clustered unit vectors (item ``i{n}`` is in cluster
   ``n % C``, C = items / 50), bulk-written into Redis as a new index version and
   switched live (1M items never go through Kafka as JSON). Locally this happens before
   the worker starts, so the worker loads it at start-up; with ``--external`` the worker
   rebuilds when it sees the new live version.
3. Warm users: ``--users`` users get ``--warm-clicks`` clicks each (3 by default; 50
   fills the default window, as a long-running worker holds them; the clicks beyond 3
   repeat the first three items) through ``clicks`` on items of their interest cluster,
   so their recalls come from the LSH index.
4. The measured phase, ``--seconds`` long: a separate process produces recall requests at
   ``--rate`` on a fixed schedule (open loop: a slow worker does not slow the offered
   load), another produces clicks at ``--click-rate``; each request id carries its send
   time, so the reader (this process) measures request produced -> response consumed.
   Meanwhile ``--freshness`` probes, one after the other: a click for a brand-new user is
   produced, then recall requests for that user are sent back to back until one reflects
   the click (``source`` no longer ``popular``); the time from producing the click to
   reading that response is the click's freshness.
5. Figures: client-side p50/p95/p99/max, throughput, errors, late and lost responses; the
   worker's own histograms (``/metrics`` scraped before and after the phase, quantiles
   from the bucket deltas); freshness p50/p99; the worker's peak RSS. Progress lines while
   running; exactly one JSON line at the end; ``--plot`` writes a histogram + CDF PNG.

``--pin-worker CPU`` runs the worker alone on that CPU (its affinity is set before it
starts, so all its threads inherit it) and everything else -- this process, the load
generators, the broker and Redis -- on the other CPUs: the figures are then those of one
worker core, the unit a deployment is sized in.

All processes share one host clock (``time.time()``), which is what makes send times in
request ids usable by another process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devtools.e2e.catalogue import load_catalogue
from devtools.e2e.measure import measure
from devtools.e2e.phase import PhaseWatch
from devtools.e2e.probes import (
    RTT_TOPIC,
    broker_floor,
    broker_round_trip,
    floor_topic,
    trace_lost,
)
from devtools.e2e.report import ms, plot, summary
from devtools.e2e.settle import settle
from devtools.e2e.traffic import warm_clicks, warm_users
from devtools.errors import DevtoolsError
from devtools.procinfo import RssWatch, loadavg
from devtools.scrape import metric_value, metrics_url, scrape


async def wait_ready(settings: Any, timeout: float, proc: Any = None) -> float:
    """Seconds until the worker answers; DevtoolsError at once if ``proc`` (the local
    worker's process) exits meanwhile, rather than after ``timeout``."""
    from devtools.client import RecallClient

    async with RecallClient(settings) as client:
        waiting = asyncio.ensure_future(client.wait_ready(timeout))
        while proc is not None and not waiting.done():
            if proc.poll() is not None:
                waiting.cancel()
                raise DevtoolsError(f"the worker exited with status {proc.returncode} "
                                    "before answering (see its log)")
            await asyncio.wait({waiting}, timeout=1.0)
        return await waiting


async def _bench(settings: Any, args: argparse.Namespace, run: str, port: int | None,
                 rss: RssWatch, external: bool, phase: PhaseWatch | None = None,
                 proc: Any = None) -> dict[str, Any]:
    if external:
        # the running worker rebuilds when it sees the new live version
        await load_catalogue(settings, args, keep_old=True)
        if port:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if metric_value(scrape(metrics_url(port)), "recall_index_items") >= args.items:
                    break
                await asyncio.sleep(0.5)
    took = await wait_ready(settings, 600, proc)
    print(f"worker answers ({took:.1f}s); worker RSS {rss.sample() / 2**20:.0f} MB", flush=True)
    rtt = None
    if not external:  # measured with the worker idle
        rtt = await broker_round_trip(settings)
        print(f"broker round trip (plain aiokafka produce -> fetch; a recall makes two): "
              f"p50 {rtt['p50'] * 1e3:.2f} ms, p99 {rtt['p99'] * 1e3:.2f} ms", flush=True)
    t0 = time.monotonic()
    n = await warm_users(settings, args, run, port)
    print(f"{args.users} warm users: {n} clicks applied in {time.monotonic() - t0:.1f}s",
          flush=True)
    settled = await settle(settings, args, run, port, args.rate, getattr(args, "settle", 0))
    print(f"measuring {args.seconds:g}s: {args.rate:g} requests/s, {args.click_rate:g} "
          f"clicks/s, {args.freshness} freshness probes", flush=True)
    out = await measure(settings, args, run, port, rss, phase)
    out.update(settled)
    if out["lost"] and not external:
        out["lost_trace"] = await trace_lost(settings, run, out["lost_seqs"])
        print(f"lost requests {out['lost_seqs']}: {out['lost_trace']}", flush=True)
    out["broker_rtt_p50_ms"] = ms(rtt["p50"]) if rtt else None
    out["broker_rtt_p99_ms"] = ms(rtt["p99"]) if rtt else None
    if getattr(args, "broker_floor", False) and not external:
        pid = phase.pids.get("broker") if phase is not None else None
        floor = await broker_floor(settings, args.rate, args.seconds, run, pid)
        cpu = floor["broker_cpu"]
        print(f"broker alone under the request load ({floor['sent']} single records at "
              f"{args.rate:g}/s, read back by one consumer; the worker idle): produce -> "
              f"fetch p50 {ms(floor['p50'])} / p99 {ms(floor['p99'])} ms, p50 in the first "
              f"2 s {ms(floor['first_p50'])} ms, in the last 2 s {ms(floor['last_p50'])} ms"
              + (f"; broker {cpu:.2f} of a core" if cpu is not None else ""), flush=True)
        out.update({"broker_floor_p50_ms": ms(floor["p50"]),
                    "broker_floor_p99_ms": ms(floor["p99"]),
                    "broker_floor_first_p50_ms": ms(floor["first_p50"]),
                    "broker_floor_last_p50_ms": ms(floor["last_p50"]),
                    "broker_floor_cpu": None if cpu is None else round(cpu, 3),
                    "broker_floor_lost": floor["sent"] - floor["read"]})
    return out


def pinning(cpu: int | None, workers: int = 1) -> tuple[list[set[int]], set[int]] | None:
    """(one CPU set per worker, the CPUs of everything else) for ``--pin-worker CPU``:
    worker j on CPU + j; None when not pinning. DevtoolsError when the CPUs are not ours
    or nothing would be left for the broker and the load."""
    if cpu is None:
        return None
    mine = os.sched_getaffinity(0)
    wanted = [cpu + j for j in range(workers)]
    missing = [c for c in wanted if c not in mine]
    if missing:
        raise DevtoolsError(f"--pin-worker: CPU {missing[0]} is not available to this process "
                            f"(available: {sorted(mine)})")
    others = mine - set(wanted)
    if not others:
        raise DevtoolsError(f"--pin-worker: {workers} worker(s) on CPUs {wanted} would leave no "
                            f"CPU for the broker, Redis and the load (available: {sorted(mine)})")
    return [{c} for c in wanted], others


def memory_figures(rss: RssWatch) -> dict[str, float | None]:
    """The worker's memory, read while it lives: peak (VmHWM), and now split into anonymous
    memory (heap, arrays) and mapped files (shared libraries' code: clean pages)."""
    st = rss.status()

    def mb(key: str) -> float | None:
        return round(st[key] / 2**20, 1) if key in st else None

    peak = st.get("VmHWM", rss.max_sampled)
    return {"worker_rss_peak_mb": round(peak / 2**20, 1) if peak else None,
            "worker_rss_anon_mb": mb("RssAnon"), "worker_rss_file_mb": mb("RssFile")}


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Iterator[None]:
    """This process (and the processes it starts meanwhile) on ``cpus``, then back."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _local(settings: Any, args: argparse.Namespace, run: str, worker_cpus: set[int] | None
           ) -> tuple[dict[str, Any], dict[str, float | None], list[int]]:
    """The run on the local stack: (figures, worker memory, the worker's CPUs)."""
    from devtools.localstack import free_port, worker_stack

    # the catalogue goes into Redis before the worker starts, so it loads it
    workdir = Path(tempfile.mkdtemp(prefix="recall-bench-"))

    def load(s: Any) -> None:
        print(f"local stack: Kafka ({args.broker}) {s.kafka_bootstrap}, Redis "
              f"{s.redis_url}", flush=True)
        asyncio.run(load_catalogue(s, args, keep_old=False))

    # made with the worker's: the mock broker cannot create topics later
    probe_topics = {RTT_TOPIC: 1}
    if args.broker_floor:
        probe_topics[floor_topic(run)] = settings.topic_partitions
    with worker_stack(settings, workdir=workdir, before_worker=load,
                      broker=args.broker, extra_topics=probe_topics,
                      worker_timeout=120, kafka_session_timeout=3.0,
                      worker_cpus=worker_cpus, metrics_port=free_port()
                      ) as (settings, stack, worker):
        print(f"worker pid {worker.proc.pid}, log {worker.log_path}, metrics "
              f":{settings.metrics_port}", flush=True)
        rss = RssWatch(worker.proc.pid)
        cpus = sorted(os.sched_getaffinity(worker.proc.pid))
        phase = PhaseWatch({"worker": worker.proc.pid, "broker": stack.kafka.proc.pid,
                            "redis": stack.redis.proc.pid, "bench": os.getpid()},
                           py_spy=getattr(args, "py_spy", ""), profile_pid=worker.proc.pid)
        out = asyncio.run(_bench(settings, args, run, settings.metrics_port, rss,
                                 external=False, phase=phase, proc=worker.proc))
        memory = memory_figures(rss)  # the peak is the kernel's while the worker lives
        if worker.proc.poll() is not None:
            print(f"warning: the worker exited with {worker.proc.returncode}", flush=True)
    out["worker_rss_max_sampled_mb"] = round(rss.max_sampled / 2**20, 1)
    return out, memory, cpus


def run_bench(args: argparse.Namespace) -> int:
    from recall.config import Settings

    settings = Settings.from_env()
    if (args.items < 100 or args.users < 1 or args.rate <= 0 or args.click_rate < 0
            or args.seconds <= 0 or not 1 <= args.k <= 1000 or args.freshness < 0
            or warm_clicks(args) < 1):
        raise DevtoolsError("--items must be >= 100, --users >= 1, --rate > 0, "
                            "--click-rate >= 0, --seconds > 0, --k in 1..1000, "
                            "--freshness >= 0, --warm-clicks >= 1")
    args.users = min(args.users, args.items)
    pin_cpu = getattr(args, "pin_worker", None)
    if pin_cpu is not None and args.external:
        raise DevtoolsError("--pin-worker needs the local stack (not --external)")
    if args.broker != "tansu" and args.external:
        raise DevtoolsError("--broker picks the local stack's broker (not --external)")
    pins = pinning(pin_cpu)
    _sigterm_as_interrupt()
    load_start = loadavg()
    run = f"b{os.getpid()}x{int(time.time()) % 100000}"
    t_begin = time.monotonic()
    if args.external:
        print(f"external stack: Kafka {settings.kafka_bootstrap}, Redis "
              f"{settings.redis_url.split('@')[-1]}, metrics :{settings.metrics_port}",
              flush=True)
        port = settings.metrics_port if scrape(metrics_url(settings.metrics_port)) else None
        if port is None:
            print(f"warning: no /metrics on 127.0.0.1:{settings.metrics_port}; "
                  "no worker-side figures", flush=True)
        rss = RssWatch(None)
        out = asyncio.run(_bench(settings, args, run, port, rss, external=True))
        memory: dict[str, float | None] = {"worker_rss_peak_mb": None}
        worker_cpus = None
        out["worker_rss_max_sampled_mb"] = None
    else:
        # this process, and what it starts from now on (broker, Redis, load), off the
        # worker's CPU; ours given back at the end
        with affinity(pins[1] if pins else None):
            out, memory, worker_cpus = _local(settings, args, run,
                                              pins[0][0] if pins else None)
    lat, fresh = out.pop("_latencies"), out.pop("_fresh")
    out.update(memory)
    out["external"] = bool(args.external)
    out["broker"] = None if args.external else args.broker
    out["pin_worker"] = pin_cpu
    out["worker_cpus"] = worker_cpus
    out["cpus"] = os.cpu_count()
    out["loadavg_start"], out["loadavg_end"] = load_start, loadavg()
    out["wall_seconds"] = round(time.monotonic() - t_begin, 1)
    summary(out)
    if args.plot:
        plot(args.plot, lat, fresh,
             f"recall bench e2e: {args.items} items, {args.rate:g} req/s, "
             f"{args.click_rate:g} clicks/s"
             + ("" if args.external else f", broker {args.broker}"), out["e2e_windows"])
        print(f"plot: {args.plot}", flush=True)
    print(json.dumps(out), flush=True)
    return 0


def _sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so the local stack is stopped on the way out."""
    import signal
    import threading

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
