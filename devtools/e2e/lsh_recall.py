"""The offline figure the worker's live recall estimate is compared with, for the e2e
benchmark's own catalogue and warm users.

``python -m devtools.e2e.lsh_recall --items 1000000 --users 20000 --probes 5`` builds the
benchmark's catalogue (:mod:`devtools.e2e.catalogue`, same seed) and an LSH index with the
parameters the benchmark loads (``suggested_params``) at ``--probes`` T, takes the warm
users' vectors (the mean of their WARM_CLICKS clicks), and measures what a worker answers
them: recall@k of the LSH top k + clicks with the clicked items left out, against exact
search with them left out. Prints the mean with a 95% interval and one JSON line. Run the
benchmark with ``--click-rate 0`` (and the default ``--warm-clicks``) so the users' vectors
stay those of their warm clicks.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from devtools.e2e.catalogue import catalogue, item_of, user_cluster
from devtools.e2e.traffic import WARM_CLICKS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.e2e.lsh_recall",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--sample", type=int, default=2000, help="warm users measured")
    p.add_argument("--probes", type=int, required=True, help="T the worker served")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="the benchmark's --seed")
    p.add_argument("--lsh-seed", type=int, default=42)
    args = p.parse_args(argv)

    from dataclasses import replace

    from recall.lsh import LSHIndex, normalize
    from recall.monitor import RecallWindow, query_recall
    from recall.tuner import suggested_params

    t0 = time.perf_counter()
    ids, vectors = catalogue(args.items, args.dim, args.seed)
    params = replace(suggested_params(args.items, args.dim, args.lsh_seed), T=args.probes)
    index = LSHIndex(params)
    index.add(ids, vectors)
    print(f"{args.items} items, {params.describe()}: built in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    rng = np.random.default_rng(1)
    users = rng.choice(args.users, size=min(args.sample, args.users), replace=False)
    window = RecallWindow(len(users) + 1)
    row = {i: n for n, i in enumerate(ids)}
    for u in users.tolist():
        cl = user_cluster(u, args.items, args.seed)
        clicked = [item_of(cl, u * 31 + j * 7, args.items) for j in range(WARM_CLICKS)]
        q = normalize(vectors[[row[c] for c in clicked]].mean(axis=0))
        seen = set(clicked)
        found = [i for i in index.search(q, args.k + len(seen))[0].ids if i not in seen][:args.k]
        truth = index.search(q, args.k, [seen], exact=True)[0].ids
        r = query_recall(found, truth)
        if r is not None:
            window.add(r)
    est = window.estimate()
    assert est is not None
    print(f"offline recall@{args.k} of {est.n} warm users at T={args.probes}: {est.mean:.4f} "
          f"(95% CI {est.low:.4f}-{est.high:.4f})", flush=True)
    print(json.dumps({"items": args.items, "params": params.to_dict(), "users": est.n,
                      "recall": round(est.mean, 4), "low": round(est.low, 4),
                      "high": round(est.high, 4)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
