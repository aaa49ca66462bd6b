"""The recall monitor's exact-search cost per sample, before and after batching.

``python -m devtools.bench_watch --items 1000000 --batch 32`` builds an index of random
unit vectors (the cost of exact search does not depend on where the vectors lie), then
times the monitor's truth for ``--rounds`` batches of ``--batch`` user-like queries, each
excluding a few items: one ``search(q, k, [ex], exact=True)`` per query (what the monitor
did), and one ``search(Q, ks, excludes, exact=True)`` per batch with one BLAS thread
(what it does now, in its thread). Prints ms per sample for both (wall and process
CPU), the rate that fits ``RECALL_RECALL_SAMPLE_CPU`` at the default 0.05 of a core,
peak RSS, the load average, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from threadpoolctl import threadpool_limits

from devtools.procinfo import loadavg, peak_rss_mb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.bench_watch",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="samples per exact search")
    p.add_argument("--rounds", type=int, default=3, help="batches timed")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--cpu", type=float, default=0.05, help="RECALL_RECALL_SAMPLE_CPU")
    args = p.parse_args(argv)

    from recall.lsh import LSHIndex
    from recall.tuner import suggested_params

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    index = LSHIndex(suggested_params(args.items, args.dim, 42), merge="deferred")
    index.reserve(args.items)
    ids = [f"i{i}" for i in range(args.items)]
    for lo in range(0, args.items, 100_000):
        hi = min(args.items, lo + 100_000)
        index.stage(ids[lo:hi], rng.standard_normal((hi - lo, args.dim), dtype=np.float32))
    index.build()
    print(f"{args.items} x {args.dim}: built in {time.perf_counter() - t0:.1f}s", flush=True)
    timings: dict[str, list[float]] = {"one_by_one": [], "batched": []}
    cpu: dict[str, list[float]] = {"one_by_one": [], "batched": []}
    for _ in range(args.rounds):
        pick = rng.choice(args.items, size=(args.batch, 5))
        q = index.vectors_of([ids[i] for i in pick[:, 0]])[0] + 0.3 * rng.standard_normal(
            (args.batch, args.dim), dtype=np.float32)
        excl = [{ids[i] for i in row} for row in pick]
        ks = [args.k + len(e) for e in excl]
        w0, c0 = time.perf_counter(), time.process_time()
        alone = [index.search(q[i], ks[i], [excl[i]], exact=True)[0].ids
                 for i in range(args.batch)]
        w1, c1 = time.perf_counter(), time.process_time()
        with threadpool_limits(1, user_api="blas"):  # as the monitor's thread does
            together = [r.ids for r in index.search(q, ks, excl, exact=True)]
        w2, c2 = time.perf_counter(), time.process_time()
        assert together == alone
        timings["one_by_one"].append((w1 - w0) / args.batch * 1e3)
        timings["batched"].append((w2 - w1) / args.batch * 1e3)
        cpu["one_by_one"].append((c1 - c0) / args.batch * 1e3)
        cpu["batched"].append((c2 - c1) / args.batch * 1e3)
    out: dict[str, object] = {"items": args.items, "dim": args.dim, "batch": args.batch,
                              "rounds": args.rounds}
    for how in timings:
        ms, cms = float(np.median(timings[how])), float(np.median(cpu[how]))
        rate = args.cpu / (ms / 1e3)
        out[f"{how}_ms_per_sample"] = round(ms, 2)
        out[f"{how}_cpu_ms_per_sample"] = round(cms, 2)
        out[f"{how}_samples_per_s_at_cpu"] = round(rate, 2)
        print(f"{how:>10}: {ms:.2f} ms a sample wall ({cms:.2f} ms process CPU); "
              f"{rate:.1f} samples/s fit {args.cpu:g} of a core", flush=True)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["loadavg"] = loadavg()
    print(f"peak RSS {out['peak_rss_mb']} MB; load average {out['loadavg']}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
