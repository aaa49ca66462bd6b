"""Seeded LSH hasher and incremental in-memory index with multi-probe and exact re-rank.

Role: the hot index of the online worker and the shared hashing of the offline loader.

- :class:`LSHParams` says everything about the hash functions; :class:`Hasher` is built
  from it alone (numpy ``Generator(PCG64(seed))``), so the same parameters give the same
  bucket keys in every process. Projections are computed in float64, so keys do not
  depend on how many vectors are hashed at once.
- Families: ``pstable`` (Datar et al.): ``h(v) = floor((x·v + b) / w)``, ``x ~ N(0, I)``,
  ``b ~ U[0, w)``; ``simhash``: ``h(v) = [x·v > 0]``. ``k`` functions per table are
  joined with AND (the k-tuple folded into one int64 with random odd multipliers and a
  per-table salt), ``L`` tables with OR.
- Multi-probe (Lv et al. 2007, query-directed): per table the home bucket and the
  ``T - 1`` neighbouring buckets whose perturbation sets have the smallest sum of squared
  distances to the boundaries (p-stable) or of squared margins ``|x·q|`` (SimHash).
  Perturbation sets come from a template over sorted positions, scored per query and
  chosen for all tables at once in numpy.
- :class:`LSHIndex` keeps normalised float32 vectors in slots of a growable matrix, an
  id -> slot dict, a free-list, and one sorted (key, slot) array over all tables (keys
  are salted per table, so one ``searchsorted`` serves every probe). Small upserts go to a
  pending dict (key -> slots) merged into the sorted arrays in amortised batches; updated
  or removed slots are masked out of the sorted arrays until the next merge. A query
  gathers the probed buckets (at most ``cap`` items each), dedupes, re-ranks the
  candidates by exact cosine (one matrix-vector product) and returns the top k.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from statistics import NormalDist
from typing import Any

import numpy as np

FAMILIES = ("pstable", "simhash")
_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max
#: rows hashed per block (bounds the float64 projection buffer)
_HASH_BLOCK = 32768
#: rows whose norm is this close to 1 are taken as already normalised (keeps normalize
#: idempotent, so hashing a re-normalised vector gives the same keys)
_UNIT_TOL = 1e-5


@dataclass(frozen=True)
class LSHParams:
    """Parameters of the hash functions and of the probing; JSON-able via to_dict()."""

    family: str = "pstable"  # "pstable": floor((x·v+b)/w); "simhash": sign(x·v)
    dim: int = 64
    k: int = 8  # hash functions per table (AND)
    L: int = 16  # tables (OR)
    w: float = 1.0  # bucket width (pstable only)
    T: int = 16  # probes per table (1 = home bucket only)
    seed: int = 42
    cap: int = 0  # items read per probed bucket (0 = all)

    def __post_init__(self) -> None:
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {FAMILIES}, got {self.family!r}")
        for name, low in (("dim", 1), ("k", 1), ("L", 1), ("T", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                problems.append(f"{name} must be an integer >= {low}, got {value!r}")
        if self.k > 64:
            problems.append(f"k must be <= 64, got {self.k}")
        if not isinstance(self.w, (int, float)) or not (math.isfinite(self.w) and self.w > 0):
            problems.append(f"w must be a finite number > 0, got {self.w!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.cap, (int, np.integer)) or self.cap < 0:
            problems.append(f"cap must be an integer >= 0, got {self.cap!r}")
        if problems:
            raise ValueError("invalid LSH parameters: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LSHParams:
        """Inverse of to_dict(); unknown keys raise ValueError, missing ones take defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"LSH parameters must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown LSH parameter(s): {', '.join(unknown)}")
        casts = {"family": str, "dim": int, "k": int, "L": int, "w": float, "T": int,
                 "seed": int, "cap": int}
        values = {}
        for key, value in d.items():
            if isinstance(value, bool) or value is None:
                raise ValueError(f"LSH parameter {key}: cannot use {value!r}")
            if casts[key] is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(f"LSH parameter {key} must be an integer, got {value!r}")
            try:
                values[key] = casts[key](value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"LSH parameter {key}: cannot use {value!r}") from exc
        return cls(**values)

    def describe(self) -> str:
        text = f"{self.family} k={self.k} L={self.L}"
        if self.family == "pstable":
            text += f" w={self.w:g}"
        text += f" T={self.T}"
        if self.cap:
            text += f" cap={self.cap}"
        return text


