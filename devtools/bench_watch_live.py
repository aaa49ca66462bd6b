"""``recall bench watch-live``: the live recall gauge of a worker whose catalogue came
through the ``items`` topic, against exact search over the same answers, and how long
the worker took to reach ``RECALL_TARGET_RECALL``.

1. A local Tansu + redis-server and one ``recall worker`` on an empty Redis: the worker
   creates its first index version with the default parameters and builds its index
   from the topic, re-picking the hash layout as the catalogue grows (what any
   deployment fed through ``items`` does). ``--pin-worker CPU``: the worker alone there.
2. ``--items`` clustered unit vectors (``recall bench e2e``'s catalogue, same seed)
   produced onto ``items`` (``--produce-rate`` caps the rate; progress bar); then it
   waits until the worker's index holds them all and its version stopped changing.
3. ``--users`` warm users, three clicks each on items of one cluster (the e2e bench's).
4. ``--seconds`` of recall requests at ``--rate`` (open loop, a fixed schedule), with the
   worker's ``/metrics`` scraped every second: probes, gauge and its interval, samples.
5. Offline: each distinct user's answer at the probes the worker ended with, against
   exact search over the whole catalogue with the user's clicks left out (the worker's
   user vector is the mean of those clicks): recall@k with a 95% interval, next to the
   gauge at the end and the worker's own counters over the same seconds.

Prints a timeline, the seconds until the gauge reached the target (and stayed: probes
unchanged to the end), peak memory (worker VmHWM, this process), load averages and one
JSON line; ``--plot`` draws the gauge with its interval and the probes over time, and
the worker's RSS (sampled every 0.2 s) from the first item produced, with the index
versions served.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from devtools.errors import DevtoolsError
from devtools.procinfo import RssWatch, loadavg, peak_rss_mb
from devtools.scrape import metric_value, metrics_url, scrape

#: gauges and counters read every second during the measured phase
WATCHED = ("recall_lsh_probes", "recall_lsh_recall", "recall_lsh_recall_low",
           "recall_lsh_recall_high", "recall_lsh_recall_samples", "recall_lsh_recall_sample_rate",
           "recall_lsh_recall_queries_total", "recall_lsh_recall_found_total",
           "recall_index_version", "recall_lsh_recall_target")
#: items produced per batch of sends awaited together
PRODUCE_BATCH = 5_000


class RssTrail:
    """The worker's VmRSS every ``every`` seconds in a thread, from the first item
    produced to the end, and its index's items and version (``/metrics``) every
    ``every_state`` seconds: where its peak is made (a merge, a re-pick's re-layout) is
    what VmHWM alone does not say."""

    def __init__(self, pid: int, port: int, every: float = 0.2,
                 every_state: float = 0.5) -> None:
        import threading

        self.pid, self.port, self.every, self.every_state = pid, port, every, every_state
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, float]] = []  # (s since t0, MB)
        self.states: list[tuple[float, float, float]] = []  # (s since t0, items, version)
        self._stop = threading.Event()
        # two threads: a scrape the worker is slow to answer holds up no RSS sample
        self._threads = [threading.Thread(target=f, daemon=True, name=f"rss-trail-{n}")
                         for n, f in enumerate((self._rss, self._index))]
        for th in self._threads:
            th.start()

    def _rss(self) -> None:
        proc = RssWatch(self.pid)
        while not self._stop.wait(self.every):
            rss = proc.status().get("VmRSS")
            if rss is None:  # the worker is gone
                return
            self.samples.append((time.monotonic() - self.t0, rss / 2**20))

    def _index(self) -> None:
        while not self._stop.wait(self.every_state):
            text = scrape(metrics_url(self.port))  # "" when the worker did not answer
            if text:
                self.states.append((time.monotonic() - self.t0,
                                    metric_value(text, "recall_index_items"),
                                    metric_value(text, "recall_index_version")))

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join()


def rss_figures(trail: RssTrail, applied_at: float) -> dict[str, Any]:
    """The sampled peak of the worker's RSS, when (s since the first item produced), the
    index's items and version then (the last scrape before it), and the RSS once the
    catalogue was in."""
    if not trail.samples:
        return {}
    at, peak = max(trail.samples, key=lambda s: s[1])
    state = max((s for s in trail.states if s[0] <= at), key=lambda s: s[0],
                default=(0.0, math.nan, math.nan))
    after = [mb for t, mb in trail.samples if t >= applied_at]
    return {"rss_sampled_peak_mb": round(peak, 1), "rss_sampled_peak_at_s": round(at, 1),
            "rss_sampled_peak_items": state[1], "rss_sampled_peak_version": state[2],
            "rss_at_catalogue_applied_mb": round(after[0], 1) if after else None,
            "rss_by_version_after_catalogue": rss_by_version(trail, applied_at)}


def rss_by_version(trail: RssTrail, since: float) -> list[dict[str, float]]:
    """From ``since`` on, per index version served (the last scrape at or before each
    sample): its first, largest and last RSS. A move made once the catalogue is in (a
    cost re-tune: the copy, then the new table built beside the served one) peaks in the
    window of the version it leaves, which the whole run's peak (often the catalogue's
    merges) does not show."""
    out: list[dict[str, float]] = []
    states = sorted(trail.states)
    i, version = 0, math.nan
    for t, mb in trail.samples:
        while i < len(states) and states[i][0] <= t:
            version = states[i][2]
            i += 1
        if t < since:
            continue
        if not out or out[-1]["version"] != version:
            out.append({"version": version, "from_s": t, "first_mb": mb, "max_mb": mb,
                        "max_at_s": t})
        w = out[-1]
        if mb > w["max_mb"]:
            w["max_mb"], w["max_at_s"] = mb, t
        w["last_mb"] = mb
    return [{k: v if k == "version" else round(v, 1) for k, v in w.items()} for w in out]


def add_parser(sub: Any, bench_sub: Any) -> None:
    p = bench_sub.add_parser(
        "watch-live", help="live recall gauge vs exact search, catalogue from the items topic",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=20_000, help="catalogue size (default 20000)")
    p.add_argument("--users", type=int, default=2_000, help="warm users (default 2000)")
    p.add_argument("--rate", type=float, default=100.0, help="recall requests a second")
    p.add_argument("--seconds", type=float, default=60.0, help="measured seconds")
    p.add_argument("--produce-rate", type=float, default=0.0,
                   help="items a second onto the topic (default 0: as fast as it takes)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pin-worker", type=int, default=None, metavar="CPU",
                   help="run the worker alone on this CPU, everything else on the others")
    p.add_argument("--plot", default="", help="write the gauge over time as a PNG here")
    p.set_defaults(func=run)


async def produce_items(settings: Any, ids: list[str], vectors: np.ndarray,
                        rate: float) -> float:
    """Every item onto the items topic, keyed by id; returns the seconds it took."""
    import orjson
    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    prod = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks=1,
                            max_batch_size=1 << 20)
    await prod.start()
    t0 = time.perf_counter()
    try:
        with tqdm(total=len(ids), desc="items -> topic", unit="item", mininterval=2.0) as bar:
            for lo in range(0, len(ids), PRODUCE_BATCH):
                hi = min(len(ids), lo + PRODUCE_BATCH)
                futures = [await prod.send(settings.topic_items, orjson.dumps(
                    {"item_id": ids[i], "vector": vectors[i]},
                    option=orjson.OPT_SERIALIZE_NUMPY), key=ids[i].encode())
                    for i in range(lo, hi)]
                await asyncio.gather(*futures)
                bar.update(hi - lo)
                if rate > 0:
                    await asyncio.sleep(max(0.0, t0 + hi / rate - time.perf_counter()))
    finally:
        await prod.stop()
    return time.perf_counter() - t0


async def catalogue_applied(port: int, n: int, settle: float = 5.0,
                            timeout: float = 3600.0) -> float:
    """Waits until the worker's index holds ``n`` items and neither its size nor its
    version changed for ``settle`` seconds (a growth re-pick is done); returns when the
    size was first reached (time.monotonic)."""
    reached: float | None = None
    last: tuple[float, float] | None = None
    since = time.monotonic()
    deadline = since + timeout
    told = 0.0
    while time.monotonic() < deadline:
        text = scrape(metrics_url(port))
        now_state = (metric_value(text, "recall_index_items"),
                     metric_value(text, "recall_index_version"))
        if now_state != last:
            last, since = now_state, time.monotonic()
        if reached is None and now_state[0] >= n:
            reached = time.monotonic()
        if reached is not None and time.monotonic() - since >= settle:
            return reached
        if time.monotonic() - told >= 30:
            told = time.monotonic()
            print(f"  worker index: {now_state[0]:.0f} items, version {now_state[1]:.0f}",
                  flush=True)
        await asyncio.sleep(0.5)
    raise DevtoolsError(f"the worker's index did not reach {n} items in {timeout:.0f}s")


async def paced_requests(settings: Any, args: argparse.Namespace, run: str, port: int
                         ) -> tuple[dict[int, tuple[str, float, dict]], list[dict[str, float]],
                                    float]:
    """Requests at ``args.rate`` for ``args.seconds`` from random warm users, /metrics
    every second. Returns (seq -> (user, sent, response), scrapes, start time)."""
    import random

    import orjson

    from devtools.client import ResponseReader
    from devtools.e2e.traffic import _paced, producer

    rng = random.Random(args.seed + 7)
    sent: dict[int, tuple[str, float]] = {}
    answers: dict[int, tuple[str, float, dict]] = {}
    prefix = run + "."

    def on_records(records: list[Any]) -> None:
        for rec in records:
            rid = rec.key.decode() if rec.key else ""
            if rid.startswith(prefix):
                seq = int(rid.split(".")[1])
                if seq in sent and seq not in answers:
                    user, at = sent[seq]
                    answers[seq] = (user, at, orjson.loads(rec.value))

    reader = ResponseReader(settings, [settings.topic_responses], on_records,
                            settings.fetch_max_wait_ms)
    await reader.start()
    prod = producer(settings.kafka_bootstrap, 0)
    await prod.start()
    scrapes: list[dict[str, float]] = []
    t0 = time.time() + 0.5

    async def watch() -> None:
        while True:
            text = await asyncio.to_thread(scrape, metrics_url(port))
            row = {"t": round(time.time() - t0, 2)}
            row.update({name: metric_value(text, name) for name in WATCHED})
            scrapes.append(row)
            await asyncio.sleep(max(0.0, 1.0 - (time.time() - t0) % 1.0))

    seq = 0

    async def emit(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            user = f"u{rng.randrange(args.users)}"
            sent[seq] = (user, time.time() - t0)
            await prod.send(settings.topic_requests, orjson.dumps(
                {"request_id": f"{run}.{seq}", "user_id": user, "k": args.k}),
                key=user.encode())
            seq += 1

    watcher = asyncio.create_task(watch())
    try:
        await _paced(args.rate, args.seconds, t0, 0.005, emit)
        await prod.flush()
        deadline = time.monotonic() + 10
        while len(answers) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        watcher.cancel()
        await prod.stop()
        await reader.stop()
    return answers, scrapes, t0


def exact_answers(vectors: np.ndarray, queries: np.ndarray, excluded: list[list[int]],
                  k: int) -> list[list[int]]:
    """Each query's exact top-k rows by inner product, ``excluded`` rows left out (one
    matrix product per block of queries; unit rows: cosine)."""
    from recall.tuner import exact_topk

    extra = max((len(e) for e in excluded), default=0)
    top = exact_topk(vectors, queries, k + extra)
    out = []
    for q, rows, skip in zip(queries, top, excluded, strict=True):
        order = rows[np.argsort(-(vectors[rows] @ q), kind="stable")]
        left_out = set(skip)
        out.append([int(r) for r in order if int(r) not in left_out][:k])
    return out


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and normal-approximation 95% interval (as the worker's gauge)."""
    from recall.monitor import mean_interval

    est = mean_interval(values)
    if est is None:
        m = float(values[0]) if values else math.nan
        return m, m, m
    return est.mean, est.low, est.high


