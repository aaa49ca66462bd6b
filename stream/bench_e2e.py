"""``recall bench e2e``: end-to-end latency of the worker through Kafka, under load.

What it does, in order:

1. The world: a local Tansu + redis-server + ``recall worker`` (or, with ``--external``,
   the broker, Redis and worker of ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` /
   ``RECALL_METRICS_PORT``).
2. The catalogue: ``--items`` clustered unit vectors (item ``i{n}`` is in cluster
   ``n % C``, C = items / 50), bulk-written into Redis as a new index version and
   switched live (1M items never go through Kafka as JSON). Locally this happens before
   the worker starts, so the worker loads it at start-up; with ``--external`` the worker
   rebuilds when it sees the new live version.
3. Warm users: ``--users`` users get a few clicks each (through ``clicks``) on items of
   their interest cluster, so their recalls come from the LSH index.
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

All processes share one host clock (``time.time()``), which is what makes send times in
request ids usable by another process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.promtext import histogram_delta, metric_value, metrics_url, scrape

log = logging.getLogger(__name__)

#: a response later than this counts as a timeout (it still counts in the percentiles)
TIMEOUT = 1.0
#: how long to wait for outstanding responses after the last request
DRAIN = 10.0
#: clicks per warm user before the measured phase
WARM_CLICKS = 3
#: a freshness probe gives up after this many seconds
PROBE_TIMEOUT = 5.0
#: seconds between progress lines
PROGRESS_EVERY = 2.0
#: items per cluster of the synthetic catalogue
CLUSTER_SIZE = 50


# --- the catalogue and the traffic ----------------------------------------------------------

def n_clusters(n_items: int) -> int:
    return max(2, min(n_items, n_items // CLUSTER_SIZE))


def item_of(cluster: int, j: int, n_items: int) -> str:
    """The j-th item of a cluster (items ``i{n}`` with ``n % C == cluster``)."""
    c = n_clusters(n_items)
    per = max(1, n_items // c)
    return f"i{cluster + c * (j % per)}"


def user_cluster(user: int, n_items: int, seed: int) -> int:
    """The interest cluster of warm user ``u{user}`` (deterministic, any process)."""
    return (user * 2654435761 + seed * 97) % n_clusters(n_items)


def catalogue(n_items: int, dim: int, seed: int) -> tuple[list[str], Any]:
    import numpy as np

    from offline.generate import cluster_vectors

    item_cluster = (np.arange(n_items) % n_clusters(n_items)).astype(np.int32)
    return [f"i{n}" for n in range(n_items)], cluster_vectors(item_cluster, dim, seed=seed)


def _producer(bootstrap: str, linger_ms: int) -> Any:
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, acks=1,
                            max_batch_size=1 << 20)


async def _paced(rate: float, seconds: float, start_at: float, tick: float,
                 emit: Any) -> tuple[int, float, float]:
    """Call ``emit(n)`` so that ``rate`` per second are emitted on schedule from the wall
    time ``start_at`` for ``seconds``; returns (emitted, first, last emit time)."""
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    sent = 0
    total = int(rate * seconds)
    first = last = t0
    while sent < total:
        now = time.time()
        due = min(total, int((now - t0) * rate) + 1) - sent
        if due > 0:
            await emit(due)
            sent += due
            last = time.time()
        next_at = t0 + sent / rate
        await asyncio.sleep(max(0.0, min(tick, next_at - time.time())))
    return sent, first, last


def request_process(bootstrap: str, topic: str, run: str, rate: float, seconds: float,
                    users: int, k: int, seed: int, start_at: float, counter: Any,
                    out: Any) -> None:
    """Child process: recall requests at ``rate`` (ids ``{run}.{seq}.{send time in us}``)."""
    import random

    import orjson

    rng = random.Random(seed)

    async def main() -> dict[str, Any]:
        prod = _producer(bootstrap, 0)
        await prod.start()
        errors = 0
        seq = 0

        def done(fut: asyncio.Future) -> None:
            nonlocal errors
            if fut.cancelled() or fut.exception() is not None:
                errors += 1

        async def emit(n: int) -> None:
            nonlocal seq
            for _ in range(n):
                uid = f"u{rng.randrange(users)}"
                rid = f"{run}.{seq}.{time.time_ns() // 1000}"
                fut = await prod.send(topic, orjson.dumps(
                    {"request_id": rid, "user_id": uid, "k": k}), key=uid.encode())
                fut.add_done_callback(done)
                seq += 1
            counter.value = seq

        try:
            sent, first, last = await _paced(rate, seconds, start_at, 0.002, emit)
            await prod.flush()
        finally:
            await prod.stop()
        return {"sent": sent, "first": first, "last": last, "send_errors": errors}

    out.put(asyncio.run(main()))


def click_process(bootstrap: str, topic: str, run: str, rate: float, seconds: float,
                  users: int, n_items: int, seed: int, start_at: float, counter: Any,
                  out: Any) -> None:
    """Child process: clicks of warm users on items of their cluster, at ``rate``."""
    import random

    import orjson

    rng = random.Random(seed + 1)

    async def main() -> dict[str, Any]:
        prod = _producer(bootstrap, 2)  # the load generator may batch; the worker may not
        await prod.start()
        seq = 0
        futures: list[asyncio.Future] = []

        async def emit(n: int) -> None:
            nonlocal seq
            now = time.time()
            for _ in range(n):
                u = rng.randrange(users)
                uid = f"u{u}"
                item = item_of(user_cluster(u, n_items, seed), rng.randrange(1 << 30), n_items)
                futures.append(await prod.send(topic, orjson.dumps(
                    {"user_id": uid, "item_id": item, "ts": now, "event_id": f"{run}c{seq}"}),
                    key=uid.encode()))
                seq += 1
            counter.value = seq
            if len(futures) > 20_000:
                await asyncio.gather(*futures, return_exceptions=True)
                futures.clear()

        try:
            sent, first, last = await _paced(rate, seconds, start_at, 0.01, emit)
            await asyncio.gather(*futures, return_exceptions=True)
        finally:
            await prod.stop()
        return {"sent": sent, "first": first, "last": last}

    out.put(asyncio.run(main()))


class RssWatch:
    """Samples a process's RSS; the peak comes from the kernel (VmHWM) when readable."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.max_sampled = 0

    def sample(self) -> int:
        if self.pid is None:
            return 0
        try:
            import psutil

            rss = int(psutil.Process(self.pid).memory_info().rss)
        except Exception:
            return 0
        self.max_sampled = max(self.max_sampled, rss)
        return rss

    def peak(self) -> int:
        if self.pid is None:
            return 0
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return self.max_sampled