def normalize(vectors: Any) -> np.ndarray:
    """L2-normalise rows (1-D input = one row) to float32.

    Raises ValueError naming the first bad row for non-finite values or a zero norm.
    Rows already of unit norm (within 1e-5) are returned unchanged, so normalising twice
    gives the same bits as normalising once.
    """
    arr = np.asarray(vectors)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"vectors must be numeric, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"vectors must be 1-D or 2-D, got shape {arr.shape}")
    x = arr.astype(np.float64, copy=False)
    sq = np.einsum("...i,...i->...", x, x)
    # one check covers NaN, infinities, zero rows and overflow of the squared norm
    if not (sq.min(initial=1.0) > 0 and sq.max(initial=1.0) < np.inf):
        finite = np.isfinite(x).all(axis=-1)
        if not np.all(finite):
            bad = int(np.flatnonzero(np.atleast_1d(~finite))[0])
            raise ValueError(f"vector {bad} has NaN or infinite values")
        if np.any(sq == 0):
            bad = int(np.flatnonzero(np.atleast_1d(sq == 0))[0])
            raise ValueError(f"vector {bad} is a zero vector (cannot be normalised)")
        peak = np.abs(x).max(axis=-1)  # huge finite values: the norm without overflow
        y = x / peak[..., None]
        norms = np.sqrt(np.einsum("...i,...i->...", y, y)) * peak
    else:
        norms = np.sqrt(sq)
    off = np.abs(norms - 1.0) > _UNIT_TOL
    if not off.any():
        return arr.astype(np.float32, copy=True)
    scale = np.where(off, 1.0 / norms, 1.0)
    out = (x * scale[..., None]).astype(np.float32)
    if not off.all():
        keep = ~off
        out[keep] = arr[keep]
    return out


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
    """The L x k hash functions of an LSHParams, deterministic from the params alone."""

    def __init__(self, params: LSHParams) -> None:
        self.params = params
        p = params
        rng = np.random.Generator(np.random.PCG64(p.seed))
        self.proj = rng.standard_normal((p.dim, p.L * p.k))  # float64
        self.offset = rng.uniform(0.0, 1.0, p.L * p.k) * p.w
        self.mult = rng.integers(_INT64_MIN, _INT64_MAX, size=(p.L, p.k), dtype=np.int64) | 1
        self.salt = rng.integers(_INT64_MIN, _INT64_MAX, size=p.L, dtype=np.int64)
        # perturbation-set pool: twice the probes needed, so query scores can reorder it
        n_sets = p.T - 1
        self.template = (
            _perturbation_template(p.family, p.k, max(2 * n_sets, n_sets + 8))
            if n_sets > 0 else np.zeros((0, 1), dtype=np.intp)
        )
        self.probes_per_table = 1 + min(n_sets, len(self.template))
        # read-only index arrays of probe_keys (its scratch is per call: thread-safe)
        self._npos = 2 * p.k if p.family == "pstable" else p.k
        self._row_base = np.repeat(np.arange(p.L) * self._npos, self._npos)
        self._rows3 = np.arange(p.L)[:, None, None]
        self._step = np.concatenate([-self.mult, self.mult], axis=1)

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
        p = self.params
        c = codes.reshape(-1, p.L, p.k)
        with np.errstate(over="ignore"):
            return np.einsum("nlk,lk->nl", c, self.mult) + self.salt

    def keys(self, vectors: np.ndarray) -> np.ndarray:
        """One bucket key per table: (n, L) int64 for (n, D) normalised vectors."""
        x = np.asarray(vectors)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.params.dim:
            raise ValueError(
                f"expected vectors of shape (n, {self.params.dim}), got {np.shape(vectors)}"
            )
        if x.shape[0] <= _HASH_BLOCK:
            return self._fold(self._codes(x)[0])
        out = np.empty((x.shape[0], self.params.L), dtype=np.int64)
        for start in range(0, x.shape[0], _HASH_BLOCK):
            block = x[start : start + _HASH_BLOCK]
            out[start : start + len(block)] = self._fold(self._codes(block)[0])
        return out

    def probe_keys(self, q: np.ndarray) -> np.ndarray:
        """(L, T') int64 probe keys for one normalised query, home bucket first.

        T' = min(T, 1 + number of valid perturbation sets). The perturbed probes of a
        table are its best T' - 1 sets, in no particular order (all are read anyway).
        Written as few numpy calls on tiny arrays: this runs once per query.
        """
        p = self.params
        x = np.asarray(q)
        if x.size != p.dim:
            raise ValueError(f"expected a query of dimension {p.dim}, got {np.shape(q)}")
        # _codes' arithmetic on a 1-D query, inline: through _codes (2-D, int64 codes) a
        # call took 45 us instead of 34 us (timeit, L=16 k=10 T=5)
        t = x.reshape(-1).astype(np.float64) @ self.proj  # (L*k,)
        if p.family == "pstable":
            t += self.offset
            t /= p.w
            fcodes = np.floor(t)
        else:
            fcodes = (t > 0).astype(np.float64)
        codes = fcodes.astype(np.int64).reshape(p.L, p.k)
        with np.errstate(over="ignore"):
            home = (codes * self.mult).sum(axis=1) + self.salt  # (L,)
        n_sets = self.probes_per_table - 1
        if n_sets == 0:
            return home[:, None]
        npos = self._npos
        if p.family == "pstable":
            frac = t - fcodes  # distance to the lower boundary, in units of w
            dist = np.empty((p.L, npos))  # (L, 2k): -1 moves, then +1 moves
            dist[:, : p.k] = frac.reshape(p.L, p.k)
            np.subtract(1.0, dist[:, : p.k], out=dist[:, p.k :])
            step = self._step
        else:
            dist = np.abs(t).reshape(p.L, p.k)
            step = np.where(codes == 1, -self.mult, self.mult)
        order = np.argsort(dist, axis=1).reshape(-1)
        order += self._row_base  # flat index into (L, npos)
        d2 = np.zeros((p.L, npos + 1))  # last column 0: the template's padding
        contrib = np.zeros((p.L, npos + 1), dtype=np.int64)
        d2[:, :npos] = dist.reshape(-1)[order].reshape(p.L, npos)
        d2[:, :npos] **= 2
        contrib[:, :npos] = step.reshape(-1)[order].reshape(p.L, npos)
        tmpl = self.template
        if len(tmpl) > n_sets:
            scores = d2[:, tmpl].sum(axis=2)  # (L, S)
            best = np.argpartition(scores, n_sets - 1, axis=1)[:, :n_sets]
            sets = tmpl[best]  # (L, n_sets, maxlen)
        else:
            sets = np.broadcast_to(tmpl, (p.L, *tmpl.shape))
        out = np.empty((p.L, 1 + n_sets), dtype=np.int64)
        out[:, 0] = home
        with np.errstate(over="ignore"):
            np.add(home[:, None], contrib[self._rows3, sets].sum(axis=2), out=out[:, 1:])
        return out

    def probe_keys_many(self, queries: np.ndarray) -> np.ndarray:
        """(n, L, T') probe keys of n normalised queries: row i holds the same keys as
        ``probe_keys(queries[i])`` (perturbed probes possibly in another order), computed
        with one set of numpy calls for all n (the worker's batches of requests)."""
        p = self.params
        x = np.asarray(queries, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != p.dim:
            raise ValueError(f"expected queries of shape (n, {p.dim}), got {np.shape(queries)}")
        n = x.shape[0]
        codes, t = self._codes(x)  # (n, L*k) each
        codes3 = codes.reshape(n, p.L, p.k)
        with np.errstate(over="ignore"):
            home = (codes3 * self.mult).sum(axis=2) + self.salt  # (n, L)
        n_sets = self.probes_per_table - 1
        if n_sets == 0:
            return home[:, :, None]
        npos = self._npos
        if p.family == "pstable":
            frac = (t - codes).reshape(n, p.L, p.k)
            dist = np.concatenate([frac, 1.0 - frac], axis=2)  # (n, L, 2k)
            step = np.broadcast_to(self._step, dist.shape)
        else:
            dist = np.abs(t).reshape(n, p.L, p.k)
            step = np.where(codes3 == 1, -self.mult, self.mult)
        order = np.argsort(dist, axis=2)
        d2 = np.zeros((n, p.L, npos + 1))  # last column 0: the template's padding
        contrib = np.zeros((n, p.L, npos + 1), dtype=np.int64)
        d2[:, :, :npos] = np.take_along_axis(dist, order, axis=2) ** 2
        contrib[:, :, :npos] = np.take_along_axis(step, order, axis=2)
        tmpl = self.template
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


class _SortedBuckets:
    """Immutable bucket table: sorted unique keys, CSR offsets into a slot array, and a
    radix directory on the keys' top bits (keys are uniform hashes), so looking up many
    probes costs a few vectorised gathers instead of cache-missing binary searches."""

    def __init__(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """keys: sorted int64 entry keys; slots: int32 slot of each entry."""
        if len(slots):
            first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            self._set(keys[first], np.r_[first, len(slots)].astype(np.int64), slots)
        else:
            self._set(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64), slots)

    @classmethod
    def from_csr(cls, ukeys: np.ndarray, starts: np.ndarray,
                 slots: np.ndarray) -> _SortedBuckets:
        self = cls.__new__(cls)
        self._set(ukeys, starts, slots)
        return self

    def _set(self, ukeys: np.ndarray, starts: np.ndarray, slots: np.ndarray) -> None:
        self.ukeys, self.starts, self.slots = ukeys, starts, slots
        self.size = len(slots)
        n_keys = len(self.ukeys)
        self.bits = max(1, min(30, math.ceil(math.log2(max(n_keys, 2))) - 1))
        self.shift = np.uint64(64 - self.bits)
        # directory[d] = first key whose top bits (in signed order) are >= d: a counting
        # pass over the sorted keys (their top bits are sorted too)
        top = (self.ukeys.view(np.uint64) ^ np.uint64(1 << 63)) >> self.shift
        self.directory = np.zeros(2**self.bits + 1, dtype=np.int64)
        np.cumsum(np.bincount(top.astype(np.intp), minlength=2**self.bits),
                  out=self.directory[1:])
        widest = int(np.diff(self.directory).max()) if n_keys else 0
        self._ramp = np.arange(max(widest, 1), dtype=np.int64)

    def nbytes(self) -> int:
        return int(self.slots.nbytes + self.ukeys.nbytes + self.starts.nbytes
                   + self.directory.nbytes + self._ramp.nbytes)

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, slots) of every entry, keys sorted (a temporary expansion)."""
        return np.repeat(self.ukeys, np.diff(self.starts)), self.slots

    def merged(self, keep: np.ndarray | None, new_keys: np.ndarray,
               new_slots: np.ndarray) -> _SortedBuckets:
        """A new table: entries where ``keep`` (None = all) plus sorted new entries, each
        appended at the end of its bucket. Works on the bucket level (unique keys and
        counts), so the entry arrays are touched once: no expansion, no re-sort."""
        ukeys, counts, slots = self.ukeys, np.diff(self.starts), self.slots
        if keep is not None and not keep.all():
            gone = np.flatnonzero(~keep)
            counts = counts - np.bincount(np.searchsorted(self.starts, gone, side="right") - 1,
                                          minlength=len(ukeys))
            slots = slots[keep]
            live = counts > 0
            ukeys, counts = ukeys[live], counts[live]
        starts = np.zeros(len(ukeys) + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        m = len(new_keys)
        if m == 0:
            return _SortedBuckets.from_csr(ukeys, starts, slots)
        pos = np.searchsorted(ukeys, new_keys)
        exists = np.zeros(m, dtype=bool)
        inside = pos < len(ukeys)
        exists[inside] = ukeys[pos[inside]] == new_keys[inside]
        # entry position of each new entry: end of its bucket, or where its bucket goes
        where = starts[pos + exists] + np.arange(m)
        out = np.empty(len(slots) + m, dtype=slots.dtype)
        old = np.ones(len(out), dtype=bool)
        old[where] = False
        out[where] = new_slots
        out[old] = slots
        # unique keys and counts after the insert
        add_keys = new_keys[~exists]
        if len(add_keys):
            add_keys = add_keys[np.r_[True, add_keys[1:] != add_keys[:-1]]]
            at = np.searchsorted(ukeys, add_keys)
            ukeys = np.insert(ukeys, at, add_keys)
            counts = np.insert(counts, at, 0)
        counts = counts + np.bincount(np.searchsorted(ukeys, new_keys), minlength=len(ukeys))
        starts = np.zeros(len(ukeys) + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        return _SortedBuckets.from_csr(ukeys, starts, out)

    def lookup(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) entry ranges of each probe key (empty where the key is absent).

        Each directory cell holds ~2 keys, so one (probes x widest cell) comparison
        finds every probe at once, without a binary-search loop.
        """
        d = (probes.view(np.uint64) ^ np.uint64(1 << 63)) >> self.shift
        lo = self.directory[d]
        width = self.directory[d + 1] - lo
        m = int(width.max()) if len(width) else 0
        if m == 0:
            zero = np.zeros(len(probes), dtype=np.int64)
            return zero, zero
        pos = lo[:, None] + self._ramp[:m]
        np.minimum(pos, len(self.ukeys) - 1, out=pos)
        match = self.ukeys[pos] == probes[:, None]
        match &= self._ramp[:m] < width[:, None]
        at = lo + match.argmax(axis=1)
        found = match.any(axis=1)
        start = np.where(found, self.starts[at], 0)
        end = np.where(found, self.starts[np.minimum(at + 1, len(self.ukeys))], 0)
        return start, end