def settled_since(scrapes: list[dict[str, float]]) -> float:
    """The time of the first scrape after the last one whose probes or index version
    differed from the end's: every request sent from then on was answered with them."""
    def state(r: dict[str, float]) -> tuple[float, float]:
        return r["recall_lsh_probes"], r["recall_index_version"]

    final = state(scrapes[-1])
    start = scrapes[0]["t"]
    for prev, row in itertools.pairwise(scrapes):
        if state(prev) != final:
            start = row["t"]
    return start


def held_from(scrapes: list[dict[str, float]], target: float) -> float | None:
    """The first scrape time from which every gauge reading (NaN ones aside: just after a
    probe change nothing is measured yet) was at or above ``target``; None when the last
    reading is below it."""
    readings = [(r["t"], r["recall_lsh_recall"]) for r in scrapes
                if not math.isnan(r["recall_lsh_recall"])]
    start = None
    for t, gauge in readings:
        if gauge < target:
            start = None
        elif start is None:
            start = t
    return start


def figures(args: argparse.Namespace, ids: list[str], vectors: np.ndarray,
            answers: dict[int, tuple[str, float, dict]], scrapes: list[dict[str, float]]
            ) -> dict[str, Any]:
    """Offline recall of the answers at the final probes, the gauge, time to target."""
    from devtools.e2e.catalogue import item_of, user_cluster
    from devtools.e2e.traffic import WARM_CLICKS
    from recall.lsh import normalize

    end = scrapes[-1]
    target = end["recall_lsh_recall_target"]
    since = settled_since(scrapes)
    # the scrape before the settled stretch: counters over the same seconds
    base = max((r for r in scrapes if r["t"] <= since), key=lambda r: r["t"],
               default=scrapes[0])
    queries = end["recall_lsh_recall_queries_total"] - base["recall_lsh_recall_queries_total"]
    found = end["recall_lsh_recall_found_total"] - base["recall_lsh_recall_found_total"]
    # distinct users answered from the LSH index once the probes were final (an answer
    # is deterministic for a user at fixed probes and index: one per user)
    final: dict[str, list[str]] = {}
    for user, at, value in answers.values():
        if at >= since and value.get("source") == "lsh" and value.get("status") == "ok":
            final.setdefault(user, [i["item_id"] for i in value.get("items", [])])
    row = {item: n for n, item in enumerate(ids)}
    users = sorted(final)
    clicked = []
    for u in users:
        cl = user_cluster(int(u[1:]), args.items, args.seed)
        clicked.append([row[item_of(cl, int(u[1:]) * 31 + j * 7, args.items)]
                        for j in range(WARM_CLICKS)])
    recalls: list[float] = []
    if users:
        q = normalize(np.stack([vectors[c].mean(axis=0) for c in clicked]))
        truth = exact_answers(vectors, q, clicked, args.k)
        recalls = [len({row[i] for i in final[u]} & set(t)) / len(t)
                   for u, t in zip(users, truth, strict=True) if t]
    mean, low, high = interval(recalls)
    first = next((r["t"] for r in scrapes if r["recall_lsh_recall"] >= target), None)
    reached = held_from(scrapes, target)
    statuses: dict[str, int] = {}
    for _, _, value in answers.values():
        key = f"{value.get('status')}/{value.get('source')}"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "target": target, "probes_end": end["recall_lsh_probes"],
        "index_version_end": end["recall_index_version"],
        "gauge_end": end["recall_lsh_recall"], "gauge_low": end["recall_lsh_recall_low"],
        "gauge_high": end["recall_lsh_recall_high"],
        "gauge_samples": end["recall_lsh_recall_samples"],
        "sample_rate": end["recall_lsh_recall_sample_rate"],
        "settled_from_s": since,
        "worker_counters_recall": found / queries if queries else None,
        "worker_counters_samples": queries,
        "offline_recall": mean, "offline_low": low, "offline_high": high,
        "offline_users": len(recalls),
        "gauge_minus_offline": end["recall_lsh_recall"] - mean if recalls else None,
        "first_at_target_s": first, "reached_target_s": reached,
        "answers": len(answers), "answers_by_status_source": statuses,
    }


