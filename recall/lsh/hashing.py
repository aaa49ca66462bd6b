"""The seeded hash functions of an :class:`~recall.lsh.params.LSHParams` and the
query-directed multi-probe keys (Lv et al. 2007).

- Families: ``pstable`` (Datar et al.): ``h(v) = floor((x·v + b) / w)``, ``x ~ N(0, I)``,
  ``b ~ U[0, w)``; ``simhash``: ``h(v) = [x·v > 0]``. ``k`` functions per table are
  joined with AND (the k-tuple folded into one int64 with random odd multipliers and a
  per-table salt), ``L`` tables with OR.
- Everything is drawn from ``params.seed`` (numpy ``Generator(PCG64(seed))``), so the
  same parameters give the same bucket keys in every process (the offline loader, every
  worker). Projections are computed in float64, so keys do not depend on how many
  vectors are hashed at once.
- Multi-probe: per table the home bucket and the ``T - 1`` neighbouring buckets whose
  perturbation sets have the smallest sum of squared distances to the boundaries
  (p-stable) or of squared margins ``|x·q|`` (SimHash). Perturbation sets come from a
  template over sorted positions, scored per query and chosen for all tables and all
  queries of a batch at once in numpy.

Hashing is written once in numpy (:meth:`Hasher._codes`, :meth:`Hasher._fold`): probe
keys of queries go through it, and it is the reference of the compiled passes that hash
items (:meth:`Hasher.keys`, :func:`recall.buildkernels.fold_keys`) and queries
(:func:`recall.kernels.probe_keys`), which do the same float64 arithmetic.
"""

from __future__ import annotations

import heapq
from contextlib import AbstractContextManager
from statistics import NormalDist

import numpy as np
from threadpoolctl import ThreadpoolController

from recall.buildkernels import fold_keys
from recall.lsh.params import LSHParams

_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max
#: rows hashed per block (bounds the float64 projection buffer)
_HASH_BLOCK = 32768
#: rows from which :meth:`Hasher.keys` holds BLAS to one thread (smaller products run on
#: one thread anyway)
_ONE_THREAD_ROWS = 64
_blas: list[ThreadpoolController] = []  # made on first use (scanning the libraries: ~0.3 ms)


def _one_blas_thread() -> AbstractContextManager[object]:
    """A context holding BLAS (OpenBLAS) to one thread. Item blocks are products of
    ~2k x 64 by 64 x 160: a pool thread's hand-off and spinning cost more CPU than it
    saves (about twice the CPU of a bulk build's hashing), the keys are the same.
    Process-wide while held (BLAS has one setting)."""
    if not _blas:
        _blas.append(ThreadpoolController())
    return _blas[0].limit(limits=1, user_api="blas")


def _perturbation_template(family: str, k: int, size: int) -> np.ndarray:
    """The ``size`` most likely perturbation sets over sorted positions, best first.

    p-stable: positions 0..2k-1 index the 2k boundary distances of a query sorted
    ascending; position j and 2k-1-j belong to the same hash function (their distances
    sum to w), so a valid set never holds both. Sets are ordered by the expected score
    of Lv et al. (E[z_j^2]) with the shift/expand heap. SimHash: positions 0..k-1 are
    the k margins sorted ascending, ordered by expected squared half-normal order
    statistics. Returns an int array (size', maxlen) padded with the position count.
    """
    if family == "pstable":
        npos = 2 * k
        expected = []
        for i in range(1, npos + 1):
            if i <= k:
                expected.append(i * (i + 1) / ((k + 1) * (k + 2)))
            else:
                j = 2 * k + 1 - i
                expected.append(1 - 2 * j / (k + 1) + j * (j + 1) / ((k + 1) * (k + 2)))
    else:
        npos = k
        nd = NormalDist()
        expected = [nd.inv_cdf(0.5 + 0.5 * (i / (k + 1))) ** 2 for i in range(1, k + 1)]

    def valid(s: tuple[int, ...]) -> bool:
        if family != "pstable":
            return True
        members = set(s)
        return all((npos - 1 - j) not in members for j in s)

    out: list[tuple[int, ...]] = []
    heap: list[tuple[float, tuple[int, ...]]] = [(expected[0], (0,))]
    seen: set[tuple[int, ...]] = set()
    while heap and len(out) < size:
        score, s = heapq.heappop(heap)
        if s in seen:
            continue
        seen.add(s)
        if valid(s):
            out.append(s)
        last = s[-1]
        if last + 1 < npos:
            shifted = (*s[:-1], last + 1)
            expanded = (*s, last + 1)
            heapq.heappush(heap, (score - expected[last] + expected[last + 1], shifted))
            heapq.heappush(heap, (score + expected[last + 1], expanded))
    maxlen = max((len(s) for s in out), default=1)
    table = np.full((max(len(out), 1), maxlen), npos, dtype=np.intp)
    for row, s in enumerate(out):
        table[row, : len(s)] = s
    return table[: len(out)]


