"""``recall bench clicks``: the worker's CPU per click, in one process, without Kafka.

The click path as the worker runs it: ``parse_click`` of each record's JSON, then
:meth:`stream.service.RecallService.apply` (dedupe, window update, sums, each changed
user's state encoded, one ``write_clicks``) on batches of ``--batch`` clicks, against a
lookup of ``--items`` item vectors (the index's own compiled id table,
:class:`recall.lsh.ids.IdStore`) and a real redis-server (started here) unless
``--no-redis`` (then a store that keeps nothing). ``--users`` users start with full
windows of ``--window`` clicks (``--fill`` clicks each to start shorter), decoded from
their stored form as a worker would read them. Prints CPU microseconds per click of
this process (Redis runs in its own), split into parse / apply / encode, the bytes of
memory per window click the users' states hold (tracemalloc, over the first
:data:`MEMORY_USERS`), how long a full collection of Python's cyclic GC takes with those
users held (the pause it gives the worker's event loop: the GC runs in whichever thread
allocates, and a full one walks every tracked object and what it references), peak RSS,
and one JSON line.
"""

from __future__ import annotations

import argparse
from typing import Any

from devtools.procinfo import loadavg, peak_rss_mb

#: users whose states' memory is measured (tracemalloc slows and swells what it traces)
MEMORY_USERS = 2000


def add_parser(sub: Any, bench_sub: Any) -> None:
    p = bench_sub.add_parser("clicks", help="the click path in-process: CPU us per click, "
                                            "memory per window click")
    p.add_argument("--items", type=int, default=1_000_000, help="catalogue size")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--users", type=int, default=50_000, help="users (default 50000)")
    p.add_argument("--window", type=int, default=50, help="clicks kept per user")
    p.add_argument("--fill", type=int, default=None,
                   help="clicks each user starts with (default: --window, full)")
    p.add_argument("--interests", type=int, default=1, help="RECALL_INTERESTS")
    p.add_argument("--half-life", type=float, default=0.0, help="decay half-life, seconds")
    p.add_argument("--batch", type=int, default=500, help="clicks per fetch (default 500)")
    p.add_argument("--clicks", type=int, default=50_000, help="clicks timed")
    p.add_argument("--no-redis", action="store_true", help="a store that keeps nothing")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


class _Lookup:
    """An index's ``vectors_of`` over the compiled id table, without the LSH tables."""

    def __init__(self, n: int, dim: int, seed: int) -> None:
        import numpy as np

        from recall.lsh.ids import IdStore

        rng = np.random.default_rng(seed)
        self.ids = IdStore()
        self.ids.reserve(n)
        self.ids.add([f"i{j}" for j in range(n)])
        v = rng.standard_normal((n, dim), dtype=np.float32)
        self.vecs = v / np.linalg.norm(v, axis=1, keepdims=True)
        self.dim = dim

    def vectors_of(self, ids: Any) -> Any:
        import numpy as np

        slots = self.ids.slots(list(ids))
        present = slots >= 0
        out = np.zeros((len(slots), self.dim), dtype=np.float32)
        out[present] = self.vecs[slots[present]]
        return out, present


class _NullStore:
    async def get_users(self, uids: Any) -> dict:
        return dict.fromkeys(uids)

    async def get_users_and_events(self, uids: Any, event_ids: Any) -> tuple[dict, set]:
        return dict.fromkeys(uids), set()

    async def click_offsets(self, partitions: Any) -> dict:
        return {}

    async def write_clicks(self, users: Any, popular: Any, event_ids: Any, event_ttl: int,
                           offsets: Any) -> bool:
        return True

    async def top_popular(self, k: int) -> list:
        return []


def run(args: argparse.Namespace) -> int:
    from devtools.errors import DevtoolsError

    if min(args.items, args.dim, args.users, args.window, args.batch, args.clicks,
           args.interests) < 1 or args.half_life < 0:
        raise DevtoolsError("--items, --dim, --users, --window, --batch, --clicks and "
                            "--interests must be >= 1, --half-life >= 0")
    if args.no_redis:
        import asyncio

        return asyncio.run(_bench(args, None))
    from devtools.localstack import start_redis

    server = start_redis(appendonly=False)
    try:
        import asyncio

        return asyncio.run(_bench(args, f"redis://127.0.0.1:{server.port}/0"))
    finally:
        server.stop()


def _stored_window(rng: Any, u: int, n: int, n_items: int, t0: float, dim: int) -> bytes:
    """A user's window as a format-1 state (zero sums: recomputed after reading), which
    every version reads."""
    import struct

    import orjson

    items = rng.integers(0, n_items, size=n).tolist()
    rows = [[f"i{it}", t0 + j * 7.0, 1.0, f"w{u}.{j}", True] for j, it in enumerate(items)]
    return struct.pack("<BIIdd", 1, dim, 0, 0.0, 0.0) + bytes(8 * dim) + orjson.dumps(rows)