def plot(path: str, scrapes: list[dict[str, float]], out: dict[str, Any], title: str,
         trail: RssTrail | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in scrapes]
    fig, (ax, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 7.5),
                                       gridspec_kw={"height_ratios": [3, 1, 2]})
    ax2.sharex(ax)
    ax.fill_between(t, [r["recall_lsh_recall_low"] for r in scrapes],
                    [r["recall_lsh_recall_high"] for r in scrapes], alpha=0.3,
                    label="gauge 95% interval")
    ax.plot(t, [r["recall_lsh_recall"] for r in scrapes], label="recall_lsh_recall")
    ax.axhline(out["target"], color="k", ls="--", lw=1, label="target")
    if out["offline_users"]:
        ax.errorbar([t[-1]], [out["offline_recall"]],
                    yerr=[[out["offline_recall"] - out["offline_low"]],
                          [out["offline_high"] - out["offline_recall"]]],
                    fmt="o", color="C3", label="offline, final probes")
    ax.set_ylabel("recall@k")
    ax.legend(loc="lower right", fontsize=8)
    ax2.step(t, [r["recall_lsh_probes"] for r in scrapes], where="post")
    ax2.set_ylabel("probes T")
    ax2.set_xlabel("seconds since the first request")
    if trail is not None and trail.samples:
        ts, mb = zip(*trail.samples, strict=True)
        ax3.plot(ts, mb, lw=1, label="worker RSS")
        seen = None
        for at, items, version in trail.states:
            if version != seen and seen is not None:  # a new index version served
                ax3.axvline(at, color="C1", lw=0.8, ls=":")
                ax3.annotate(f"v{version:.0f} at {items:,.0f}", (at, max(mb)), fontsize=7,
                             rotation=90, va="top", ha="right")
            seen = version
        ax3.set_ylabel("worker RSS (MB)")
        ax3.set_xlabel("seconds since the first item produced (dotted: a new index version)")
    else:
        ax3.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def timeline(scrapes: list[dict[str, float]], every: float = 5.0) -> None:
    print("   t(s)  probes  gauge  (95% interval)  samples  rate/s", flush=True)
    last = -math.inf
    for r in scrapes:
        if r["t"] - last >= every or r is scrapes[-1]:
            last = r["t"]
            print(f"  {r['t']:5.0f}  {r['recall_lsh_probes']:6.0f}  "
                  f"{r['recall_lsh_recall']:.3f}  ({r['recall_lsh_recall_low']:.3f}-"
                  f"{r['recall_lsh_recall_high']:.3f})  {r['recall_lsh_recall_samples']:7.0f}"
                  f"  {r['recall_lsh_recall_sample_rate']:6.1f}", flush=True)


