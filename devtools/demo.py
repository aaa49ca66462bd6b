"""``recall demo``: the worker on a local broker and Redis, fed with synthetic traffic.

Starts Tansu, redis-server and ``recall worker`` (or, with ``--external``, uses the ones of
the environment, as the docker-compose demo profile does), publishes a synthetic catalogue
of clustered item vectors to ``items``, then streams clicks from a generated click log
and sends recall requests at steady rates. Every few seconds it prints one recall (the
user's recent clicks and what came back, with the latent interest cluster of each item, so
you can see that recalls follow clicks) and live latency figures, measured by the client
(request produced -> response consumed) and by the worker (its Prometheus histograms).
Ctrl-C stops it and everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from typing import Any

import numpy as np

from devtools.errors import DevtoolsError
from devtools.scrape import histogram_quantile, metric_value, scrape

log = logging.getLogger(__name__)

REPORT_EVERY = 3.0


def run_demo(args: argparse.Namespace) -> int:
    from devtools.localstack import worker_stack
    from recall.config import Settings

    settings = Settings.from_env()
    if args.items < 100 or args.users < 1 or args.rate <= 0 or args.click_rate <= 0:
        raise DevtoolsError("--items must be >= 100, --users >= 1, rates > 0")
    with worker_stack(settings, external=args.external, kafka_session_timeout=3.0) as (
            s, stack, worker):
        if stack is not None:
            print(f"local stack: Kafka (Tansu) {s.kafka_bootstrap}, Redis {s.redis_url}, "
                  f"worker pid {worker.proc.pid} (log {worker.log_path})", flush=True)
        args.metrics_url = args.metrics_url or f"http://127.0.0.1:{s.metrics_port}/metrics"
        print(f"worker metrics: {args.metrics_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_demo(args, s))
    print("stopped", flush=True)
    return 0


async def _demo(args: argparse.Namespace, settings: Any) -> None:
    from tqdm import tqdm

    from devtools.client import RecallClient
    from offline.generate import cluster_vectors, generate_clicks

    gen = generate_clicks(args.users, args.items, max(args.users * 20, 50_000), args.seed)
    vectors = cluster_vectors(gen.item_cluster, settings.dim, seed=args.seed)
    item_ids = gen.log.item_ids
    cluster_of = dict(zip(item_ids, gen.item_cluster.tolist(), strict=True))
    clicks = gen.log.take(np.argsort(gen.log.ts, kind="stable"))  # replay in time order

    client = RecallClient(settings)
    await client.start()
    try:
        print("waiting for the worker to answer...", flush=True)
        took = await client.wait_ready(90)
        print(f"worker ready ({took:.1f}s)", flush=True)
        batch = 2000
        with tqdm(total=len(item_ids), desc="publishing catalogue to 'items'",
                  unit="item") as bar:
            for start in range(0, len(item_ids), batch):
                await client.upsert_items(item_ids[start:start + batch],
                                          vectors[start:start + batch])
                bar.update(min(batch, len(item_ids) - start))
        await _traffic(args, settings, client, clicks, cluster_of)
    finally:
        await client.stop()


async def _traffic(args: argparse.Namespace, settings: Any, client: Any, clicks: Any,
                   cluster_of: dict[str, int]) -> None:
    """Clicks and requests at steady rates; a report every REPORT_EVERY seconds."""
    users, items = clicks.user_ids, clicks.item_ids
    recent: dict[str, deque[str]] = {}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    sources: dict[str, int] = {}
    pending: set[asyncio.Future] = set()
    rng = np.random.default_rng(args.seed)
    t_start = time.monotonic()
    next_report = t_start + REPORT_EVERY
    sent_clicks = sent_requests = 0
    cursor = 0
    sample: tuple[str, Any] | None = None
    tick = 0.01

    def done(fut: asyncio.Future) -> None:
        pending.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            statuses["timeout"] = statuses.get("timeout", 0) + 1
            return
        resp = fut.result()
        latencies.append(resp.latency)
        statuses[resp.value["status"]] = statuses.get(resp.value["status"], 0) + 1
        sources[resp.value.get("source", "")] = sources.get(resp.value.get("source", ""), 0) + 1

    while True:
        now = time.monotonic()
        elapsed = now - t_start
        if args.seconds and elapsed >= args.seconds:
            break
        # clicks due by now, in the log's time order (the log wraps around)
        due = int(elapsed * args.click_rate) - sent_clicks
        if due > 0:
            rows = np.arange(cursor, cursor + due) % len(clicks)
            cursor += due
            batch = []
            for row in rows.tolist():
                uid, iid = users[clicks.user[row]], items[clicks.item[row]]
                batch.append({"user_id": uid, "item_id": iid, "ts": time.time()})
                recent.setdefault(uid, deque(maxlen=settings.user_window)).append(iid)
            await client.clicks(batch)
            sent_clicks += due
        due = int(elapsed * args.rate) - sent_requests
        for _ in range(max(0, due)):
            active = list(recent)
            uid = active[int(rng.integers(len(active)))] if active else "nobody"
            rid = await client.send_request(uid, k=10)
            fut = asyncio.ensure_future(asyncio.wait_for(client.expect(rid), 10.0))
            fut.add_done_callback(done)
            pending.add(fut)
            if sample is None and uid in recent and len(recent[uid]) >= 3:
                sample = (uid, fut)
            sent_requests += 1
        if now >= next_report:
            next_report += REPORT_EVERY
            if sample is not None and sample[1].done() and not sample[1].exception():
                _print_sample(sample[0], recent[sample[0]], sample[1].result(), cluster_of)
                sample = None
            _print_figures(elapsed, sent_clicks, sent_requests, latencies, statuses, sources,
                           scrape(args.metrics_url))
            latencies.clear()
        await asyncio.sleep(tick)
    if pending:
        await asyncio.wait(pending, timeout=10)


def _print_sample(uid: str, recent: deque[str], resp: Any, cluster_of: dict[str, int]) -> None:
    last = list(recent)[-5:]
    clicked = ", ".join(f"{i}(c{cluster_of.get(i, '?')})" for i in last)
    got = ", ".join(f"{x['item_id']}(c{cluster_of.get(x['item_id'], '?')}) {x['score']:.2f}"
                    for x in resp.value["items"][:5])
    print(f"\nrecall for {uid}: last clicks {clicked}\n"
          f"  -> [{resp.value['source']}] {got}  ({1000 * resp.latency:.1f} ms)", flush=True)


def _print_figures(elapsed: float, clicks: int, requests: int, latencies: list[float],
                   statuses: dict[str, int], sources: dict[str, int], metrics: str) -> None:
    if latencies:
        lat = np.asarray(latencies) * 1000
        client = (f"client e2e p50 {np.percentile(lat, 50):.1f} ms, "
                  f"p99 {np.percentile(lat, 99):.1f} ms")
    else:
        client = "no responses yet"
    worker = ""
    if metrics:
        p50 = histogram_quantile(metrics, "recall_request_duration_seconds", 0.5)
        p99 = histogram_quantile(metrics, "recall_request_duration_seconds", 0.99)
        if p50 is not None and p99 is not None:
            worker = (f" | worker p50 {1000 * p50:.2f} ms, p99 {1000 * p99:.2f} ms, "
                      f"index {metric_value(metrics, 'recall_index_items'):.0f} items, "
                      f"dlq {metric_value(metrics, 'recall_invalid_messages_total'):.0f}")
    print(f"[{elapsed:5.0f}s] sent {clicks} clicks, {requests} requests; {client}; "
          f"status {statuses}; source {sources}{worker}", flush=True)
    sys.stdout.flush()
