"""The e2e benchmark's catalogue and who clicks what: item ``i{n}`` is in cluster
``n % C`` (C = items / 50) and warm user ``u{n}`` is interested in one cluster, so every
process of the benchmark computes the same traffic from the same seed."""

from __future__ import annotations

import argparse
import time
from typing import Any

#: items per cluster of the synthetic catalogue
CLUSTER_SIZE = 50


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


async def load_catalogue(settings: Any, args: argparse.Namespace, keep_old: bool) -> int:
    """The catalogue into Redis as a new live version; returns the version."""
    from offline.load import load_index
    from recall.store import Store
    from recall.tuner import suggested_params
    from stream.items import default_params

    t0 = time.perf_counter()
    ids, vectors = catalogue(args.items, settings.dim, args.seed)
    # the default layout for this catalogue's size (what a worker serves before any
    # tuning), unless RECALL_LSH_* ask for others
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
