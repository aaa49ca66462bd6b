"""The compiled kernels against the numpy reference, row by row."""

from __future__ import annotations

import numpy as np
import pytest

from recall import kernels
from recall.lsh import Hasher, LSHParams, normalize


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return normalize(rng.standard_normal((n, dim)))


def compiled_probes(h: Hasher, q: np.ndarray) -> np.ndarray:
    p = h.params
    return kernels.probe_keys(q, h.proj, h.offset, float(p.w), p.family == "pstable", h.mult,
                              h.salt, h.template(p.T), h.probes_per_table(p.T) - 1)


@pytest.mark.parametrize("family,k,T", [("pstable", 5, 6), ("simhash", 5, 6), ("pstable", 5, 1),
                                        ("simhash", 3, 8), ("pstable", 10, 5),
                                        ("pstable", 2, 40)])
def test_probe_keys_equal_the_numpy_hashers(family, k, T):
    """Same home bucket first and the same set of perturbed probes per table, including
    T=1 (home only), T above the number of valid perturbation sets, and key overflow."""
    h = Hasher(LSHParams(dim=16, family=family, k=k, L=4, T=T, w=0.8, seed=3))
    q = unit(np.random.default_rng(3), 40, 16)
    got = compiled_probes(h, q)
    ref = h.probe_keys(q)
    assert got.shape == ref.shape and got.dtype == np.int64
    assert (got[:, :, 0] == ref[:, :, 0]).all()
    assert (np.sort(got, axis=2) == np.sort(ref, axis=2)).all()
    for i in range(len(q)):
        assert (np.sort(got[i], axis=1) == np.sort(h.probe_keys(q[i])[0], axis=1)).all()