async def _bench(args: argparse.Namespace, url: str | None) -> int:
    import gc
    import json
    import time
    import tracemalloc

    import numpy as np
    import orjson

    from recall.config import Settings
    from recall.messages import parse_click
    from recall.store import Store
    from recall.userbatch import recompute_many
    from recall.userstate import UserState
    from stream.service import ClickAt, RecallService
    from stream.state import IndexSlot

    t_start = time.perf_counter()
    load0 = loadavg()
    lookup = _Lookup(args.items, args.dim, args.seed)
    print(f"lookup of {args.items} items ready in {time.perf_counter() - t_start:.1f}s")
    store: Any = _NullStore() if url is None else Store.from_url(url)
    write_cpu = [0.0]  # CPU of this process in write_clicks (packing, sending, the reply)
    write = store.write_clicks

    async def timed_write(*a: Any) -> bool:
        c = time.process_time()
        try:
            return await write(*a)
        finally:
            write_cpu[0] += time.process_time() - c

    store.write_clicks = timed_write
    settings = Settings(dim=args.dim, user_window=args.window,
                        user_decay_half_life=args.half_life, user_interests=args.interests,
                        user_cache_users=0)
    svc = RecallService(settings, store, IndexSlot(lookup, 1),  # type: ignore[arg-type]
                        explicit=frozenset())
    policy = svc.policy
    rng = np.random.default_rng(args.seed)
    fill = args.window if args.fill is None else args.fill
    t0 = 1.7e9
    # the users' states, read as a worker reads them (memory measured by tracemalloc)
    # (tracemalloc, which costs ~100 B per object, over the first MEMORY_USERS only)
    sample = min(args.users, MEMORY_USERS)
    raws = [_stored_window(rng, u, fill, args.items, t0, args.dim) for u in range(sample)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    states = [UserState.from_bytes(r, args.dim) for r in raws]
    recompute_many(policy, states, lookup.vectors_of)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    for start in range(sample, args.users, 10_000):
        part = [UserState.from_bytes(_stored_window(rng, u, fill, args.items, t0, args.dim),
                                     args.dim)
                for u in range(start, min(args.users, start + 10_000))]
        recompute_many(policy, part, lookup.vectors_of)
        states += part
    del raws
    for u, st in enumerate(states):
        svc.users.put(f"u{u}", st, 0)
    del states
    per_click_mem = held / max(1, sample * fill)
    print(f"{args.users} users x {fill} clicks; {sample} states held "
          f"{held / 2**20:.1f} MiB: {per_click_mem:.0f} B per window click")
    # the timed clicks, as the producer sends them (JSON), ts after every stored one
    users = rng.integers(0, args.users, size=args.clicks).tolist()
    items = rng.integers(0, args.items, size=args.clicks).tolist()
    t1 = t0 + fill * 7.0
    values = [orjson.dumps({"user_id": f"u{u}", "item_id": f"i{it}", "ts": t1 + j * 0.01,
                            "event_id": f"e{j}"})
              for j, (u, it) in enumerate(zip(users, items, strict=True))]
    # warm up (numba kernels, first encodes) on clicks not timed
    svc.applied[0] = 0
    parse_s = apply_s = 0.0
    offset = 0
    gc.collect()
    for start in range(0, args.clicks, args.batch):
        chunk = values[start:start + args.batch]
        c0 = time.process_time()
        clicks = [ClickAt(0, offset + j, parse_click(v, 0.0)) for j, v in enumerate(chunk)]
        c1 = time.process_time()
        offset += len(chunk)
        await svc.apply(clicks, {0: offset})
        c2 = time.process_time()
        if start:  # the first batch compiles/loads kernels
            parse_s += c1 - c0
            apply_s += c2 - c1
        else:
            write_cpu[0] = 0.0
    timed = args.clicks - min(args.batch, args.clicks)
    # the encode part alone: each user state of a batch's size encoded again
    sample = list(svc.users.entries.values())[-args.batch:]
    c0 = time.process_time()
    reps = 20
    for _ in range(reps):
        for st in sample:
            st.to_bytes()
    encode_us = (time.process_time() - c0) / (reps * len(sample)) * 1e6
    size = float(np.mean([len(st.to_bytes()) for st in sample]))
    del sample
    full_gc_ms = _full_collection_ms()
    us = (parse_s + apply_s) / max(1, timed) * 1e6
    out = {
        "items": args.items, "users": args.users, "window": args.window, "fill": fill,
        "interests": args.interests, "half_life": args.half_life, "batch": args.batch,
        "clicks_timed": timed, "redis": url is not None,
        "cpu_us_per_click": round(us, 2),
        "parse_us_per_click": round(parse_s / max(1, timed) * 1e6, 2),
        "apply_write_us_per_click": round(apply_s / max(1, timed) * 1e6, 2),
        "write_us_per_click": round(write_cpu[0] / max(1, timed) * 1e6, 2),
        "encode_us_per_user": round(encode_us, 2),
        "state_bytes_mean": round(size, 1),
        "state_memory_bytes_per_click": round(per_click_mem, 1),
        "full_gc_ms": round(full_gc_ms, 1), "gc_tracked_objects": len(gc.get_objects()),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "load_before": load0, "load_after": loadavg(),
    }
    print(f"CPU per click {us:.2f} us (parse {out['parse_us_per_click']}, apply+encode+"
          f"write {out['apply_write_us_per_click']}, of which write "
          f"{out['write_us_per_click']}); encode {encode_us:.2f} us per user "
          f"state of {size:.0f} B; a full GC collection {full_gc_ms:.1f} ms over "
          f"{out['gc_tracked_objects']} tracked objects; peak RSS {out['peak_rss_mb']} MiB; load "
          f"{load0} -> {out['load_after']}")
    print(json.dumps(out))
    return 0


def _full_collection_ms(repeats: int = 5) -> float:
    """Median wall time of a full ``gc.collect()`` (the users' states held, nothing left
    to free after the first)."""
    import gc
    import statistics
    import time

    gc.collect()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)