@dataclass
class QueryResult:
    ids: list[str]  # best first
    scores: np.ndarray  # float32 cosine, best first
    candidates: int  # distinct candidates re-ranked


class LSHIndex:
    """Incremental LSH index over normalised float32 vectors, keyed by string ids."""

    #: merge pending items into the sorted arrays when pending + stale slots exceed
    #: max(MERGE_MIN, items / MERGE_RATIO); batches of at least that size go straight in
    MERGE_MIN = 4096
    MERGE_RATIO = 16
    #: False: add() and remove() never merge; the owner calls merge_work() off the event
    #: loop and finish_merge() on it when needs_merge() (stream.items does)
    auto_merge = True

    def __init__(self, params: LSHParams) -> None:
        self.params = params
        self.hasher = Hasher(params)
        self.dim = params.dim
        self._capacity = 0
        self._vecs = np.zeros((0, self.dim), dtype=np.float32)
        self._alive = np.zeros(0, dtype=bool)
        self._in_main = np.zeros(0, dtype=bool)
        self._stamp = np.zeros(0, dtype=np.int32)
        self._slot_ids: list[str | None] = []
        self._id2slot: dict[str, int] = {}
        self._free: list[int] = []
        self._high = 0  # slots ever handed out (high-water mark)
        self._buckets = _SortedBuckets(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32))
        self._pending: dict[int, list[int]] = {}  # bucket key -> slots
        self._pending_slots: dict[int, list[int]] = {}  # slot -> its L bucket keys
        self._stale = 0  # slots whose entries in the sorted arrays are out of date
        self.merges = 0

    # ------------------------------------------------------------------ basics
    def set_probing(self, T: int, cap: int | None = None) -> None:
        """Change the probes per table (and bucket cap) in place; buckets do not change."""
        params = replace(self.params, T=T, cap=self.params.cap if cap is None else cap)
        hasher = Hasher(params)
        self.params, self.hasher = params, hasher

    def __len__(self) -> int:
        return len(self._id2slot)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._id2slot

    def ids(self) -> list[str]:
        return list(self._id2slot)

    def stats(self) -> dict[str, int]:
        return {
            "items": len(self),
            "capacity": self._capacity,
            "sorted_entries": self._buckets.size,
            "buckets": len(self._buckets.ukeys),
            "pending_items": len(self._pending_slots),
            "stale_items": self._stale,
            "merges": self.merges,
        }

    def nbytes(self) -> int:
        """Bytes held in numpy arrays (vectors, sorted bucket arrays, masks)."""
        arrays = (self._vecs, self._alive, self._in_main, self._stamp)
        return int(sum(a.nbytes for a in arrays)) + self._buckets.nbytes()

    def _check_ids(self, ids: Sequence[str]) -> list[str]:
        if isinstance(ids, (str, bytes)):
            raise ValueError("ids must be a sequence of strings, not a single string")
        ids = list(ids)
        for item_id in ids:
            if not isinstance(item_id, str):
                raise ValueError(f"item ids must be strings, got {type(item_id).__name__}")
        return ids

    def _grow(self, needed: int) -> None:
        if needed <= self._capacity:
            return
        new = max(needed, self._capacity + self._capacity // 4, 1024)  # <= 25% spare
        vecs = np.zeros((new, self.dim), dtype=np.float32)
        vecs[: self._capacity] = self._vecs
        self._vecs = vecs
        for name, dtype in (("_alive", bool), ("_in_main", bool), ("_stamp", np.int32)):
            arr = np.zeros(new, dtype=dtype)
            arr[: self._capacity] = getattr(self, name)
            setattr(self, name, arr)
        self._slot_ids.extend([None] * (new - self._capacity))
        self._capacity = new

    # ------------------------------------------------------------------ writes
    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Upsert one or many items; existing ids move to their new buckets. No rebuild."""
        ids = self._check_ids(ids)
        vecs = np.asarray(vectors)
        if vecs.ndim == 1 and len(ids) == 1:
            vecs = vecs[None, :]
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vecs.shape}")
        if vecs.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids but {vecs.shape[0]} vectors")
        if not ids:
            return
        vn = normalize(vecs)
        if len(set(ids)) != len(ids):  # the last occurrence of an id wins
            last = {item_id: i for i, item_id in enumerate(ids)}
            rows = np.fromiter(last.values(), dtype=np.intp, count=len(last))
            ids, vn = list(last), vn[rows]
        n = len(ids)
        free_needed = max(0, n - len(self._free))
        self._grow(self._high + free_needed)
        slots = np.empty(n, dtype=np.int64)
        moved: list[int] = []
        id2slot = self._id2slot
        for i, item_id in enumerate(ids):
            slot = id2slot.get(item_id)
            if slot is None:
                slot = self._free.pop() if self._free else self._next_new_slot()
                id2slot[item_id] = slot
                self._slot_ids[slot] = item_id
            else:
                moved.append(slot)
            slots[i] = slot
        if moved:
            self._unindex(np.asarray(moved, dtype=np.int64))
        self._vecs[slots] = vn
        self._alive[slots] = True
        keys = self.hasher.keys(vn)
        if self.auto_merge and n >= self._merge_threshold():
            self._merge(slots, keys)
            return
        pending = self._pending
        pending_slots = self._pending_slots
        for slot, row in zip(slots.tolist(), keys.tolist(), strict=True):
            for key in row:
                bucket = pending.get(key)
                if bucket is None:
                    pending[key] = [slot]
                else:
                    bucket.append(slot)
            pending_slots[slot] = row
        if self.auto_merge and self.needs_merge():
            self._merge()

    def remove(self, ids: Iterable[str]) -> int:
        """Remove items by id; returns how many were present. Unknown ids are ignored."""
        ids = self._check_ids(list(ids) if not isinstance(ids, (str, bytes)) else ids)
        slots = []
        for item_id in dict.fromkeys(ids):
            slot = self._id2slot.pop(item_id, None)
            if slot is not None:
                slots.append(slot)
                self._slot_ids[slot] = None
        if not slots:
            return 0
        arr = np.asarray(slots, dtype=np.int64)
        self._unindex(arr)
        self._alive[arr] = False
        self._vecs[arr] = 0.0
        self._free.extend(slots)
        if self.auto_merge and self._stale >= self._merge_threshold():
            self._merge()
        return len(slots)

    def _next_new_slot(self) -> int:
        slot = self._high
        self._high += 1
        return slot

    def _merge_threshold(self) -> int:
        return max(self.MERGE_MIN, len(self._id2slot) // self.MERGE_RATIO)

    def _unindex(self, slots: np.ndarray) -> None:
        """Take slots out of the bucket structures (before an update or a removal)."""
        in_main = self._in_main[slots]
        if np.any(in_main):
            self._in_main[slots[in_main]] = False
            self._stale += int(in_main.sum())
        if self._pending_slots:
            for slot in slots.tolist():
                row = self._pending_slots.pop(slot, None)
                if row is None:
                    continue
                for key in row:
                    bucket = self._pending[key]
                    bucket.remove(slot)
                    if not bucket:
                        del self._pending[key]

    def needs_merge(self) -> bool:
        """Enough pending items or stale entries that a merge is due."""
        return len(self._pending_slots) + self._stale >= self._merge_threshold()

    def _merge(self, slots: np.ndarray | None = None, keys: np.ndarray | None = None) -> None:
        """Fold pending items (and a batch) into the sorted arrays; drop stale entries."""
        self.finish_merge(self.merge_work(slots, keys)())

    def merge_work(self, slots: np.ndarray | None = None, keys: np.ndarray | None = None
                   ) -> Callable[[], tuple[_SortedBuckets, np.ndarray | None]]:
        """The heavy part of a merge as a function that only reads this index, for a
        thread (numpy releases the GIL in its sorts and copies): the caller must not
        change the index until it passes the result to :meth:`finish_merge`; queries may
        run meanwhile (they see the index as before the merge)."""
        pending_slots = dict(self._pending_slots)
        old, stale, L = self._buckets, self._stale, self.params.L

        def work() -> tuple[_SortedBuckets, np.ndarray | None]:
            parts_s, parts_k = [], []
            if pending_slots:
                parts_s.append(np.fromiter(pending_slots, dtype=np.int64,
                                           count=len(pending_slots)))
                parts_k.append(np.array(list(pending_slots.values()), dtype=np.int64))
            if slots is not None and keys is not None:
                parts_s.append(slots)
                parts_k.append(keys)
            if parts_s:
                new_slots = np.repeat(np.concatenate(parts_s).astype(np.int32), L)
                new_keys = np.concatenate(parts_k).reshape(-1)
                order = np.argsort(new_keys, kind="stable")
                new_keys, new_slots = new_keys[order], new_slots[order]
            else:
                new_keys = np.zeros(0, dtype=np.int64)
                new_slots = np.zeros(0, dtype=np.int32)
            if old.size == 0:
                table = _SortedBuckets(new_keys, new_slots)
            else:
                keep = self._in_main[old.slots] if stale else None
                table = old.merged(keep, new_keys, new_slots)
            return table, np.concatenate(parts_s) if parts_s else None

        return work

    def finish_merge(self, result: tuple[_SortedBuckets, np.ndarray | None]) -> None:
        """Swap in what :meth:`merge_work` built (on the thread that owns the index)."""
        table, merged_slots = result
        self._buckets = table
        if merged_slots is not None:
            self._in_main[merged_slots] = True
        self._pending.clear()
        self._pending_slots.clear()
        self._stale = 0
        self.merges += 1

    # ------------------------------------------------------------------ reads
    def vectors_of(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised vectors (zeros where missing) and a "present" mask."""
        ids = self._check_ids(ids)
        slots = np.fromiter((self._id2slot.get(i, -1) for i in ids), dtype=np.int64,
                            count=len(ids))
        present = slots >= 0
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        out[present] = self._vecs[slots[present]]
        return out, present

    def _prepare(self, q: np.ndarray, k: int) -> np.ndarray:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        arr = np.asarray(q)
        if arr.ndim != 1 or arr.shape[0] != self.dim:
            raise ValueError(f"expected a query vector of dimension {self.dim}, got {arr.shape}")
        try:
            return normalize(arr)
        except ValueError as exc:
            raise ValueError(f"unusable query: {str(exc).replace('vector 0', 'query')}") from None

    def _excluded_slots(self, exclude: Collection[str]) -> np.ndarray:
        if not exclude:
            return np.zeros(0, dtype=np.int64)
        if isinstance(exclude, str):
            exclude = (exclude,)
        get = self._id2slot.get
        slots = [s for s in map(get, exclude) if s is not None]
        return np.asarray(slots, dtype=np.int64)

    def candidates(self, qn: np.ndarray) -> np.ndarray:
        """Distinct candidate slots (int32) for a normalised query."""
        probes = self.hasher.probe_keys(qn).reshape(-1)
        lo, hi = self._ranges(probes)
        return self._gather(probes, lo, hi)

    def _ranges(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) of each probe key in the main bucket table, capped (empty if none)."""
        buckets = self._buckets
        if not buckets.size:
            zero = np.zeros(len(probes), dtype=np.int64)
            return zero, zero
        lo, hi = buckets.lookup(probes)
        if self.params.cap:
            np.minimum(hi, lo + self.params.cap, out=hi)
        return lo, hi

    def _gather(self, probes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Distinct slots of one query's probes, given their main-table ranges."""
        parts = []
        counts = hi - lo
        total = int(counts.sum())
        if total:
            buckets = self._buckets
            ends = np.cumsum(counts)
            idx = np.arange(total) + np.repeat(lo - (ends - counts), counts)
            slots = buckets.slots[idx]
            if self._stale:
                slots = slots[self._in_main[slots]]
            parts.append(slots)
        if self._pending:
            get = self._pending.get
            cap = self.params.cap or None  # the cap holds for pending buckets too
            extra = [s for key in probes.tolist() if (b := get(key)) for s in b[:cap]]
            if extra:
                parts.append(np.asarray(extra, dtype=np.int32))
        if not parts:
            return np.zeros(0, dtype=np.int32)
        cand = parts[0] if len(parts) == 1 else np.concatenate(parts)
        order = np.arange(len(cand), dtype=np.int32)
        stamp = self._stamp
        stamp[cand] = order
        return cand[stamp[cand] == order]

    def _top(self, slots: np.ndarray, scores: np.ndarray, k: int, n_cand: int) -> QueryResult:
        top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        ids = [self._slot_ids[s] for s in slots[top].tolist()]
        return QueryResult(ids=ids, scores=scores[top].astype(np.float32), candidates=n_cand)

    def query(self, q: np.ndarray, k: int, exclude: Collection[str] = ()) -> QueryResult:
        """LSH candidates -> exact cosine re-rank -> top-k, excluded ids left out."""
        qn = self._prepare(q, k)
        cand = self.candidates(qn)
        ex = self._excluded_slots(exclude)
        if len(ex) and len(cand):
            cand = cand[~np.isin(cand, ex)]
        return self._rerank(cand, qn, k)

    def _rerank(self, cand: np.ndarray, qn: np.ndarray, k: int) -> QueryResult:
        """Exact cosine of the candidate slots, top k."""
        return self._top(cand, np.take(self._vecs, cand, axis=0) @ qn, k, len(cand))

    def query_many(self, queries: np.ndarray, ks: Sequence[int]) -> list[QueryResult]:
        """``query(queries[i], ks[i])`` for each row, hashed and looked up together: one
        set of numpy calls for all probes of all queries, then each query's candidates
        and exact re-rank (the same results as one query() per row)."""
        if len(queries) != len(ks):
            raise ValueError(f"{len(queries)} queries but {len(ks)} k values")
        if not len(ks):
            return []
        qn = np.stack([self._prepare(q, k) for q, k in zip(queries, ks, strict=True)])
        probes = self.hasher.probe_keys_many(qn)  # (n, L, T')
        per_query = probes.shape[1] * probes.shape[2]
        flat = probes.reshape(-1)
        lo, hi = self._ranges(flat)
        out = []
        for i, k in enumerate(ks):
            a, b = i * per_query, (i + 1) * per_query
            out.append(self._rerank(self._gather(flat[a:b], lo[a:b], hi[a:b]), qn[i], k))
        return out

    def exact(self, q: np.ndarray, k: int, exclude: Collection[str] = ()) -> QueryResult:
        """Brute force over all items (same scores as query(); for checks and fallbacks)."""
        qn = self._prepare(q, k)
        high = self._high
        scores = self._vecs[:high] @ qn
        dead = ~self._alive[:high]
        ex = self._excluded_slots(exclude)
        if len(ex):
            dead[ex] = True
        live = np.flatnonzero(~dead)
        if len(live) < high:
            return self._top(live, scores[live], k, len(live))
        return self._top(live, scores, k, len(live))
