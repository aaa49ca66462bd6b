"""A re-pick's copy of the live version into a new one in Redis, alone: its time and the
deciding worker's peak memory while it runs.

``python -m devtools.bench_copy --items 1000000``: a redis-server of its own, ``recall
bench index``'s clustered catalogue (same seed) written as a version with pstable k=10
L=16 (what a streamed 1M catalogue is served with), the worker's malloc settings, the
process's peak RSS reset (``/proc/self/clear_refs``), then
:func:`stream.versions.copy_version` to simhash k=18 L=16 (a cost move seen live) with
``--batch`` items a round trip (default: the worker's ``COPY_BATCH``). Prints the time,
the peak over the RSS before the copy, and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

from devtools.procinfo import reset_peak_rss, status_mb


async def run(items: int, dim: int, batch: int, seed: int) -> dict[str, float]:
    from devtools.localstack import start_redis
    from offline.load import load_index
    from offline.synthetic import clustered_catalogue
    from recall.lsh import LSHParams
    from recall.store import Store
    from stream import versions
    from stream.items import release_free_heap

    work = Path(tempfile.mkdtemp(prefix="recall-copy-"))
    redis = start_redis(workdir=work, appendonly=False)
    store = Store.from_url(f"redis://127.0.0.1:{redis.port}/0")
    try:
        served = LSHParams(dim=dim, k=10, L=16, w=1.25, T=14)
        x, _ = clustered_catalogue(items, dim, seed=seed)
        version, _ = await load_index(store, [f"i{i}" for i in range(items)], x, served,
                                      batch=20_000, progress=False)
        del x
        gc.collect()
        release_free_heap()
        before = status_mb("VmRSS")
        reset = reset_peak_rss()
        versions.COPY_BATCH = batch
        t0 = time.perf_counter()
        await versions.copy_version(store, version,
                                    LSHParams(family="simhash", dim=dim, k=18, L=16, T=4),
                                    dim, {})
        wall = time.perf_counter() - t0
        peak = status_mb("VmHWM")
    finally:
        await store.r.aclose()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"wall_s": round(wall, 2), "rss_before_mb": round(before, 1),
            "peak_over_before_mb": round(peak - before, 1), "peak_reset": reset}


def main(argv: list[str] | None = None) -> int:
    from devtools.procinfo import loadavg
    from stream.versions import COPY_BATCH
    from stream.worker import _return_big_frees

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=COPY_BATCH, help="items a round trip")
    p.add_argument("--seed", type=int, default=0, help="the catalogue's (bench index's)")
    args = p.parse_args(argv)
    _return_big_frees()
    load_start = loadavg()
    out = asyncio.run(run(args.items, args.dim, args.batch, args.seed))
    print(f"copy of {args.items} items, {args.batch} a round trip: {out['wall_s']} s; RSS "
          f"{out['rss_before_mb']} MB before, peak +{out['peak_over_before_mb']} MB", flush=True)
    print(json.dumps({"bench": "copy", "items": args.items, "dim": args.dim,
                      "batch": args.batch, **out, "loadavg_start": load_start,
                      "loadavg_end": loadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