class Hasher:
    """The L x k hash functions of an LSHParams, deterministic from the params alone.

    The probes per table are an argument of :meth:`probe_keys` (default ``params.T``),
    so an index can change them at run time without new hash functions.
    """

    def __init__(self, params: LSHParams) -> None:
        self.params = params
        p = params
        rng = np.random.Generator(np.random.PCG64(p.seed))
        self.proj = rng.standard_normal((p.dim, p.L * p.k))  # float64
        self.offset = rng.uniform(0.0, 1.0, p.L * p.k) * p.w
        self.w_array = np.array([p.w], dtype=np.float64)  # for the compiled search
        self.mult = rng.integers(_INT64_MIN, _INT64_MAX, size=(p.L, p.k), dtype=np.int64) | 1
        self.salt = rng.integers(_INT64_MIN, _INT64_MAX, size=p.L, dtype=np.int64)
        self._npos = 2 * p.k if p.family == "pstable" else p.k
        self._rows3 = np.arange(p.L)[:, None, None]
        self._step = np.concatenate([-self.mult, self.mult], axis=1)
        self._templates: dict[int, np.ndarray] = {}  # probes per table -> template

    def template(self, probes: int) -> np.ndarray:
        """The perturbation-set pool for ``probes`` per table: twice the sets needed, so
        query scores can reorder it (cached; read-only, so searches may share it)."""
        table = self._templates.get(probes)
        if table is None:
            n_sets = probes - 1
            table = (_perturbation_template(self.params.family, self.params.k,
                                            max(2 * n_sets, n_sets + 8))
                     if n_sets > 0 else np.zeros((0, 1), dtype=np.intp))
            self._templates[probes] = table
        return table

    def probes_per_table(self, probes: int) -> int:
        """Probes actually read per table: at most 1 + the valid perturbation sets."""
        return 1 + min(probes - 1, len(self.template(probes)))

    def _codes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer codes (n, L*k) and the float64 value behind them, for unit rows x."""
        p = self.params
        t = x.astype(np.float64, copy=False) @ self.proj
        if p.family == "pstable":
            t += self.offset
            t /= p.w
            codes = np.floor(t)
        else:
            codes = (t > 0).astype(np.float64)
        return codes.astype(np.int64), t

    def _fold(self, codes: np.ndarray) -> np.ndarray:
        """(n, L) bucket keys of (n, L*k) codes."""
        p = self.params
        c = codes.reshape(-1, p.L, p.k)
        with np.errstate(over="ignore"):
            return np.einsum("nlk,lk->nl", c, self.mult) + self.salt

    def _rows(self, vectors: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(vectors)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.params.dim:
            raise ValueError(
                f"expected {what} of shape (n, {self.params.dim}), got {np.shape(vectors)}")
        return x

    def keys(self, vectors: np.ndarray) -> np.ndarray:
        """One bucket key per table: (n, L) int64 for (n, D) normalised vectors."""
        x = self._rows(vectors, "vectors")
        if x.shape[0] >= _ONE_THREAD_ROWS:
            with _one_blas_thread():
                return self._keys(x)
        return self._keys(x)

    def _keys(self, x: np.ndarray) -> np.ndarray:
        """The product in numpy (BLAS), then codes and folds in one compiled pass
        (:func:`recall.buildkernels.fold_keys`; ``_fold(_codes(x)[0])`` is the numpy
        reference of the same arithmetic)."""
        p = self.params
        out = np.empty((x.shape[0], p.L), dtype=np.int64)
        for start in range(0, x.shape[0], _HASH_BLOCK):
            t = x[start : start + _HASH_BLOCK].astype(np.float64, copy=False) @ self.proj
            fold_keys(t, self.offset, float(p.w), p.family == "pstable", self.mult, self.salt,
                      out[start : start + len(t)])
        return out

    def probe_keys(self, queries: np.ndarray, probes: int | None = None) -> np.ndarray:
        """(n, L, T') probe keys of n normalised queries (a 1-D query is n = 1), the home
        bucket first in each table, the perturbed probes in no particular order (all are
        read anyway). T' = :meth:`probes_per_table` of ``probes`` (default params.T).
        One set of numpy calls for the whole batch."""
        p = self.params
        x = self._rows(queries, "queries")
        n = x.shape[0]
        probes = p.T if probes is None else probes
        tmpl = self.template(probes)
        n_sets = min(probes - 1, len(tmpl))
        codes, t = self._codes(x)  # (n, L*k) each
        home = self._fold(codes)  # (n, L)
        if n_sets == 0:
            return home[:, :, None]
        codes3 = codes.reshape(n, p.L, p.k)
        npos = self._npos
        if p.family == "pstable":
            frac = (t - codes).reshape(n, p.L, p.k)
            dist = np.concatenate([frac, 1.0 - frac], axis=2)  # (n, L, 2k): -1, then +1 moves
            step = np.broadcast_to(self._step, dist.shape)
        else:
            dist = np.abs(t).reshape(n, p.L, p.k)
            step = np.where(codes3 == 1, -self.mult, self.mult)
        order = np.argsort(dist, axis=2)
        d2 = np.zeros((n, p.L, npos + 1))  # last column 0: the template's padding
        contrib = np.zeros((n, p.L, npos + 1), dtype=np.int64)
        d2[:, :, :npos] = np.take_along_axis(dist, order, axis=2) ** 2
        contrib[:, :, :npos] = np.take_along_axis(step, order, axis=2)
        if len(tmpl) > n_sets:
            scores = d2[:, :, tmpl].sum(axis=3)  # (n, L, S)
            best = np.argpartition(scores, n_sets - 1, axis=2)[:, :, :n_sets]
            sets = tmpl[best]  # (n, L, n_sets, maxlen)
        else:
            sets = np.broadcast_to(tmpl, (n, p.L, *tmpl.shape))
        rows_n = np.arange(n)[:, None, None, None]
        out = np.empty((n, p.L, 1 + n_sets), dtype=np.int64)
        out[:, :, 0] = home
        with np.errstate(over="ignore"):
            np.add(home[:, :, None], contrib[rows_n, self._rows3[None], sets].sum(axis=3),
                   out=out[:, :, 1:])
        return out
