"""Synthetic clustered item vectors: the one generator of them (``recall gen``, the
benchmarks, the demo and the tests all draw from it).

A catalogue is a Gaussian mixture on the unit sphere: ``clusters`` random unit centres,
cluster sizes drawn from a Zipf-like law (a few huge clusters, a long tail of small
ones, like item categories), each item its centre plus Gaussian noise of a per-cluster
spread, then L2-normalised to float32. The noise lives mostly in a random subspace of
``intrinsic`` dimensions per cluster (plus a little isotropic noise): learned embeddings
have a low intrinsic dimension, and a fully isotropic 64-D cloud (``intrinsic=dim``) is
the worst case for any approximate index. Deterministic from the seed and generated in
blocks, so there is never a float64 copy of the whole catalogue.

:func:`user_like_queries` makes queries like a user's rolling embedding: the mean of a
few items near each other (picked among a seed item's nearest neighbours in its
cluster, so it stays cheap on millions of items).
"""

from __future__ import annotations

import numpy as np

_BLOCK = 65536


def cluster_sizes(n: int, clusters: int, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Sizes (summing to n) of `clusters` clusters, weight of rank r ~ 1 / r**skew."""
    weights = 1.0 / np.arange(1, clusters + 1, dtype=np.float64) ** skew
    weights /= weights.sum()
    return rng.multinomial(n, weights)


def _cluster_shapes(rng: np.random.Generator, clusters: int, dim: int,
                    spread: tuple[float, float], intrinsic: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster: a random unit centre, a noise scale in ``spread``, and a random
    (intrinsic x dim) basis with orthonormal rows."""
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = rng.uniform(spread[0], spread[1], size=clusters)
    bases = np.linalg.qr(rng.standard_normal((clusters, dim, intrinsic)))[0]
    return centres, scale, bases.transpose(0, 2, 1).astype(np.float32)  # (C, intrinsic, dim)


def _fill(rng: np.random.Generator, labels: np.ndarray,
          shapes: tuple[np.ndarray, np.ndarray, np.ndarray], isotropic: float) -> np.ndarray:
    """Each item its cluster's centre plus noise (in blocks: no float64 copy of all)."""
    centres, scale, bases = shapes
    dim, intrinsic = centres.shape[1], bases.shape[1]
    low = np.float32(np.sqrt(max(0.0, 1.0 - isotropic**2)) / np.sqrt(intrinsic))
    iso = np.float32(isotropic / np.sqrt(dim))
    out = np.empty((len(labels), dim), dtype=np.float32)
    for start in range(0, len(labels), _BLOCK):
        lab = labels[start : start + _BLOCK]
        z = rng.standard_normal((len(lab), intrinsic)).astype(np.float32) * low
        x = np.einsum("ni,nid->nd", z, bases[lab])
        x += rng.standard_normal((len(lab), dim)).astype(np.float32) * iso
        x *= scale[lab, None].astype(np.float32)
        x += centres[lab].astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + len(lab)] = x
    return out


def clustered_vectors(labels: np.ndarray, dim: int, *, spread: tuple[float, float] = (0.6, 1.2),
                      intrinsic: int = 8, isotropic: float = 0.15, seed: int = 0) -> np.ndarray:
    """(n, dim) unit float32 vectors of items whose clusters are given (``labels``, ints
    from 0); the noise model of :func:`clustered_catalogue`."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or dim < 1 or (len(labels) and labels.min() < 0):
        raise ValueError("labels must be a 1-D array of cluster numbers >= 0, dim >= 1")
    rng = np.random.default_rng(seed)
    clusters = int(labels.max()) + 1 if len(labels) else 1
    shapes = _cluster_shapes(rng, clusters, dim, spread, max(1, min(int(intrinsic), dim)))
    return _fill(rng, labels, shapes, isotropic)


def clustered_catalogue(
    n: int,
    dim: int,
    *,
    clusters: int | None = None,
    skew: float = 1.0,
    spread: tuple[float, float] = (0.6, 1.2),
    intrinsic: int = 8,
    isotropic: float = 0.15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit float32 vectors and the (n,) cluster label of each, shuffled.

    clusters: default ~ sqrt(n) (at least 1). spread: range of the per-cluster noise
    norm relative to the centre (noise ~ N(0, s^2/dim I), so s = 1 puts a typical item
    at cosine ~0.7 from its centre). intrinsic: dimensions of each cluster's noise
    subspace (clamped to dim); isotropic: share of the noise spread over all dims.
    """
    if n < 1 or dim < 1:
        raise ValueError(f"n and dim must be >= 1, got n={n}, dim={dim}")
    if clusters is None:
        clusters = max(1, round(float(np.sqrt(n))))
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    intrinsic = max(1, min(int(intrinsic), dim))
    rng = np.random.default_rng(seed)
    shapes = _cluster_shapes(rng, clusters, dim, spread, intrinsic)
    sizes = cluster_sizes(n, clusters, skew, rng)
    labels = np.repeat(np.arange(clusters, dtype=np.int32), sizes)
    rng.shuffle(labels)
    return _fill(rng, labels, shapes, isotropic), labels


def user_like_queries(
    vectors: np.ndarray,
    labels: np.ndarray,
    n: int,
    *,
    seed: int = 0,
    group: tuple[int, int] = (2, 8),
    neighbourhood: int = 32,
) -> np.ndarray:
    """(n, dim) unit float32 queries: each the mean of 2-8 items among the
    `neighbourhood` nearest items (within its cluster) of a random seed item."""
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(int(labels.max()) + 2))
    seeds = rng.integers(0, len(vectors), size=n)
    sizes = rng.integers(group[0], group[1] + 1, size=n)
    out = np.empty((n, vectors.shape[1]), dtype=np.float32)
    for i, s in enumerate(seeds.tolist()):
        c = int(labels[s])
        members = order[bounds[c] : bounds[c + 1]]
        m = min(neighbourhood, len(members))
        scores = vectors[members] @ vectors[s]
        near = members[np.argpartition(-scores, m - 1)[:m]]
        pick = rng.choice(near, size=min(int(sizes[i]), m), replace=False)
        out[i] = vectors[pick].mean(axis=0)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out