def run(args: argparse.Namespace) -> int:
    import os

    from devtools.e2e.catalogue import catalogue
    from devtools.e2e.run import _sigterm_as_interrupt, affinity, memory_figures, pinning
    from devtools.e2e.traffic import warm_users
    from devtools.localstack import worker_stack
    from recall.config import Settings

    if (args.items < 2000 or not 1 <= args.users <= args.items or args.rate <= 0
            or args.seconds <= 0 or not 1 <= args.k <= 100):
        raise DevtoolsError("--items must be >= 2000 (smaller catalogues are searched "
                            "exactly), --users in 1..items, --rate > 0, --seconds > 0, "
                            "--k in 1..100")
    pins = pinning(args.pin_worker)
    _sigterm_as_interrupt()
    settings = Settings.from_env()
    load_start = loadavg()
    t_begin = time.monotonic()
    run_id = f"w{os.getpid()}x{int(time.time()) % 100000}"
    ids, vectors = catalogue(args.items, settings.dim, args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="recall-watch-live-"))
    out: dict[str, Any] = {"items": args.items, "users": args.users, "rate": args.rate,
                           "seconds": args.seconds, "pin_worker": args.pin_worker}
    with affinity(pins[1] if pins else None), worker_stack(
            settings, workdir=workdir, worker_timeout=120,
            worker_cpus=pins[0][0] if pins else None) as (settings, _, worker):
        assert worker is not None
        port = settings.metrics_port
        rss = RssWatch(worker.proc.pid)
        trail = RssTrail(worker.proc.pid, port)
        print(f"local stack: Kafka (Tansu) {settings.kafka_bootstrap}, Redis "
              f"{settings.redis_url}; worker pid {worker.proc.pid}, log {worker.log_path}",
              flush=True)
        t0 = trail.t0 = time.monotonic()
        took = asyncio.run(produce_items(settings, ids, vectors, args.produce_rate))
        out["produce_seconds"] = round(took, 1)
        out["produce_items_per_s"] = round(args.items / took, 1)
        print(f"{args.items} items produced in {took:.1f}s ({args.items / took:.0f}/s); "
              f"load {loadavg()}", flush=True)
        reached = asyncio.run(catalogue_applied(port, args.items))
        out["catalogue_applied_s"] = round(reached - t0, 1)
        text = scrape(metrics_url(port))
        print(f"worker index: {args.items} items {reached - t0:.1f}s after the first was "
              f"produced; version {metric_value(text, 'recall_index_version'):.0f}, probes "
              f"{metric_value(text, 'recall_lsh_probes'):.0f}; worker RSS "
              f"{rss.sample() / 2**20:.0f} MB; load {loadavg()}", flush=True)
        n = asyncio.run(warm_users(settings, args, run_id, port))
        print(f"{args.users} warm users: {n} clicks applied; measuring {args.seconds:g}s "
              f"at {args.rate:g} requests/s", flush=True)
        answers, scrapes, _ = asyncio.run(paced_requests(settings, args, run_id, port))
        out.update(memory_figures(rss))
        trail.stop()
        out.update(rss_figures(trail, reached - t0))
        log_tail = worker.log_path.read_text(errors="replace").splitlines()
    timeline(scrapes)
    out.update(figures(args, ids, vectors, answers, scrapes))
    out["repicks_logged"] = [ln.split("] ", 3)[-1] for ln in log_tail
                             if "LSH parameters" in ln and "->" in ln][-8:]
    out["bench_peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["loadavg_start"], out["loadavg_end"] = load_start, loadavg()
    out["wall_seconds"] = round(time.monotonic() - t_begin, 1)
    summary(out)
    if args.plot:
        plot(args.plot, scrapes, out, f"recall bench watch-live: {args.items} items from the "
             f"topic, {args.rate:g} req/s (load {out['loadavg_end']})", trail)
        print(f"plot: {args.plot}", flush=True)
    print(json.dumps(out), flush=True)
    return 0


def summary(out: dict[str, Any]) -> None:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    print(f"gauge at the end {f(out['gauge_end'])} ({f(out['gauge_low'])}-"
          f"{f(out['gauge_high'])}, {out['gauge_samples']:.0f} samples) at T="
          f"{out['probes_end']:.0f}; offline exact recall of the answers at that T "
          f"{f(out['offline_recall'])} ({f(out['offline_low'])}-{f(out['offline_high'])}, "
          f"{out['offline_users']} users); worker counters over the same seconds "
          f"{f(out['worker_counters_recall'])} ({out['worker_counters_samples']:.0f} "
          f"samples)", flush=True)
    print(f"target {out['target']:g}: gauge first at it {out['first_at_target_s']} s, at or "
          f"above it from {out['reached_target_s']} s on (None: below it at the end); "
          f"probes final from {out['settled_from_s']:.0f} s (seconds since the first "
          f"request)", flush=True)
    print(f"worker peak RSS {out.get('worker_rss_peak_mb')} MB, bench {out['bench_peak_rss_mb']}"
          f" MB; load average {out['loadavg_start']} -> {out['loadavg_end']}", flush=True)
    if "rss_sampled_peak_mb" in out:
        print(f"worker RSS sampled every 0.2 s: peak {out['rss_sampled_peak_mb']} MB at "
              f"{out['rss_sampled_peak_at_s']} s after the first item produced (index "
              f"{out['rss_sampled_peak_items']:.0f} items, version "
              f"{out['rss_sampled_peak_version']:.0f}); {out['rss_at_catalogue_applied_mb']} "
              "MB once the catalogue was in", flush=True)
        for w in out.get("rss_by_version_after_catalogue", []):
            print(f"  then version {w['version']:.0f} from {w['from_s']} s: RSS "
                  f"{w['first_mb']} MB, peak {w['max_mb']} MB at {w['max_at_s']} s, "
                  f"{w['last_mb']} MB at its end", flush=True)