# --- the run -----------------------------------------------------------------------------------

@dataclass
class Reader:
    """Reads ``recall-responses`` from the end; bench responses by run prefix, probes by id."""

    settings: Any
    run: str
    latencies: list[float] = field(default_factory=list)
    ids: set[int] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    waiting: dict[str, asyncio.Future] = field(default_factory=dict)
    consumer: Any = None
    task: asyncio.Task | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=max(1, s.fetch_max_wait_ms), auto_offset_reset="latest")
        await self.consumer.start()
        parts = None
        for _ in range(100):
            parts = self.consumer.partitions_for_topic(s.topic_responses)
            if parts:
                break
            await self.consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        if not parts:
            raise RuntimeError(f"topic {s.topic_responses!r} not found")
        tps = [TopicPartition(s.topic_responses, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self.task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.consumer is not None:
            await self.consumer.stop()

    async def _read(self) -> None:
        import orjson

        prefix = self.run + "."
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.time()
            for records in batches.values():
                for rec in records:
                    rid = rec.key.decode() if rec.key else ""
                    if rid.startswith(prefix):
                        _, seq, sent_us = rid.split(".")
                        if int(seq) in self.ids:
                            self.duplicates += 1
                            continue
                        self.ids.add(int(seq))
                        self.latencies.append(now - int(sent_us) / 1e6)
                        value = orjson.loads(rec.value)
                        st, src = value.get("status", "?"), value.get("source", "?")
                        self.statuses[st] = self.statuses.get(st, 0) + 1
                        self.sources[src] = self.sources.get(src, 0) + 1
                    elif rid in self.waiting:
                        fut = self.waiting.pop(rid)
                        if not fut.done():
                            fut.set_result((now, orjson.loads(rec.value)))


async def freshness_probes(settings: Any, reader: Reader, n: int, n_items: int, run: str,
                           seed: int, stop_at: float) -> tuple[list[float], int]:
    """Click-then-recall probes (see the module docstring); (freshness seconds, missed)."""
    import random

    import orjson

    rng = random.Random(seed + 2)
    c = n_clusters(n_items)
    prod = _producer(settings.kafka_bootstrap, 0)
    await prod.start()
    fresh: list[float] = []
    missed = 0
    try:
        for i in range(n):
            if time.time() > stop_at + DRAIN:
                break  # the rest count as not run (freshness_done < freshness_probes)
            uid = f"fresh-{run}-{i}"
            item = item_of(rng.randrange(c), rng.randrange(1 << 30), n_items)
            t0 = time.time()
            await prod.send(settings.topic_clicks, orjson.dumps(
                {"user_id": uid, "item_id": item, "ts": t0, "event_id": f"{run}f{i}"}),
                key=uid.encode())
            attempt = 0
            while True:
                rid = f"{run}-f{i}-{attempt}"
                fut = reader.waiting[rid] = asyncio.get_running_loop().create_future()
                await prod.send(settings.topic_requests, orjson.dumps(
                    {"request_id": rid, "user_id": uid, "k": 10}), key=uid.encode())
                try:
                    got_at, value = await asyncio.wait_for(fut, PROBE_TIMEOUT)
                except asyncio.TimeoutError:
                    reader.waiting.pop(rid, None)
                    missed += 1
                    break
                if value.get("source") not in ("popular", "none"):
                    fresh.append(got_at - t0)
                    break
                if got_at - t0 > PROBE_TIMEOUT:
                    missed += 1
                    break
                attempt += 1
            # spread the probes over the measured phase (at least 20 ms apart)
            left = n - i - 1
            if left:
                await asyncio.sleep(max(0.02, (stop_at - time.time()) / left * 0.5))
    finally:
        await prod.stop()
    return fresh, missed


def _pct(values: Any, q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else None


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 3)


async def warm_users(settings: Any, args: argparse.Namespace, run: str, port: int | None,
                     ) -> int:
    """WARM_CLICKS clicks per warm user through ``clicks``; waits until applied."""
    import orjson

    prod = _producer(settings.kafka_bootstrap, 5)
    await prod.start()
    before = metric_value(scrape(metrics_url(port)), "recall_clicks_total") if port else 0.0
    n = 0
    try:
        futures = []
        ts = time.time() - 60
        for u in range(args.users):
            uid = f"u{u}"
            cl = user_cluster(u, args.items, args.seed)
            for j in range(WARM_CLICKS):
                futures.append(await prod.send(settings.topic_clicks, orjson.dumps(
                    {"user_id": uid, "item_id": item_of(cl, u * 31 + j * 7, args.items),
                     "ts": ts + j, "event_id": f"{run}w{n}"}), key=uid.encode()))
                n += 1
            if len(futures) >= 10_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await prod.stop()
    if port:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            applied = metric_value(scrape(metrics_url(port)), "recall_clicks_total") - before
            if applied >= n:
                break
            await asyncio.sleep(0.2)
        else:
            print(f"warning: only {applied:.0f} of {n} warm-up clicks applied", flush=True)
    return n


async def wait_ready(settings: Any, timeout: float) -> float:
    from stream.client import RecallClient

    async with RecallClient(settings) as client:
        return await client.wait_ready(timeout)


async def load_catalogue(settings: Any, args: argparse.Namespace, keep_old: bool) -> int:
    """The catalogue into Redis as a new live version; returns the version."""
    from offline.load import load_index
    from recall.store import Store
    from recall.tuner import suggested_params
    from stream.items import default_params

    t0 = time.perf_counter()
    ids, vectors = catalogue(args.items, settings.dim, args.seed)
    # as a user would after `recall tune`: parameters for this catalogue's size, unless
    # RECALL_LSH_* ask for others
    explicit = settings.lsh_tables or settings.lsh_hashes or settings.lsh_width or \
        settings.lsh_probes
    params = default_params(settings) if explicit else suggested_params(
        args.items, settings.dim, settings.lsh_seed)
    print(f"LSH parameters: {params.describe()}", flush=True)
    print(f"catalogue: {len(ids)} x {settings.dim} clustered unit vectors "
          f"({n_clusters(args.items)} clusters) in {time.perf_counter() - t0:.1f}s", flush=True)
    store = Store.from_url(settings.redis_url, settings.redis_prefix)
    try:
        t0 = time.perf_counter()
        version, _ = await load_index(store, ids, vectors, params,
                                      batch=20_000, keep_old=keep_old, progress=True)
    finally:
        await store.close()
    print(f"catalogue in Redis as version {version} in {time.perf_counter() - t0:.1f}s",
          flush=True)
    return version


#: scratch topic of the broker round-trip measurement (local stack only)
RTT_TOPIC = "recall-bench-rtt"


async def broker_round_trip(settings: Any, n: int = 300) -> dict[str, float]:
    """The broker's floor: plain aiokafka produce -> fetch of one small record, ``n`` times
    (one per 10 ms), with the worker's fetch wait. A recall crosses the broker twice."""
    from aiokafka import AIOKafkaConsumer

    from recall.localstack import create_topics

    await create_topics(settings.kafka_bootstrap, [RTT_TOPIC], 1)
    prod = _producer(settings.kafka_bootstrap, 0)
    cons = AIOKafkaConsumer(RTT_TOPIC, bootstrap_servers=settings.kafka_bootstrap,
                            group_id=None, auto_offset_reset="latest",
                            fetch_max_wait_ms=max(1, settings.fetch_max_wait_ms))
    await prod.start()
    await cons.start()
    try:
        await cons.getmany(timeout_ms=500)  # assigned and positioned
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            await prod.send(RTT_TOPIC, b"x", key=str(i).encode())
            while not await cons.getmany(timeout_ms=1000):
                pass
            lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)
    finally:
        await prod.stop()
        await cons.stop()
    return {"p50": float(_pct(lat, 50)), "p99": float(_pct(lat, 99))}


async def trace_lost(settings: Any, run: str, seqs: list[int]) -> dict[str, list[int]]:
    """Where lost requests went: read ``recall-requests`` and ``recall-responses`` from the
    start and report which of ``seqs`` the broker holds a request / a response for (a
    response present but not read points at the reader, no response at the worker)."""
    import orjson
    from aiokafka import AIOKafkaConsumer

    wanted = set(seqs)
    found: dict[str, list[int]] = {}
    for name, topic in (("requests_in_kafka", settings.topic_requests),
                        ("responses_in_kafka", settings.topic_responses)):
        cons = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
        await cons.start()
        hits: set[int] = set()
        try:
            while True:
                batches = await cons.getmany(timeout_ms=1000, max_records=50_000)
                if not batches:
                    break
                for records in batches.values():
                    for rec in records:
                        rid = rec.key.decode() if rec.key else ""
                        if name.startswith("requests"):
                            rid = orjson.loads(rec.value).get("request_id", "")
                        parts = rid.split(".")
                        if len(parts) == 3 and parts[0] == run and int(parts[1]) in wanted:
                            hits.add(int(parts[1]))
        finally:
            await cons.stop()
        found[name] = sorted(hits)
    return found


async def measure(settings: Any, args: argparse.Namespace, run: str, port: int | None,
                  rss: RssWatch) -> dict[str, Any]:
    import multiprocessing as mp

    import numpy as np

    ctx = mp.get_context("spawn")
    reader = Reader(settings, run)
    await reader.start()
    before = scrape(metrics_url(port)) if port else ""
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
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        if args.freshness > 0:
            probes = asyncio.create_task(freshness_probes(
                settings, reader, args.freshness, args.items, run, args.seed, stop_at))
        seen = 0
        while any(p.is_alive() for p in procs) and time.time() < stop_at + 30:
            await asyncio.sleep(PROGRESS_EVERY)
            window = np.asarray(reader.latencies[seen:]) * 1000
            seen = len(reader.latencies)
            figures = (f"p50 {np.percentile(window, 50):.1f} ms, "
                       f"p99 {np.percentile(window, 99):.1f} ms") if len(window) else "-"
            print(f"[{time.time() - start_at:5.1f}s] requests {req_count.value}, "
                  f"responses {seen}, clicks {click_count.value}; last {PROGRESS_EVERY:.0f}s "
                  f"e2e {figures}; worker RSS {rss.sample() / 2**20:.0f} MB", flush=True)
        req = req_out.get(timeout=30)
        clicks = click_out.get(timeout=30) if args.click_rate > 0 else {"sent": 0}
        for p in procs:
            p.join(10)
        # the outstanding responses
        deadline = time.time() + DRAIN
        while len(reader.ids) < req["sent"] and time.time() < deadline:
            await asyncio.sleep(0.05)
        fresh, missed = await probes if probes is not None else ([], 0)
        probes = None
        after = scrape(metrics_url(port)) if port else ""
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
    clicks_applied = (metric_value(after, "recall_clicks_total")
                      - metric_value(before, "recall_clicks_total")) if after else None
    out = {
        "items": args.items, "users": args.users, "k": args.k,
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
        "e2e_p50_ms": _ms(_pct(lat, 50)), "e2e_p95_ms": _ms(_pct(lat, 95)),
        "e2e_p99_ms": _ms(_pct(lat, 99)),
        "e2e_max_ms": _ms(float(lat.max()) if len(lat) else None),
        "clicks_sent": clicks["sent"],
        "click_rate_achieved": round(clicks["sent"] / max(1e-9, clicks["last"] - clicks["first"]),
                                     1) if clicks["sent"] else 0.0,
        "clicks_applied": clicks_applied,
        "worker_request_p50_ms": _ms(worker_req["p50"]),
        "worker_request_p95_ms": _ms(worker_req["p95"]),
        "worker_request_p99_ms": _ms(worker_req["p99"]),
        "worker_e2e_p50_ms": _ms(worker_e2e["p50"]),
        "worker_e2e_p95_ms": _ms(worker_e2e["p95"]),
        "worker_e2e_p99_ms": _ms(worker_e2e["p99"]),
        "candidates_mean": None if cand["mean"] is None else round(cand["mean"], 1),
        "freshness_probes": args.freshness, "freshness_done": len(fresh) + missed,
        "freshness_missed": missed,
        "freshness_p50_ms": _ms(_pct(fresh, 50)), "freshness_p99_ms": _ms(_pct(fresh, 99)),
        "freshness_max_ms": _ms(max(fresh) if fresh else None),
    }
    out["_latencies"] = lat
    out["_fresh"] = fresh
    return out


def plot(path: str, lat_s: Any, fresh_s: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lat = np.sort(np.asarray(lat_s) * 1000)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    if len(lat):
        hi = max(1.0, float(np.percentile(lat, 99.9)))
        ax1.hist(np.minimum(lat, hi), bins=100, color="tab:blue")
        ax1.set_yscale("log")
        ax2.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label="request -> response")
        for q, style in ((50, ":"), (99, "--")):
            ax2.axvline(np.percentile(lat, q), color="tab:blue", linestyle=style,
                        label=f"p{q} {np.percentile(lat, q):.1f} ms")
    if fresh_s:
        fr = np.sort(np.asarray(fresh_s) * 1000)
        ax2.plot(fr, np.arange(1, len(fr) + 1) / len(fr), color="tab:orange",
                 label="click -> reflecting response")
    ax1.set_xlabel("end-to-end latency, ms (clipped at p99.9)")
    ax1.set_ylabel("requests")
    ax2.set_xscale("log")
    ax2.set_xlabel("ms")
    ax2.set_ylabel("fraction")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def _bench(settings: Any, args: argparse.Namespace, run: str, port: int | None,
                 rss: RssWatch, external: bool) -> dict[str, Any]:
    if external:
        # the running worker rebuilds when it sees the new live version
        await load_catalogue(settings, args, keep_old=True)
        if port:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if metric_value(scrape(metrics_url(port)), "recall_index_items") >= args.items:
                    break
                await asyncio.sleep(0.5)
    took = await wait_ready(settings, 600)
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
    print(f"measuring {args.seconds:g}s: {args.rate:g} requests/s, {args.click_rate:g} "
          f"clicks/s, {args.freshness} freshness probes", flush=True)
    out = await measure(settings, args, run, port, rss)
    if out["lost"] and not external:
        out["lost_trace"] = await trace_lost(settings, run, out["lost_seqs"])
        print(f"lost requests {out['lost_seqs']}: {out['lost_trace']}", flush=True)
    out["broker_rtt_p50_ms"] = _ms(rtt["p50"]) if rtt else None
    out["broker_rtt_p99_ms"] = _ms(rtt["p99"]) if rtt else None
    return out


def run_bench(args: argparse.Namespace) -> int:
    from recall.cli import CommandError, settings_from_env
    from recall.localstack import LocalStackError, worker_stack

    settings = settings_from_env()
    if (args.items < 100 or args.users < 1 or args.rate <= 0 or args.click_rate < 0
            or args.seconds <= 0 or not 1 <= args.k <= 1000 or args.freshness < 0):
        raise CommandError("--items must be >= 100, --users >= 1, --rate > 0, "
                           "--click-rate >= 0, --seconds > 0, --k in 1..1000, "
                           "--freshness >= 0")
    args.users = min(args.users, args.items)
    _sigterm_as_interrupt()
    run = f"b{os.getpid()}x{int(time.time()) % 100000}"
    t_begin = time.monotonic()
    try:
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
        else:
            # the catalogue goes into Redis before the worker starts, so it loads it
            workdir = Path(tempfile.mkdtemp(prefix="recall-bench-"))

            def load(s: Any) -> None:
                print(f"local stack: Kafka (Tansu) {s.kafka_bootstrap}, Redis "
                      f"{s.redis_url}", flush=True)
                asyncio.run(load_catalogue(s, args, keep_old=False))

            with worker_stack(settings, workdir=workdir, before_worker=load,
                              worker_timeout=120, kafka_session_timeout=3.0) as (
                    settings, _, worker):
                print(f"worker pid {worker.proc.pid}, log {worker.log_path}, metrics "
                      f":{settings.metrics_port}", flush=True)
                rss = RssWatch(worker.proc.pid)
                port = settings.metrics_port
                out = asyncio.run(_bench(settings, args, run, port, rss, external=False))
                if worker.proc.poll() is not None:
                    print(f"warning: the worker exited with {worker.proc.returncode}",
                          flush=True)
    except LocalStackError as exc:
        raise CommandError(str(exc)) from None
    lat, fresh = out.pop("_latencies"), out.pop("_fresh")
    out["worker_rss_peak_mb"] = round(rss.peak() / 2**20, 1) if rss.pid else None
    out["worker_rss_max_sampled_mb"] = (round(rss.max_sampled / 2**20, 1) if rss.pid
                                        else None)
    out["external"] = bool(args.external)
    out["wall_seconds"] = round(time.monotonic() - t_begin, 1)
    _summary(out)
    if args.plot:
        plot(args.plot, lat, fresh,
             f"recall bench e2e: {args.items} items, {args.rate:g} req/s, "
             f"{args.click_rate:g} clicks/s")
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


def _summary(o: dict[str, Any]) -> None:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}"

    print(f"\nend to end (client, request produced -> response consumed), {o['responses']} "
          f"responses: p50 {f(o['e2e_p50_ms'])} ms, p95 {f(o['e2e_p95_ms'])} ms, "
          f"p99 {f(o['e2e_p99_ms'])} ms, max {f(o['e2e_max_ms'])} ms", flush=True)
    print(f"throughput {o['throughput']}/s (offered {o['offered_rate']}/s); lost {o['lost']}, "
          f"errors {o['errors']}, timeouts (> {TIMEOUT:g}s) {o['timeouts']}, send errors "
          f"{o['send_errors']}; sources {o['sources']}", flush=True)
    print(f"worker: request p50 {f(o['worker_request_p50_ms'])} / p99 "
          f"{f(o['worker_request_p99_ms'])} ms; kafka-timestamp-to-sent p50 "
          f"{f(o['worker_e2e_p50_ms'])} / p99 {f(o['worker_e2e_p99_ms'])} ms; candidates "
          f"mean {o['candidates_mean']}; clicks sent {o['clicks_sent']} "
          f"({o['click_rate_achieved']}/s), applied {o['clicks_applied']}", flush=True)
    print(f"freshness (click produced -> reflecting response), {o['freshness_probes']} probes: "
          f"p50 {f(o['freshness_p50_ms'])} ms, p99 {f(o['freshness_p99_ms'])} ms, done "
          f"{o['freshness_done']}, missed {o['freshness_missed']}; worker RSS peak "
          f"{o['worker_rss_peak_mb']} MB", flush=True)
