"""``recall bench store``: write and read rates of the Redis layout, and its memory per item.

Writes N random unit vectors with their real LSH bucket keys into a fresh version
(batched ``upsert_items``, as the loader does), then single-item upserts (as the worker
does), then reads everything back with ``iter_items`` (a worker's rebuild), and reads
Redis ``used_memory`` to extrapolate the memory of 1M items. Starts its own
redis-server (via devtools.localstack) unless ``--redis-url`` is given. Prints figures
and ends with one JSON line.
"""

from __future__ import annotations

import argparse
from typing import Any

from devtools.procinfo import loadavg, peak_rss_mb


def add_parser(sub: Any, bench_sub: Any) -> None:
    p = bench_sub.add_parser("store", help="Redis store: upsert/rebuild rates, memory per item")
    p.add_argument("--items", type=int, default=100_000, help="items written (default 100000)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--tables", type=int, default=16, help="LSH tables L (default 16)")
    p.add_argument("--hashes", type=int, default=8, help="hash functions per table k")
    p.add_argument("--width", type=float, default=1.0, help="p-stable bucket width w")
    p.add_argument("--batch", type=int, default=1000, help="items per upsert_items call")
    p.add_argument("--singles", type=int, default=1000, help="single-item upserts timed")
    p.add_argument("--redis-url", default="", help="use this Redis (default: start one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from devtools.errors import DevtoolsError

    if args.items < 1 or args.dim < 1 or args.tables < 1 or args.batch < 1:
        raise DevtoolsError("--items, --dim, --tables and --batch must be >= 1")
    if args.redis_url:
        return asyncio.run(_bench(args, args.redis_url))
    from devtools.localstack import start_redis

    server = start_redis(appendonly=True)
    try:
        return asyncio.run(_bench(args, f"redis://127.0.0.1:{server.port}/0"))
    finally:
        server.stop()


async def _bench(args: argparse.Namespace, url: str) -> int:
    import json
    import time
    import uuid

    import numpy as np
    from tqdm import tqdm

    from recall.lsh import Hasher, LSHParams
    from recall.store import Store

    n, dim = args.items, args.dim
    params = LSHParams(dim=dim, k=args.hashes, L=args.tables, w=args.width)
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"item-{i:08d}" for i in range(n)]
    t0 = time.perf_counter()
    keys = Hasher(params).keys(vecs)
    hash_s = time.perf_counter() - t0
    buckets = sum(len(np.unique(keys[:, t])) for t in range(args.tables))

    store = Store.from_url(url, f"bench-{uuid.uuid4().hex[:8]}")
    try:
        mem0 = await store.used_memory()
        v = await store.create_version(params.to_dict(), dim)
        t0 = time.perf_counter()
        for start in tqdm(range(0, n, args.batch), desc="upsert", unit="batch"):
            end = min(n, start + args.batch)
            await store.upsert_items(v, ids[start:end], vecs[start:end], keys[start:end])
        write_s = time.perf_counter() - t0
        mem1 = await store.used_memory()
        vec_mem = await store.used_memory(store.keys.vectors(v))

        singles = min(args.singles, n)
        lat = []
        for i in range(singles):  # re-upsert with moved buckets, as the worker does
            s = time.perf_counter()
            await store.upsert_items(v, [ids[i]], vecs[i:i + 1], keys[(i + 1) % n:(i + 1) % n + 1])
            lat.append(time.perf_counter() - s)

        t0 = time.perf_counter()
        read = 0
        with tqdm(total=n, desc="rebuild", unit="item") as bar:
            async for got_ids, _mat in store.iter_items(v, 2000, dim=dim):
                read += len(got_ids)
                bar.update(len(got_ids))
        read_s = time.perf_counter() - t0
        removed = await store.delete_version(v, batch=5000)
    finally:
        await store.close()

    per_item = (mem1 - mem0) / n
    lat_ms = np.array(lat) * 1e3
    result = {
        "bench": "store", "items": n, "dim": dim, "L": args.tables, "k": args.hashes,
        "w": args.width, "batch": args.batch,
        "hash_seconds": round(hash_s, 3),
        "upsert_items_per_s": round(n / write_s, 1),
        "upsert_seconds": round(write_s, 3),
        "single_upsert_ms_p50": round(float(np.percentile(lat_ms, 50)), 3) if lat else None,
        "single_upsert_ms_p99": round(float(np.percentile(lat_ms, 99)), 3) if lat else None,
        "rebuild_items_per_s": round(read / read_s, 1),
        "items_read": read,
        "buckets": buckets,
        "items_per_bucket": round(n * args.tables / buckets, 2),
        "used_memory_bytes_per_item": round(per_item, 1),
        "vectors_hash_bytes_per_item": round(vec_mem / n, 1),
        "used_memory_per_1M_items_mb": round(per_item * 1e6 / 2**20, 1),
        "keys_removed": removed,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "loadavg": loadavg(),
    }
    print(f"hash {n} x {dim} into L={args.tables} tables: {hash_s:.2f} s "
          f"({buckets} buckets, {result['items_per_bucket']} items per bucket)")
    print(f"upsert_items ({args.batch}/call): {result['upsert_items_per_s']:.0f} items/s "
          f"({write_s:.2f} s)")
    if lat:
        print(f"single-item upsert (moving buckets): p50 {result['single_upsert_ms_p50']} ms, "
              f"p99 {result['single_upsert_ms_p99']} ms")
    print(f"rebuild (iter_items): {result['rebuild_items_per_s']:.0f} items/s")
    print(f"Redis used_memory: {per_item:.0f} B/item (vectors hash {vec_mem / n:.0f} B/item) "
          f"-> {result['used_memory_per_1M_items_mb']} MiB per 1M items")
    print(f"peak RSS of this process {result['peak_rss_mb']} MiB; load average "
          f"{result['loadavg']}")
    print(json.dumps(result))
    return 0

