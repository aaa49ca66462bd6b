"""``recall bench capacity``: the largest request rate one worker core sustains, and two.

Users size deployments by requests per second per worker core, so this measures it: on
the local stack (catalogue loaded once), with ``--pin-worker CPU`` the worker alone on
that CPU and the broker, Redis and the load on the others, it raises the request rate
step by step (clicks at ``--click-ratio`` times the request rate, 10 by default) with the
e2e benchmark's measured phase (:func:`devtools.e2e.measure.measure`: open-loop load
from separate processes) and stops at the first step that is not sustainable:

- the worker's own request p99 (``recall_request_duration_seconds``) above ``--p99-ms``;
- or lag grows: a response lost or late beyond ``--lag-ms`` at p99 end to end, fewer
  responses than requests per second, or clicks applied falling behind clicks sent
  (the worker's queue grows instead of draining);
- or an error response.

Between the last good and the first bad rate it bisects ``--refine`` more times. Then it
starts a second worker (pinned to the next CPU when one is left for the rest, else not
pinned: said in the output) and does the same: scale-out efficiency is the two-worker
rate over twice the one-worker rate. Prints a table per step, a summary, exactly one JSON
line, and with ``--plot`` the p99 latencies and the CPU used against the offered rate.

Each step also measures the CPU of every process (:class:`devtools.e2e.phase.PhaseWatch`):
the workers' own, and how busy the other CPUs (broker, Redis, load) were. On a machine
with too few cores the other CPUs saturate first, and the largest sustainable rate is
theirs, not the worker's: so the summary says which side was busy, and gives the worker's
CPU per request (a line fitted through the steps: CPU = fixed + per request x rate) and,
from it, an *estimate* of the rate one fully busy worker core would carry, labelled as
such: a linear extrapolation of the worker's own CPU, not a measured latency limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from devtools.e2e.traffic import add_warm_clicks_argument
from devtools.errors import DevtoolsError
from devtools.localstack import add_broker_argument
from devtools.procinfo import RssWatch, loadavg


def add_parser(sub: Any, bench_sub: Any) -> None:
    p = bench_sub.add_parser(
        "capacity", help="largest sustainable request rate (clicks at 10x) per worker core, "
                         "one and two workers",
        description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000, help="catalogue size (default 1M)")
    p.add_argument("--users", type=int, default=20_000)
    add_warm_clicks_argument(p)
    add_broker_argument(p)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pin-worker", type=int, default=None, metavar="CPU",
                   help="the (first) worker alone on this CPU, the rest on the others")
    p.add_argument("--workers", default="1,2",
                   help="worker counts to measure, in order (default 1,2)")
    p.add_argument("--start", type=float, default=100.0, help="first request rate (default 100)")
    p.add_argument("--step", type=float, default=100.0, help="rate increment (default 100)")
    p.add_argument("--max-rate", type=float, default=3000.0, help="stop here (default 3000)")
    p.add_argument("--refine", type=int, default=1,
                   help="bisection steps between the last good and first bad rate (default 1)")
    p.add_argument("--click-ratio", type=float, default=10.0,
                   help="clicks per request (default 10)")
    p.add_argument("--step-seconds", type=float, default=15.0,
                   help="measured seconds per rate (default 15)")
    p.add_argument("--p99-ms", type=float, default=25.0,
                   help="in-worker request p99 limit (default 25 ms)")
    p.add_argument("--lag-ms", type=float, default=250.0,
                   help="end-to-end p99 above which the worker is taken as lagging "
                        "(default 250 ms)")
    p.add_argument("--settle", type=float, default=180.0, metavar="SECONDS",
                   help="before the ramp, requests until the worker's recall monitor holds "
                        "its target, for at most this long (0: ramp at once)")
    p.add_argument("--plot", default="", metavar="PATH", help="write p99 vs rate PNG here")
    p.set_defaults(func=run_capacity)


def verdict(fig: dict[str, Any], p99_ms: float, lag_ms: float) -> str:
    """"" when the step was sustainable, else why not."""
    if fig["lost"] or fig["timeouts"]:
        return f"lag: {fig['lost']} lost, {fig['timeouts']} over 1 s"
    if fig["errors"]:
        return f"{fig['errors']} error responses"
    wp99 = fig["worker_request_p99_ms"]
    if wp99 is None or wp99 > p99_ms:
        return f"in-worker p99 {wp99} ms > {p99_ms:g}"
    if fig["e2e_p99_ms"] is None or fig["e2e_p99_ms"] > lag_ms:
        return f"lag: e2e p99 {fig['e2e_p99_ms']} ms > {lag_ms:g}"
    return fell_behind(fig)


def fell_behind(fig: dict[str, Any]) -> str:
    """"" when the workers answered and applied (nearly: 98%) all that was sent, else
    what they fell behind on."""
    offered = fig.get("offered_rate", fig["throughput"])
    if fig["throughput"] < 0.98 * offered:
        return f"lag: {fig['throughput']}/s answered of {offered}/s"
    applied, sent = fig.get("clicks_applied"), fig.get("clicks_sent")
    if sent and (applied is None or applied < 0.98 * sent):
        return f"lag: clicks applied {applied} of {sent}"
    return ""


def rates_to_try(start: float, step: float, top: float) -> list[float]:
    out, r = [], start
    while r <= top + 1e-9:
        out.append(round(r, 1))
        r += step
    return out


def step_cpu(fig: dict[str, Any], shared: set[int] | None) -> dict[str, Any]:
    """A step's CPU: the workers' together (cores), per request answered (ms), and the
    busy fraction of the CPUs the broker, Redis and load share (None when not pinned)."""
    share = fig.get("cpu_share") or {}
    mine = [v for k, v in share.items() if k.startswith("worker")]
    if not mine or any(v is None for v in mine):
        return {"worker_cores": None, "worker_cpu_ms_per_request": None, "shared_busy": None,
                "cpu_share": share or None}
    cores = float(sum(mine))
    busy = fig.get("cpu_busy") or []
    shared_busy = (round(max(busy[c] for c in shared), 3)
                   if shared and all(c < len(busy) for c in shared) else None)
    done = fig.get("throughput") or 0.0
    return {"worker_cores": round(cores, 3),
            "worker_cpu_ms_per_request": round(1000 * cores / done, 3) if done > 0 else None,
            "shared_busy": shared_busy, "cpu_share": share}


def cpu_note(row: dict[str, Any]) -> str:
    if row.get("worker_cores") is None:
        return ""
    shared = "" if row["shared_busy"] is None else f", other CPUs {row['shared_busy']:.0%} busy"
    return (f"; worker {row['worker_cores']:.2f} core ({row['worker_cpu_ms_per_request']} "
            f"ms/request){shared}")


def worker_cpu_fit(steps: list[dict[str, Any]], workers: int) -> dict[str, Any] | None:
    """The workers' CPU against the requests they answered, per worker, over the steps of
    ``workers`` workers: the least-squares line cores = fixed + per_request x rate (the
    fixed part: polling, timers, the recall monitor's budget), and an ESTIMATE of the
    rate one busy core would answer: the highest step kept up with, scaled in proportion
    to its CPU (all of it counted as per request, so nothing is extrapolated away; latency
    limits not measured). The line's own crossing of one core is not used: much of a
    worker's CPU is per fetch, not per request (a fetch's records share it, and a busier
    worker gets more records per fetch), so over a ramp the worker's CPU hardly moves
    (0.40-0.44 of a core from 100 to 400 requests/s at 1M items), the line's slope is
    small, and it extrapolated to ~9,000 requests/s where the 500 requests/s run
    measured 1.1 ms of the worker's CPU per request. None without CPU figures. With one
    distinct rate, fixed is taken as 0."""
    import numpy as np

    mine = [s for s in steps if s["workers"] == workers and s.get("worker_cores") is not None
            and s["throughput"] > 0]
    # a step whose clicks or requests the workers did not keep up with did less work than
    # its rate says: left out, unless no step kept up (then said: "kept_up": False)
    kept = [s for s in mine if kept_up(s)]
    pts = [(s["throughput"] / workers, s["worker_cores"] / workers) for s in kept or mine]
    if not pts:
        return None
    x, y = np.array(pts).T
    if len(set(x.round(1))) >= 2:
        per_request, fixed = np.polyfit(x, y, 1)
    else:
        per_request, fixed = float((y / x).mean()), 0.0
    # a flat or falling line (the worker's CPU hardly moves over a ramp: 0.38-0.42 of a
    # core from 100 to 275 requests/s at 1M) has no cost per request to give, but the
    # estimate below does not rest on the line and is still given
    line = per_request > 0
    top_rate, top_cores = max(pts)
    return {"ms_per_request": round(1000 * float(per_request), 3) if line else None,
            "fixed_cores": round(float(fixed), 3) if line else None,
            "rate_per_core_estimate": round(float(top_rate / top_cores), 1),
            "steps": len(pts), "kept_up": bool(kept)}


def kept_up(step: dict[str, Any]) -> bool:
    """The workers answered and applied (nearly) all that was sent during the step."""
    return not fell_behind(step)


def limiting_side(step: dict[str, Any] | None) -> str | None:
    """Which side was busier at a step: "shared CPUs" when the broker/Redis/load CPUs
    were >= 95% busy while the workers had headroom, "worker core" when the workers were
    >= 95% busy, else None (neither saturated: latency, not CPU, set the limit)."""
    if step is None or step.get("worker_cores") is None:
        return None
    per_worker = step["worker_cores"] / step["workers"]
    if per_worker >= 0.95:
        return "worker core"
    if step.get("shared_busy") is not None and step["shared_busy"] >= 0.95:
        return "shared CPUs"
    return None


async def ramp(settings: Any, args: argparse.Namespace, ports: list[int], rss: RssWatch,
               workers: int, watch: Callable[[], Any] | None = None,
               shared: set[int] | None = None) -> tuple[float, str, list[dict[str, Any]]]:
    """Steps up the rate until a step fails, then bisects; (best sustained rate, what
    limited it, steps). ``watch()``: a fresh PhaseWatch of the workers (``worker...``)
    and the rest, per step; ``shared``: the CPUs the broker, Redis and load run on."""
    from devtools.e2e.measure import measure

    steps: list[dict[str, Any]] = []

    async def one(rate: float) -> bool:
        step_args = argparse.Namespace(
            items=args.items, users=args.users, k=args.k, seed=args.seed, rate=rate,
            click_rate=rate * args.click_ratio, seconds=args.step_seconds, freshness=0)
        run = f"c{os.getpid()}w{workers}r{int(rate)}x{int(time.time()) % 100000}"
        fig = await measure(settings, step_args, run, ports, rss,
                            watch() if watch is not None else None)
        fig.pop("_latencies")
        fig.pop("_fresh")
        why = verdict(fig, args.p99_ms, args.lag_ms)
        row = {"workers": workers, "rate": rate, "click_rate": rate * args.click_ratio,
               "ok": not why, "why": why, "loadavg": loadavg(),
               **{key: fig[key] for key in (
                   "offered_rate", "throughput", "lost", "errors", "timeouts",
                   "worker_request_p50_ms", "worker_request_p99_ms", "e2e_p50_ms",
                   "e2e_p99_ms", "clicks_sent", "clicks_applied", "candidates_mean")},
               **step_cpu(fig, shared)}
        steps.append(row)
        print(f"  {workers} worker(s) {rate:7.1f} req/s + {row['click_rate']:7.0f} clicks/s: "
              f"in-worker p50/p99 {row['worker_request_p50_ms']}/"
              f"{row['worker_request_p99_ms']} ms, e2e p50/p99 {row['e2e_p50_ms']}/"
              f"{row['e2e_p99_ms']} ms, clicks applied {row['clicks_applied']} of "
              f"{row['clicks_sent']}{cpu_note(row)} -> {why or 'ok'}", flush=True)
        return not why

    good, bad = 0.0, None
    for rate in rates_to_try(args.start, args.step, args.max_rate):
        if await one(rate):
            good = rate
        else:
            bad = rate
            break
    limit = steps[-1]["why"] if bad is not None else f"--max-rate {args.max_rate:g} reached"
    for _ in range(args.refine if bad is not None else 0):
        mid = round((good + bad) / 2, 1)
        if mid - good < 1:
            break
        if await one(mid):
            good = mid
        else:
            bad = mid
            limit = steps[-1]["why"]
    return good, limit, steps


async def _measure_all(settings: Any, args: argparse.Namespace, counts: list[int],
                       pins: Any, workdir: Path, first: Any, stack: Any) -> dict[str, Any]:
    from devtools.e2e.phase import PhaseWatch
    from devtools.e2e.run import wait_ready
    from devtools.e2e.settle import settle
    from devtools.e2e.traffic import warm_users
    from devtools.localstack import free_port, start_worker

    workers = [first]
    took = await wait_ready(settings, 600)
    print(f"worker answers ({took:.1f}s)", flush=True)
    await warm_users(settings, args, f"cw{os.getpid()}", settings.metrics_port)
    rss = RssWatch(first.proc.pid)
    # the first worker's probes settled before the ramp (a worker added later settles
    # during it, as one joining a deployment would)
    settled = await settle(settings, args, f"cs{os.getpid()}", settings.metrics_port,
                           args.start, args.settle)
    out: dict[str, Any] = {"best": {}, "limit": {}, "pinned": {}, "steps": [],
                           "settle": settled}
    for n in counts:
        while len(workers) < n:
            j = len(workers)
            # pinned alone when a CPU is left for the rest, else on all of ours
            cpus = (None if not pins else pins[0][j] if j < len(pins[0])
                    else set().union(*pins[0], pins[1]))
            port = free_port()
            env = replace(settings, metrics_port=port).environ()
            svc = start_worker(env, workdir / f"worker-{j}.log", port, 300, cpus=cpus)
            workers.append(svc)
            await _wait_joined(settings, port)
        pinned = bool(pins) and all(
            len(os.sched_getaffinity(w.proc.pid)) == 1 for w in workers) and len(
            pins[0]) >= n
        print(f"{n} worker(s){' pinned' if pinned else ' NOT pinned'}: ramping from "
              f"{args.start:g} req/s by {args.step:g}", flush=True)
        def watch(ws: list[Any] = workers) -> PhaseWatch:
            return PhaseWatch({**{("worker" if j == 0 else f"worker_{j + 1}"): w.proc.pid
                                  for j, w in enumerate(ws)},
                               "broker": stack.kafka.proc.pid, "redis": stack.redis.proc.pid,
                               "bench": os.getpid()})

        best, limit, steps = await ramp(settings, args, [w.port for w in workers], rss, n,
                                        watch, pins[1] if pinned else None)
        out["best"][n] = best
        out["limit"][n] = limit
        out["pinned"][n] = pinned
        out["steps"] += steps
    out["worker_rss_peak_mb"] = round(rss.peak() / 2**20, 1)
    return out


async def _wait_joined(settings: Any, port: int, timeout: float = 600) -> None:
    """Until the new worker has loaded its index and answers requests (it owns request
    partitions after the group's rebalance): recalls for many users until its
    ``recall_requests`` counter moves."""
    from devtools.client import RecallClient
    from devtools.scrape import metric_value, metrics_url, scrape

    deadline = time.monotonic() + timeout
    async with RecallClient(settings) as client:
        n = 0
        while time.monotonic() < deadline:
            if metric_value(scrape(metrics_url(port)), "recall_requests_total") > 0:
                return
            for _ in range(20):
                n += 1
                await client.send_request(f"join-probe-{n}", k=1)
            await asyncio.sleep(0.5)
    raise DevtoolsError(f"the worker on :{port} did not answer within {timeout:g}s")


def run_capacity(args: argparse.Namespace) -> int:
    from devtools.e2e.catalogue import load_catalogue
    from devtools.e2e.run import affinity, pinning
    from devtools.e2e.traffic import warm_clicks
    from devtools.localstack import free_port, worker_stack
    from recall.config import Settings

    try:
        counts = sorted({int(x) for x in args.workers.split(",") if x.strip()})
    except ValueError:
        raise DevtoolsError(f"--workers must list integers, got {args.workers!r}") from None
    if (not counts or counts[0] < 1 or args.start <= 0 or args.step <= 0
            or args.step_seconds <= 0 or args.click_ratio < 0 or args.items < 100
            or warm_clicks(args) < 1):
        raise DevtoolsError("--workers >= 1, --start/--step/--step-seconds > 0, "
                            "--click-ratio >= 0, --items >= 100, --warm-clicks >= 1")
    settings = Settings.from_env()
    if settings.topic_partitions < max(counts):
        raise DevtoolsError(f"{max(counts)} workers need at least as many partitions "
                            f"(RECALL_TOPIC_PARTITIONS={settings.topic_partitions})")
    args.users = min(args.users, args.items)
    pins = None
    if args.pin_worker is not None:
        mine = os.sched_getaffinity(0)
        n_pin = max(n for n in counts if len(mine) - n >= 1) if len(mine) > 1 else 1
        pins = pinning(args.pin_worker, max(1, min(n_pin, max(counts))))
    load_start = loadavg()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="recall-capacity-"))

    def load(s: Any) -> None:
        print(f"local stack: Kafka ({args.broker}) {s.kafka_bootstrap}, Redis "
              f"{s.redis_url}", flush=True)
        asyncio.run(load_catalogue(s, args, keep_old=False))

    with affinity(pins[1] if pins else None), worker_stack(
            settings, workdir=workdir, before_worker=load, worker_timeout=300,
            broker=args.broker,
            kafka_session_timeout=3.0, worker_cpus=pins[0][0] if pins else None,
            metrics_port=free_port()) as (
            settings, stack, worker):
        res = asyncio.run(_measure_all(settings, args, counts, pins, workdir, worker, stack))
    one = res["best"].get(1)
    cpu = cpu_summary(res["steps"], res["best"])
    summary = {
        "bench": "capacity", "items": args.items, "users": args.users,
        "warm_clicks": warm_clicks(args),
        "click_ratio": args.click_ratio, "p99_limit_ms": args.p99_ms,
        "lag_limit_ms": args.lag_ms, "step_seconds": args.step_seconds,
        "pin_worker": args.pin_worker, "broker": args.broker, "cpus": os.cpu_count(),
        "best_rate": {str(n): r for n, r in res["best"].items()},
        "per_worker_core": {str(n): round(r / n, 1) for n, r in res["best"].items()},
        "pinned": {str(n): p for n, p in res["pinned"].items()},
        "limited_by": {str(n): why for n, why in res["limit"].items()},
        "scale_out_efficiency": ({str(n): round(r / (n * one), 3)
                                  for n, r in res["best"].items() if n > 1}
                                 if one else None),
        **cpu,
        "worker_rss_peak_mb": res["worker_rss_peak_mb"], **res["settle"],
        "loadavg_start": load_start, "loadavg_end": loadavg(),
        "wall_seconds": round(time.monotonic() - t0, 1), "steps": res["steps"],
    }
    print()
    for n, r in res["best"].items():
        print(f"{n} worker(s){'' if res['pinned'][n] else ' (not pinned)'}: largest "
              f"sustainable rate {r:g} req/s + {r * args.click_ratio:g} clicks/s = "
              f"{r / n:g} req/s per worker core"
              + (f"; scale-out efficiency {summary['scale_out_efficiency'][str(n)]:.2f}"
                 if n > 1 and one else "") + f" (next step: {res['limit'][n]})", flush=True)
        print(cpu_lines(n, cpu), flush=True)
    print(f"limits: in-worker p99 <= {args.p99_ms:g} ms, e2e p99 <= {args.lag_ms:g} ms, "
          f"nothing lost; load average {load_start} -> {summary['loadavg_end']} on "
          f"{os.cpu_count()} CPUs", flush=True)
    if args.plot:
        plot(args.plot, res["steps"], args)
        summary["plot"] = args.plot
        print(f"plot: {args.plot}", flush=True)
    print(json.dumps(summary), flush=True)
    return 0


def cpu_summary(steps: list[dict[str, Any]], best: dict[int, float]) -> dict[str, Any]:
    """Per worker count: the workers' CPU line (:func:`worker_cpu_fit`), the CPU at the
    best rate, and which side was saturated at the step that set the limit."""
    fits, at_best, side = {}, {}, {}
    for n, rate in best.items():
        mine = [s for s in steps if s["workers"] == n]
        fits[str(n)] = worker_cpu_fit(mine, n)
        good = [s for s in mine if s["ok"] and s["rate"] == rate]
        at_best[str(n)] = ({"worker_cores": good[-1]["worker_cores"],
                            "shared_busy": good[-1]["shared_busy"]} if good else None)
        failed = [s for s in mine if not s["ok"]]
        side[str(n)] = limiting_side(failed[-1] if failed else None)
    return {"worker_cpu": fits, "cpu_at_best": at_best, "saturated_at_limit": side}


def cpu_lines(n: int, cpu: dict[str, Any]) -> str:
    """The summary's CPU lines for ``n`` workers."""
    fit, best = cpu["worker_cpu"].get(str(n)), cpu["cpu_at_best"].get(str(n))
    side = cpu["saturated_at_limit"].get(str(n))
    out = []
    if best and best["worker_cores"] is not None:
        shared = ("" if best["shared_busy"] is None
                  else f"; the CPUs of the broker, Redis and load {best['shared_busy']:.0%} busy")
        out.append(f"  at that rate: worker(s) {best['worker_cores']:.2f} of a core{shared}")
    if side:
        out.append(f"  at the first step over the limit the {side} were saturated"
                   if side == "shared CPUs" else
                   f"  at the first step over the limit the {side} was saturated")
    if fit:
        line = ("no line (the CPU did not rise with the rate)"
                if fit["ms_per_request"] is None else
                f"{fit['ms_per_request']} ms per request with its clicks, "
                f"plus {fit['fixed_cores']} of a core fixed")
        out.append(f"  worker CPU: {line} ({fit['steps']} steps"
                   + ("" if fit["kept_up"] else ", none kept up: an underestimate") + "); "
                   f"ESTIMATE, the highest step kept up with scaled to one busy core "
                   f"(its CPU per request, fixed costs included), not measured: "
                   f"~{fit['rate_per_core_estimate']:g} req/s per worker core")
    return "\n".join(out)


def plot(path: str, steps: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """p99 latencies against the offered rate and, below, the CPU each side used: the
    worker(s) per worker core, and the busiest of the CPUs the rest shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, cx) = plt.subplots(2, 1, figsize=(7.5, 7.0), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 2]})
    for j, n in enumerate(sorted({s["workers"] for s in steps})):
        pts = sorted((s for s in steps if s["workers"] == n), key=lambda s: s["rate"])
        rates = [s["rate"] for s in pts]
        color = f"C{j}"
        ax.plot(rates, [s["worker_request_p99_ms"] or float("nan") for s in pts], "o-",
                color=color, label=f"{n} worker(s): in-worker p99")
        ax.plot(rates, [s["e2e_p99_ms"] or float("nan") for s in pts], "s--",
                color=color, alpha=0.6, label=f"{n} worker(s): end-to-end p99")
        nan = float("nan")
        cx.plot(rates, [nan if s.get("worker_cores") is None else s["worker_cores"] / n
                        for s in pts], "o-", color=color,
                label=f"{n} worker(s): CPU per worker core")
        cx.plot(rates, [nan if s.get("shared_busy") is None else s["shared_busy"]
                        for s in pts], "^:", color=color, alpha=0.6,
                label=f"{n} worker(s): busiest CPU of broker, Redis, load")
    ax.axhline(args.p99_ms, color="red", linestyle=":", label=f"in-worker limit {args.p99_ms:g} ms")
    ax.set_yscale("log")
    ax.set_ylabel("p99 latency, ms (log)")
    ax.set_title(f"recall bench capacity: {args.items} items")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    cx.set_ylim(0, 1.05)
    cx.set_ylabel("busy, fraction of a core")
    cx.set_xlabel(f"requests/s offered (+ {args.click_ratio:g}x clicks/s)")
    cx.grid(True, alpha=0.3)
    cx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
