"""LSH parameters (everything the hash functions and the probing depend on) and the
L2 normalisation every vector goes through before it is hashed or scored."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

FAMILIES = ("pstable", "simhash")
#: how the index stores its normalised vectors. Half precision: a row of 64 is 128 bytes,
#: two cache lines, so re-ranking a query's ~4,000 random candidate rows (latency-bound)
#: reads half the lines of float32, and 1M x 64 vectors take 128 MB instead of 256 MB.
#: A component keeps 11 significant bits (relative error <= 2**-12): a cosine moves by
#: ~1e-4 at most, far below the gaps that decide a top 10 (recall@10 against exact
#: float32 search at 1M: 0.9655 -> see README). Scores, hashes and exact search all read
#: the stored rows, so they agree with each other.
VECTOR_DTYPE = np.float16
#: how far a stored component of a unit vector may be from its float32 value (half an
#: ulp of float16 at 1), and so a vector made of stored ones (a user's mean)
VECTOR_ATOL = 2.0**-12
#: rows whose norm is this close to 1 are taken as already normalised (keeps normalize
#: idempotent, so hashing a re-normalised vector gives the same keys)
UNIT_TOL = 1e-5


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
    vote: int = 1  # keep candidates found in at least this many of the L tables

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
        tables = self.L if isinstance(self.L, (int, np.integer)) else 1
        if (isinstance(self.vote, bool) or not isinstance(self.vote, (int, np.integer))
                or not 1 <= self.vote <= min(127, max(tables, 1))):
            problems.append(f"vote must be an integer in 1..min(L, 127), got {self.vote!r}")
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
                 "seed": int, "cap": int, "vote": int}
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
        if self.vote > 1:
            text += f" vote={self.vote}"
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
    off = np.abs(norms - 1.0) > UNIT_TOL
    if not off.any():
        return arr.astype(np.float32, copy=True)
    scale = np.where(off, 1.0 / norms, 1.0)
    out = (x * scale[..., None]).astype(np.float32)
    if not off.all():
        keep = ~off
        out[keep] = arr[keep]
    return out
