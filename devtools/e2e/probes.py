"""The e2e benchmark's probes: click-to-recall freshness, the broker's own round trip,
and where lost requests went."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from devtools.e2e.catalogue import item_of, n_clusters
from devtools.e2e.report import pct
from devtools.e2e.responses import BenchResponses
from devtools.e2e.traffic import _paced, producer

#: a freshness probe gives up after this many seconds
PROBE_TIMEOUT = 5.0
#: how long to wait for outstanding responses after the last request
DRAIN = 10.0
#: scratch topic of the broker round-trip measurement (local stack only)
RTT_TOPIC = "recall-bench-rtt"
#: scratch topic of ``--broker-floor`` (a new one per run)
FLOOR_TOPIC = "recall-bench-floor"


async def freshness_probes(settings: Any, reader: BenchResponses, n: int, n_items: int, run: str,
                           seed: int, stop_at: float) -> tuple[list[float], int]:
    """Click-then-recall probes (see the module docstring); (freshness seconds, missed)."""
    import random

    import orjson

    rng = random.Random(seed + 2)
    c = n_clusters(n_items)
    prod = producer(settings.kafka_bootstrap, 0)
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


async def broker_round_trip(settings: Any, n: int = 300) -> dict[str, float]:
    """The broker's floor: plain aiokafka produce -> fetch of one small record, ``n`` times
    (one per 10 ms), with the worker's fetch wait. A recall crosses the broker twice."""
    from aiokafka import AIOKafkaConsumer

    from stream.kafka import create_topics

    await create_topics(settings.kafka_bootstrap, [RTT_TOPIC], 1)
    prod = producer(settings.kafka_bootstrap, 0)
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
    return {"p50": float(pct(lat, 50)), "p99": float(pct(lat, 99))}


def floor_topic(run: str) -> str:
    """The topic of a run's broker floor (new, so its partitions start empty)."""
    return f"{FLOOR_TOPIC}-{run}"


async def broker_floor(settings: Any, rate: float, seconds: float, run: str,
                       broker_pid: int | None = None) -> dict[str, Any]:
    """The broker alone under the phase's request traffic: ``rate`` single records a
    second (one produce request each, as the request load sends them) into a new topic
    with the requests topic's partitions, read back by one consumer with the worker's
    fetch wait, for ``seconds``. Nothing else is sent meanwhile (the worker is idle), so
    the produce -> fetch latency is the broker's floor for a request's way in; its first
    and last 2 s show whether it grows with the topic (Tansu's memory engine writes and
    reads in time that grows with the batches a topic holds: docs/design.md)."""
    import numpy as np
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from devtools.e2e.phase import _cpu_seconds
    from stream.kafka import create_topics

    topic = floor_topic(run)
    n_parts = settings.topic_partitions
    await create_topics(settings.kafka_bootstrap, [topic], n_parts)
    prod = producer(settings.kafka_bootstrap, 0)
    cons = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                            fetch_max_wait_ms=max(1, settings.fetch_max_wait_ms))
    await prod.start()
    await cons.start()
    seen: list[tuple[float, float]] = []  # (read at, latency)

    async def read() -> None:
        while True:
            got = await cons.getmany(timeout_ms=100)
            now = time.time()
            seen.extend((now, now - float(r.value)) for rs in got.values() for r in rs)

    try:
        tps = [TopicPartition(topic, p) for p in range(n_parts)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        reader = asyncio.create_task(read())
        cpu0 = _cpu_seconds(broker_pid) if broker_pid else None
        t0 = time.time()
        sent = 0

        async def emit(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                await prod.send(topic, repr(time.time()).encode(), key=str(sent).encode())
                sent += 1

        await _paced(rate, seconds, t0, 0.002, emit, every_tick=True)
        await prod.flush()
        wall = time.time() - t0
        cpu1 = _cpu_seconds(broker_pid) if broker_pid else None
        deadline = time.time() + DRAIN
        while len(seen) < sent and time.time() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    finally:
        await prod.stop()
        await cons.stop()
    lat = np.array([x for _, x in seen])
    first = np.array([x for at, x in seen if at < t0 + 2])
    last = np.array([x for at, x in seen if at >= t0 + wall - 2])
    return {"sent": sent, "read": len(seen), "p50": pct(lat, 50), "p99": pct(lat, 99),
            "first_p50": pct(first, 50), "last_p50": pct(last, 50),
            "broker_cpu": None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall}


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
