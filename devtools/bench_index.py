"""``recall bench index``: the LSH index against exact numpy and hnswlib, in one run.

Builds a clustered synthetic catalogue (offline.synthetic: a Gaussian mixture with skewed
cluster sizes, unit float32 vectors) and user-like queries (means of a few near items),
computes the exact top-k, then measures, one query at a time:

- exact numpy (one matrix-vector product over the catalogue + argpartition);
- the LSH index with the layout the product picks by itself for this catalogue
  (:func:`recall.tuner.tune`, as ``recall tune`` runs it: its grid walked on a sample,
  the best shapes judged on every item, on queries it makes itself, never the bench's;
  ``--no-tune``: the default layout only): bulk build as the worker loads a catalogue
  (reserve, stage, build), then the held-back items inserted one by one and in
  micro-batches (as the worker does on ``items`` messages), recall@k against exact,
  latency, candidates, memory;
- the default layout (:func:`recall.tuner.suggested_params`, what a worker serves before
  any tuning) on the same queries;
- hnswlib (if importable) at the ``ef`` reaching each LSH layout's recall, as the
  reference; the ratio of p50s with a 95% interval (queries resampled in pairs).

Why the tuned layout is the headline (``lsh_*``) and not the default: it is what the
product serves by itself (``recall tune`` writes it, and a worker whose recall holds moves
to such a layout on its own: stream/watch.py); the default row stays beside it, because a
worker serves the default until then. Tuning costs ~2 minutes at 1M.

Prints a table and ends with exactly one JSON line of all figures. ``--plot PATH``
writes recall vs latency over a sweep of probes per table T, with exact and an hnswlib
``ef`` sweep as references.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from devtools.procinfo import loadavg, peak_rss_mb, rss_mb

DEFAULT_PROBES = "1,2,4,8,16,32"


def add_parser(sub: Any, bench_sub: Any) -> None:
    p = bench_sub.add_parser(
        "index", help="LSH index vs exact numpy vs hnswlib: recall, latency, inserts, memory",
        description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000, help="catalogue size N (default 100000)")
    p.add_argument("--dim", type=int, default=64, help="dimension D (default 64)")
    p.add_argument("--queries", type=int, default=1000, help="user-like queries (default 1000)")
    p.add_argument("--k", type=int, default=10, help="top-k for recall@k (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of catalogue and queries")
    p.add_argument("--clusters", type=int, default=0,
                   help="clusters of the catalogue (default ~sqrt(N))")
    p.add_argument("--intrinsic-dim", type=int, default=8,
                   help="dimensions of each cluster's spread (default 8; D = isotropic, hardest)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--tune", action="store_true",
                       help="the tuner's layout as the headline (the default; kept so older "
                            "commands run)")
    group.add_argument("--no-tune", action="store_true",
                       help="the default layout only, no tuning (faster)")
    group.add_argument("--params", default="",
                       help="LSH parameters: a JSON object or a JSON file (LSHParams fields)")
    p.add_argument("--tune-items", type=int, default=200_000,
                   help="sample size for --tune (default 200000)")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="recall@k the tuner aims at (default 0.95)")
    p.add_argument("--inserts", type=int, default=-1,
                   help="items held back from the bulk build and inserted incrementally: "
                        "half one per add() call, half in --insert-batch micro-batches "
                        "(default min(N/10, 100000): enough to include a merge)")
    p.add_argument("--insert-batch", type=int, default=100,
                   help="items per add() call in the micro-batch phase, as the worker "
                        "applies a batch of item messages (default 100)")
    p.add_argument("--plot", default="", metavar="PATH", help="write a recall-vs-latency PNG")
    p.add_argument("--probes", default=DEFAULT_PROBES,
                   help=f"probes per table T swept for --plot (default {DEFAULT_PROBES})")
    p.add_argument("--no-hnsw", action="store_true", help="skip the hnswlib reference")
    p.set_defaults(func=run)


def _load_params(text: str, dim: int) -> Any:
    from devtools.errors import DevtoolsError
    from recall.lsh import LSHParams

    try:
        raw = json.loads(text) if text.lstrip().startswith("{") else json.loads(
            Path(text).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DevtoolsError(f"--params: not a JSON object or a readable JSON file: {exc}") from None
    if isinstance(raw, dict) and "params" in raw and isinstance(raw["params"], dict):
        raw = raw["params"]  # a tuner result file
    try:
        params = LSHParams.from_dict({"dim": dim, **raw} if isinstance(raw, dict) else raw)
    except ValueError as exc:
        raise DevtoolsError(f"--params: {exc}") from None
    if params.dim != dim:
        raise DevtoolsError(f"--params: dim {params.dim} does not match --dim {dim}")
    return params


def _parse_probes(text: str) -> list[int]:
    from devtools.errors import DevtoolsError

    try:
        probes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise DevtoolsError(f"--probes must be comma-separated integers, got {text!r}") from None
    if not probes or probes[0] < 1:
        raise DevtoolsError("--probes must list integers >= 1")
    return probes


def run(args: argparse.Namespace) -> int:
    from devtools.errors import DevtoolsError

    if args.items < 2 or args.dim < 1 or args.queries < 1 or args.k < 1:
        raise DevtoolsError("--items must be >= 2, --dim, --queries and --k >= 1")
    if args.k > args.items:
        raise DevtoolsError(f"--k {args.k} is larger than --items {args.items}")
    if not 0 < args.target_recall <= 1:
        raise DevtoolsError("--target-recall must be in (0, 1]")
    if args.clusters < 0 or args.intrinsic_dim < 1:
        raise DevtoolsError("--clusters must be >= 0 and --intrinsic-dim >= 1")
    probes = _parse_probes(args.probes)
    params = _load_params(args.params, args.dim) if args.params else None
    inserts = min(args.items // 10, 100_000) if args.inserts < 0 else args.inserts
    if inserts >= args.items:
        raise DevtoolsError("--inserts must be smaller than --items")
    if args.insert_batch < 1:
        raise DevtoolsError("--insert-batch must be >= 1")
    return _bench(args, params, inserts, probes)


def _percentiles(seconds: Any) -> tuple[float, float]:
    import numpy as np

    ms = np.asarray(seconds) * 1e3
    return round(float(np.percentile(ms, 50)), 4), round(float(np.percentile(ms, 99)), 4)


def _exact_truth(x: Any, q: Any, k: int, progress: bool) -> Any:
    """(Q, k) exact top-k rows, blocked so the score matrix stays under ~64 MB."""
    import numpy as np
    from tqdm import tqdm

    block = max(1, min(256, (16 << 20) // len(x)))
    out = np.empty((len(q), k), dtype=np.int64)
    for start in tqdm(range(0, len(q), block), desc="exact top-k", unit="block",
                      disable=not progress):
        scores = q[start : start + block] @ x.T
        out[start : start + block] = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return out


def _recall(found: list[Any], truth: Any) -> tuple[float, list[float]]:
    """Recall@k and its 95% interval, the query as the unit (as the tuner and the worker's
    gauge report it)."""
    from recall.monitor import mean_interval
    from recall.tunejudge import query_hits

    hits = query_hits(found, truth)
    mean = sum(hits) / len(hits)
    est = mean_interval(hits)
    low, high = (est.low, est.high) if est is not None else (mean, mean)
    return mean, [round(low, 4), round(high, 4)]


def _ratio(a: Any, b: Any, rounds: int = 2000, seed: int = 0) -> tuple[float, list[float]]:
    """p50(a) / p50(b) of per-query latencies on the same queries, and a 95% bootstrap
    interval (queries resampled, each with both its times): how far the ratio may move
    with other queries. Not the run-to-run noise of a shared machine, which is larger."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(a), size=(rounds, len(a)))
    boot = np.median(a[pick], axis=1) / np.median(b[pick], axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return (round(float(np.median(a) / np.median(b)), 3),
            [round(float(low), 3), round(float(high), 3)])


def _time_lsh(index: Any, q: Any, truth: Any, k: int, desc: str,
              progress: bool) -> dict[str, Any]:
    import time

    import numpy as np
    from tqdm import tqdm

    lat, cpu, found, cands = [], [], [], []
    for qi in tqdm(q, desc=desc, unit="query", disable=not progress, leave=False):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        res = index.search(qi, k)[0]
        lat.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        found.append(np.fromiter(map(int, res.ids), dtype=np.int64, count=len(res.ids)))
        cands.append(res.candidates)
    p50, p99 = _percentiles(lat)
    recall, ci = _recall(found, truth)
    return {"recall": round(recall, 4), "recall_ci": ci,
            "ms_p50": p50, "ms_p99": p99, "ms_mean": round(1e3 * float(np.mean(lat)), 4),
            "cpu_ms_p50": _percentiles(cpu)[0],
            "candidates": round(float(np.mean(cands)), 1), "_lat": lat}


def _time_hnsw(index: Any, q: Any, truth: Any, k: int) -> dict[str, Any]:
    import time

    import numpy as np

    lat, found = [], []
    for qi in q:
        t0 = time.perf_counter()
        labels, _ = index.knn_query(qi, k=k, num_threads=1)
        lat.append(time.perf_counter() - t0)
        found.append(labels[0].astype(np.int64))
    p50, p99 = _percentiles(lat)
    return {"recall": round(_recall(found, truth)[0], 4), "ms_p50": p50, "ms_p99": p99,
            "_lat": lat}


HNSW_EFS = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
#: passes of each side in the alternated timing
ROUNDS = 5


def _alternated(index: Any, hnsw: Any, q: Any, truth: Any, k: int,
                rounds: int = ROUNDS) -> dict[str, Any]:
    """The LSH and hnswlib (at its current ``ef``) timed in alternating passes over the
    same queries, ``rounds`` each; per side the median of the passes' p50s, and the
    ratio's median and range over the rounds. Why: a pass is well under a second, and
    the machine drifts between passes a minute apart (in one quiet 1M run hnswlib at
    the same ``ef`` gave 0.072 ms p50 in one pass and 0.043 ms in the next), so one
    pass per side measures the drift as much as the two indexes. Whole passes, not query
    by query: each side keeps the cache state its own queries leave, as in service."""
    import numpy as np

    lsh_p50, hnsw_p50 = [], []
    for _ in range(rounds):
        lsh_p50.append(_time_lsh(index, q, truth, k, "", False)["ms_p50"])
        hnsw_p50.append(_time_hnsw(hnsw, q, truth, k)["ms_p50"])
    ratios = [a / b for a, b in zip(lsh_p50, hnsw_p50, strict=True)]
    return {"alternated_rounds": rounds,
            "alternated_lsh_ms_p50": round(float(np.median(lsh_p50)), 4),
            "alternated_hnsw_ms_p50": round(float(np.median(hnsw_p50)), 4),
            "alternated_ratio_p50": round(float(np.median(ratios)), 3),
            "alternated_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}


def _hnsw_at_recall(index: Any, q: Any, truth: Any, k: int, target: float,
                    sweep: bool = False) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """The smallest ``ef`` whose recall reaches ``target`` (the LSH's), timed on the very
    queries the LSH figure used (else the largest ``ef``), and the ``ef`` curve (whole, if
    ``sweep``). Every ``ef`` is tried on all the queries: one picked on a subset reached
    the LSH's recall there and fell short on the whole set (0.952 against 0.963 at 1M),
    so the reference was timed at a lower recall than the LSH it is compared with."""
    curve: list[dict[str, Any]] = []
    for ef in HNSW_EFS:
        if ef < k:
            continue
        index.set_ef(ef)
        point = _time_hnsw(index, q, truth, k)
        point.pop("_lat")
        curve.append({"ef": ef, **point})
        if curve[-1]["recall"] >= target and not sweep:
            break
    good = [pt for pt in curve if pt["recall"] >= target]
    ef = good[0]["ef"] if good else curve[-1]["ef"]
    index.set_ef(ef)
    return ef, _time_hnsw(index, q, truth, k), curve


def _bench(args: argparse.Namespace, params: Any, inserts: int, probes: list[int]) -> int:
    import time

    import numpy as np
    from tqdm import tqdm

    from offline.synthetic import clustered_catalogue, user_like_queries
    from recall.lsh import LSHIndex
    from recall.tuner import suggested_params, tune

    progress = sys.stderr.isatty() or args.items >= 100_000
    n, dim, k = args.items, args.dim, args.k
    res: dict[str, Any] = {"bench": "index", "items": n, "dim": dim, "queries": args.queries,
                           "k": k, "seed": args.seed, "cpus": os.cpu_count(),
                           "loadavg_start": loadavg()}

    t0 = time.perf_counter()
    x, labels = clustered_catalogue(n, dim, clusters=args.clusters or None,
                                    intrinsic=args.intrinsic_dim, seed=args.seed)
    q = user_like_queries(x, labels, args.queries, seed=args.seed + 1)
    res["clusters"] = int(labels.max()) + 1
    res["intrinsic_dim"] = min(args.intrinsic_dim, dim)
    print(f"catalogue: {n} x {dim} unit float32 in {res['clusters']} clusters "
          f"(skewed sizes, intrinsic dim {res['intrinsic_dim']}), {len(q)} user-like "
          f"queries ({time.perf_counter() - t0:.1f} s)", flush=True)
    truth = _exact_truth(x, q, k, progress)

    # --- exact numpy, one query at a time
    n_exact = min(len(q), 200)
    lat = []
    for qi in tqdm(q[:n_exact], desc="exact numpy", unit="query", disable=not progress,
                   leave=False):
        t1 = time.perf_counter()
        scores = x @ qi
        top = np.argpartition(-scores, k - 1)[:k]
        top[np.argsort(-scores[top])]
        lat.append(time.perf_counter() - t1)
    res["exact_ms_p50"], res["exact_ms_p99"] = _percentiles(lat)

    # --- parameters: the product's own pick (tuned on its sample and queries) and the
    # default; the default first, timed on a bulk-built index then freed
    default = suggested_params(n, dim)
    if params is None and not args.no_tune:
        sample = min(n, args.tune_items)
        print(f"tuning on {sample} items for recall@{k} >= {args.target_recall}"
              + (f", then judging the best layouts on all {n} ..." if sample < n else " ..."),
              flush=True)
        tuned = tune(x, None, args.target_recall, k, max_items=sample, seed=args.seed,
                     progress=progress)
        print(tuned.summary(), flush=True)
        params = tuned.params
        base = tuned.baseline
        res["tuned"] = {
            "sample_items": sample, "judged_items": tuned.judged_items,
            "recall": round(tuned.recall, 4),
            "recall_ci": [round(tuned.recall_low, 4), round(tuned.recall_high, 4)],
            "candidates": round(tuned.candidates, 1), "seconds": round(tuned.seconds, 1),
            "index_mib": round(tuned.nbytes / 2**20, 1),
            "budget_mib": round(tuned.max_index_bytes / 2**20, 1),
            "within_budget": tuned.within_budget,
            "default": None if base is None else base.as_dict(),
            # the settings tied in one pass, timed again side by side: what chose
            "finalists": [{"params": t.params.describe(), "one_pass_ms": round(t.query_ms, 4),
                           "passes_ms": [round(m, 4) for m in ms]}
                          for t, ms in zip(tuned.finalists, tuned.finalist_ms, strict=True)]}
    if params is None:
        params = default
    res["params"] = params.to_dict()
    ids = [str(i) for i in range(n)]
    default_lat = None
    if params != default:  # the simple strong baseline: the default layout, same queries
        base_index = LSHIndex(default)
        base_index.reserve(n)
        base_index.stage(ids, x)
        base_index.build()
        res["default_params"] = default.to_dict()
        res["default_index_nbytes"] = base_index.nbytes()
        timed = _time_lsh(base_index, q, truth, k, "default layout", progress)
        default_lat = timed.pop("_lat")
        res.update({f"default_{key}": value for key, value in timed.items()})
        del base_index

    # --- LSH: bulk build, then one-by-one inserts of the held-back items
    n_bulk = n - inserts
    rss0 = rss_mb()
    index = LSHIndex(params)
    t1 = time.perf_counter()
    # the worker's catalogue load: room for the whole catalogue reserved once (the held
    # back items fit in it), the bulk staged, then one pass builds the bucket table
    index.reserve(n)
    for start in range(0, n_bulk, 20_000):  # batches, as the worker reads them
        index.stage(ids[start:min(start + 20_000, n_bulk)], x[start:min(start + 20_000, n_bulk)])
    index.build()
    build_s = time.perf_counter() - t1
    res["build_seconds"] = round(build_s, 3)
    res["build_items_per_s"] = round(n_bulk / build_s, 1)
    res["inserts"] = inserts
    singles = inserts // 2
    batch = args.insert_batch
    phases = (("single", n_bulk, n_bulk + singles, 1),
              ("batch", n_bulk + singles, n, batch))
    for name, lo, hi, step in phases:
        lat = []
        merges = index.merges
        c1 = time.thread_time()
        t1 = time.perf_counter()
        for i in tqdm(range(lo, hi, step), desc=f"inserts ({step}/call)", unit="call",
                      disable=not progress, leave=False):
            t2 = time.perf_counter()
            index.add(ids[i : i + step], x[i : i + step])
            lat.append(time.perf_counter() - t2)
        spent = time.perf_counter() - t1
        cpu = time.thread_time() - c1
        res[f"insert_{name}_cpu_items_per_s"] = round((hi - lo) / cpu, 1) if lat else None
        p50, p99 = _percentiles(lat) if lat else (None, None)
        res[f"insert_{name}_items_per_s"] = round((hi - lo) / spent, 1) if lat else None
        res[f"insert_{name}_ms_p50"], res[f"insert_{name}_ms_p99"] = p50, p99
        res[f"insert_{name}_ms_max"] = round(1e3 * max(lat), 3) if lat else None
        res[f"insert_{name}_merges"] = index.merges - merges
    res["insert_batch"] = batch
    # the headline: items/s of incremental micro-batches, merges included (the worker's path)
    res["insert_items_per_s"] = res["insert_batch_items_per_s"]
    res["index_nbytes"] = index.nbytes()
    res["index_rss_mb"] = round(rss_mb() - rss0, 1)
    res["index_stats"] = index.stats()

    lsh = _time_lsh(index, q, truth, k, "LSH queries", progress)
    lsh_lat = lsh.pop("_lat")
    res.update({f"lsh_{key}": value for key, value in lsh.items()})
    res["speedup_p50"] = round(res["exact_ms_p50"] / max(lsh["ms_p50"], 1e-9), 1)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)

    # --- hnswlib reference at the LSH's recall
    hnsw_curve: list[dict[str, Any]] = []
    res.update({"hnsw_recall": None, "hnsw_ms_p50": None, "hnsw_ms_p99": None,
                "hnsw_ef": None, "hnsw_build_seconds": None, "hnsw_M": None})
    hnsw = None
    if not args.no_hnsw:
        try:
            import hnswlib
        except ImportError:
            print("hnswlib is not installed: no reference (pip install hnswlib)", flush=True)
        else:
            hnsw = hnswlib.Index(space="ip", dim=dim)
            hnsw.init_index(max_elements=n, M=16, ef_construction=100, random_seed=args.seed)
            t1 = time.perf_counter()
            step = 50_000
            for start in tqdm(range(0, n, step), desc="hnswlib build", unit="block",
                              disable=not progress, leave=False):
                end = min(n, start + step)
                hnsw.add_items(x[start:end], np.arange(start, end))
            res["hnsw_build_seconds"] = round(time.perf_counter() - t1, 2)
            res["hnsw_M"] = 16
            ef, ref, hnsw_curve = _hnsw_at_recall(hnsw, q, truth, k, lsh["recall"],
                                                  sweep=bool(args.plot))
            res.update({"hnsw_ef": ef, "hnsw_recall": ref["recall"],
                        "hnsw_ms_p50": ref["ms_p50"], "hnsw_ms_p99": ref["ms_p99"]})
            res["ratio_p50"], res["ratio_p50_ci"] = _ratio(lsh_lat, ref["_lat"])
            res.update(_alternated(index, hnsw, q, truth, k))
            if default_lat is not None:  # the reference again, at the default's recall
                ef, ref, _ = _hnsw_at_recall(hnsw, q, truth, k, res["default_recall"])
                res.update({"default_hnsw_ef": ef, "default_hnsw_recall": ref["recall"],
                            "default_hnsw_ms_p50": ref["ms_p50"]})
                res["default_ratio_p50"], res["default_ratio_p50_ci"] = _ratio(
                    default_lat, ref["_lat"])
            res["peak_rss_mb_with_hnsw"] = round(peak_rss_mb(), 1)

    # --- sweep of probes for the plot
    if args.plot:
        sub = min(len(q), 300)
        sweep = []
        for T in tqdm(probes, desc="probe sweep", unit="T", disable=not progress,
                      leave=False):
            index.probes = T
            point = _time_lsh(index, q[:sub], truth[:sub], k, f"T={T}", False)
            point.pop("_lat")
            sweep.append({"T": T, **point})
        index.probes = params.T
        res["sweep"] = sweep
        _plot(args.plot, res, sweep, hnsw_curve)
        res["plot"] = args.plot

    res["loadavg_end"] = loadavg()
    _print_table(res)
    print(json.dumps(res))
    return 0


def _print_table(res: dict[str, Any]) -> None:
    from recall.lsh import LSHParams

    p = LSHParams.from_dict(res["params"])
    rows = [("", f"recall@{res['k']}", "p50 ms", "p99 ms", "candidates")]
    rows.append(("exact numpy", "1.000", f"{res['exact_ms_p50']:.3f}",
                 f"{res['exact_ms_p99']:.3f}", str(res["items"])))
    rows.append((f"LSH ({p.describe()})", f"{res['lsh_recall']:.3f}",
                 f"{res['lsh_ms_p50']:.3f}", f"{res['lsh_ms_p99']:.3f}",
                 f"{res['lsh_candidates']:.0f}"))
    if "default_recall" in res:
        d = LSHParams.from_dict(res["default_params"])
        rows.append((f"default ({d.describe()})", f"{res['default_recall']:.3f}",
                     f"{res['default_ms_p50']:.3f}", f"{res['default_ms_p99']:.3f}",
                     f"{res['default_candidates']:.0f}"))
    if res["hnsw_recall"] is not None:
        rows.append((f"hnswlib (M=16, ef={res['hnsw_ef']})", f"{res['hnsw_recall']:.3f}",
                     f"{res['hnsw_ms_p50']:.3f}", f"{res['hnsw_ms_p99']:.3f}", "-"))
    if res.get("default_hnsw_ef") is not None and res["default_hnsw_ef"] != res["hnsw_ef"]:
        rows.append((f"hnswlib (M=16, ef={res['default_hnsw_ef']})",
                     f"{res['default_hnsw_recall']:.3f}", f"{res['default_hnsw_ms_p50']:.3f}",
                     "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                        for i, c in enumerate(r)))
    lo, hi = res["lsh_recall_ci"]
    if "default_recall_ci" in res:
        print("default layout: recall@{} 95% interval {:.3f}-{:.3f}".format(
            res["k"], *res["default_recall_ci"]))
    for name, what in (("", "LSH"), ("default_", "default layout")):
        if res.get(f"{name}ratio_p50") is not None:
            print("{} p50 / hnswlib p50 at matching recall (ef {}): {:.2f}x (95% interval "
                  "over queries {:.2f}-{:.2f})".format(
                      what, res[f"{name}hnsw_ef"], res[f"{name}ratio_p50"],
                      *res[f"{name}ratio_p50_ci"]))
    if res.get("alternated_ratio_p50") is not None:
        print("alternated, {} passes each: LSH p50 {:.3f} ms, hnswlib p50 {:.3f} ms (medians "
              "of the passes): {:.2f}x (rounds {:.2f}-{:.2f})".format(
                  res["alternated_rounds"], res["alternated_lsh_ms_p50"],
                  res["alternated_hnsw_ms_p50"], res["alternated_ratio_p50"],
                  *res["alternated_ratio_range"]))
    print(f"LSH: recall@{res['k']} 95% interval {lo:.3f}-{hi:.3f}; {res['speedup_p50']}x "
          f"faster than exact at p50 (LSH CPU time per query p50 "
          f"{res['lsh_cpu_ms_p50']} ms); bulk build "
          f"{res['build_seconds']} s ({res['build_items_per_s']:.0f} items/s)")
    for name, what in (("single", "1 item"), ("batch", f"{res['insert_batch']} items")):
        rate = res[f"insert_{name}_items_per_s"]
        if rate:
            print(f"incremental inserts, {what} per add(): {rate:.0f} items/s (per call p50 "
                  f"{res[f'insert_{name}_ms_p50']} ms, p99 {res[f'insert_{name}_ms_p99']} ms, "
                  f"max {res[f'insert_{name}_ms_max']} ms; "
                  f"{res[f'insert_{name}_merges']} merges; "
                  f"{res[f'insert_{name}_cpu_items_per_s']:.0f} items per CPU second)")
    if "default_index_nbytes" in res:
        print(f"default layout: index arrays {res['default_index_nbytes'] / 2**20:.0f} MiB")
    print(f"memory: index arrays {res['index_nbytes'] / 2**20:.0f} MiB, index RSS "
          f"+{res['index_rss_mb']:.0f} MiB, peak RSS {res['peak_rss_mb']:.0f} MiB "
          f"(catalogue and benchmark included)"
          + (f"; {res['peak_rss_mb_with_hnsw']:.0f} MiB with hnswlib"
             if "peak_rss_mb_with_hnsw" in res else ""))
    if res["hnsw_build_seconds"] is not None:
        print(f"hnswlib build {res['hnsw_build_seconds']} s")
    print(f"load average {res['loadavg_start']} -> {res['loadavg_end']} on {res['cpus']} CPUs "
          f"(wall-clock figures are noisy when other jobs share the machine)")


def _plot(path: str, res: dict[str, Any], sweep: list[dict[str, Any]],
          hnsw_curve: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([s["ms_p50"] for s in sweep], [s["recall"] for s in sweep], "o-",
            label=f"LSH, T = {', '.join(str(s['T']) for s in sweep)}")
    for s in sweep:
        ax.annotate(f"T={s['T']}", (s["ms_p50"], s["recall"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    if hnsw_curve:
        ax.plot([h["ms_p50"] for h in hnsw_curve], [h["recall"] for h in hnsw_curve], "s--",
                label="hnswlib M=16, ef sweep")
    ax.plot([res["exact_ms_p50"]], [1.0], "k*", markersize=12, label="exact numpy")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per single query (ms, log)")
    ax.set_ylabel(f"recall@{res['k']}")
    ax.set_title(f"{res['items']} x {res['dim']} clustered, {res['queries']} user-like queries")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

