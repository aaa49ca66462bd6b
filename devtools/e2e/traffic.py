"""The e2e benchmark's load: requests and clicks at steady rates from child processes
(open loop: a slow worker does not slow the offered load), and the warm-up clicks."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from devtools.e2e.catalogue import item_of, user_cluster
from devtools.scrape import metric_value, metrics_url, scrape

#: clicks per warm user before the measured phase
WARM_CLICKS = 3
#: seconds between two sends of the click generator (each one produce request per
#: partition: fewer, bigger requests cost the shared broker less than 100 a second)
CLICK_TICK = 0.02


def producer(bootstrap: str, linger_ms: int) -> Any:
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, acks=1,
                            max_batch_size=1 << 20)


async def _paced(rate: float, seconds: float, start_at: float, tick: float,
                 emit: Any, every_tick: bool = False) -> tuple[int, float, float, float]:
    """Call ``emit(n)`` so that ``rate`` per second are emitted on schedule from the wall
    time ``start_at`` for ``seconds``; returns (emitted, first, last emit time, this
    process's CPU seconds meanwhile). Each one is emitted when due (``tick``: the longest
    sleep), or with ``every_tick`` all that are due once per ``tick``: without it, at
    5,000 clicks/s the next click is due 0.2 ms later, so clicks left one to a few per
    produce request, whatever the tick."""
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    cpu0 = time.process_time()
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
        if every_tick:
            await asyncio.sleep(max(0.0, now + tick - time.time()))
        else:
            next_at = t0 + sent / rate
            await asyncio.sleep(max(0.0, min(tick, next_at - time.time())))
    return sent, first, last, time.process_time() - cpu0


def request_process(bootstrap: str, topic: str, run: str, rate: float, seconds: float,
                    users: int, k: int, seed: int, start_at: float, counter: Any,
                    out: Any) -> None:
    """Child process: recall requests at ``rate`` (ids ``{run}.{seq}.{send time in us}``)."""
    import random

    rng = random.Random(seed)
    # the users' keys and JSON made once: the request's own JSON is then one format
    # (this process shares its core with the broker and Redis under --pin-worker)
    keys = [f"u{u}".encode() for u in range(users)]
    run_b = run.encode()

    async def main() -> dict[str, Any]:
        prod = producer(bootstrap, 0)
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
                u = rng.randrange(users)
                value = b'{"request_id":"%s.%d.%d","user_id":"u%d","k":%d}' % (
                    run_b, seq, time.time_ns() // 1000, u, k)
                fut = await prod.send(topic, value, key=keys[u])
                fut.add_done_callback(done)
                seq += 1
            counter.value = seq

        try:
            sent, first, last, cpu = await _paced(rate, seconds, start_at, 0.002, emit)
            await prod.flush()
        finally:
            await prod.stop()
        return {"sent": sent, "first": first, "last": last, "send_errors": errors,
                "cpu_seconds": cpu}

    out.put(asyncio.run(main()))


def click_heads(total: int, users: int, n_items: int, seed: int,
                partitions: list[int]) -> list[tuple[int, bytes, bytes]]:
    """The ``total`` clicks of the measured phase, made before it starts: (partition,
    key, the JSON value up to its ``ts``). Built during the phase, the ids, items and
    JSON of each click cost this process (which shares its core with the broker and Redis
    under --pin-worker) more than handing the records to the producer."""
    import random

    from aiokafka.partitioner import DefaultPartitioner

    rng = random.Random(seed + 1)
    part = DefaultPartitioner()
    partition_of: dict[int, tuple[int, bytes]] = {}
    out = []
    for _ in range(total):
        u = rng.randrange(users)
        pk = partition_of.get(u)
        if pk is None:
            key = f"u{u}".encode()
            # the partition send(key=) would pick (the default partitioner's)
            pk = partition_of[u] = (part(key, partitions, partitions), key)
        item = item_of(user_cluster(u, n_items, seed), rng.randrange(1 << 30), n_items)
        out.append((pk[0], pk[1], b'{"user_id":"u%d","item_id":"%s","ts":' % (
            u, item.encode())))
    return out


def click_value(head: bytes, ts: bytes, event_prefix: bytes, seq: int) -> bytes:
    """A click's JSON from :func:`click_heads`' head: its time and event id appended."""
    return b'%s%s,"event_id":"%s%d"}' % (head, ts, event_prefix, seq)


def click_process(bootstrap: str, topic: str, run: str, rate: float, seconds: float,
                  users: int, n_items: int, seed: int, start_at: float, counter: Any,
                  out: Any) -> None:
    """Child process: clicks of warm users on items of their cluster, at ``rate``, sent
    every CLICK_TICK as one batch per partition (clicks carry no latency figure; the
    worker's fetches batch them anyway)."""

    async def main() -> dict[str, Any]:
        prod = producer(bootstrap, 2)  # the load generator may batch; the worker may not
        await prod.start()
        partitions = sorted(await prod.partitions_for(topic))
        heads = click_heads(int(rate * seconds), users, n_items, seed, partitions)
        event_prefix = f"{run}c".encode()
        seq = 0
        futures: list[asyncio.Future] = []

        async def emit(n: int) -> None:
            nonlocal seq
            ts = repr(time.time()).encode()
            batches: dict[int, Any] = {}
            for p, key, head in heads[seq:seq + n]:
                value = click_value(head, ts, event_prefix, seq)
                batch = batches.get(p)
                if batch is None:
                    batch = batches[p] = prod.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    futures.append(await prod.send_batch(batch, topic, partition=p))
                    batch = batches[p] = prod.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
                seq += 1
            for p, batch in batches.items():
                futures.append(await prod.send_batch(batch, topic, partition=p))
            counter.value = seq
            if len(futures) > 2_000:
                await asyncio.gather(*futures, return_exceptions=True)
                futures.clear()

        try:
            sent, first, last, cpu = await _paced(rate, seconds, start_at, CLICK_TICK, emit,
                                                    every_tick=True)
            await asyncio.gather(*futures, return_exceptions=True)
        finally:
            await prod.stop()
        return {"sent": sent, "first": first, "last": last, "cpu_seconds": cpu}

    out.put(asyncio.run(main()))


def add_warm_clicks_argument(p: argparse.ArgumentParser) -> None:
    """``--warm-clicks``, as ``bench e2e`` and ``bench capacity`` take it."""
    p.add_argument("--warm-clicks", type=int, default=None, metavar="N",
                   help=f"clicks per warm user before the measured phase (default "
                        f"{WARM_CLICKS}); the user window's size (RECALL_USER_WINDOW, 50) "
                        "fills every window, as a long-running worker holds them (memory, "
                        f"GC pauses); clicks beyond {WARM_CLICKS} repeat the first "
                        f"{WARM_CLICKS} items")


def warm_clicks(args: argparse.Namespace) -> int:
    """Clicks per warm user: ``--warm-clicks``, else WARM_CLICKS."""
    n = getattr(args, "warm_clicks", None)
    return WARM_CLICKS if n is None else n


async def warm_users(settings: Any, args: argparse.Namespace, run: str, port: int | None,
                     ) -> int:
    """``--warm-clicks`` (default WARM_CLICKS) clicks per warm user through ``clicks``, a
    second apart; waits until applied. With the user window's size (50 by default) every
    window is full, as a long-running worker holds them: the users' memory and the work
    of the GC's full collections are then those of such a worker. Clicks beyond the
    first WARM_CLICKS repeat those items, so a user's vector and clicked items stay the
    same whatever the count: a cluster of the catalogue holds 50 items, and 50 distinct
    clicks left a user nothing near to be recalled (tried: the recall monitor went to
    T=32 and the sampled recall was 0.30)."""
    import orjson

    per_user = warm_clicks(args)

    prod = producer(settings.kafka_bootstrap, 5)
    await prod.start()
    before = metric_value(scrape(metrics_url(port)), "recall_clicks_total") if port else 0.0
    n = 0
    try:
        futures = []
        ts = time.time() - 60 - per_user
        for u in range(args.users):
            uid = f"u{u}"
            cl = user_cluster(u, args.items, args.seed)
            for j in range(per_user):
                futures.append(await prod.send(settings.topic_clicks, orjson.dumps(
                    {"user_id": uid,
                     "item_id": item_of(cl, u * 31 + j % WARM_CLICKS * 7, args.items),
                     "ts": ts + j, "event_id": f"{run}w{n}"}), key=uid.encode()))
                n += 1
            if len(futures) >= 10_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await prod.stop()
    if port:
        deadline = time.monotonic() + max(120.0, n / 2000)  # (1M: ~70 s at 1M items)
        while time.monotonic() < deadline:
            applied = metric_value(scrape(metrics_url(port)), "recall_clicks_total") - before
            if applied >= n:
                break
            await asyncio.sleep(0.2)
        else:
            print(f"warning: only {applied:.0f} of {n} warm-up clicks applied", flush=True)
    return n
