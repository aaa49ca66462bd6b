"""The item-vector file written by ``recall train`` and read by tune, load and eval.

Format: one NumPy ``.npz`` archive (``numpy.load(path)``) holding

- ``ids``: (n,) unicode array, the item ids, unique;
- ``vectors``: (n, D) float32, row i the L2-normalised vector of ``ids[i]``.

The tuned LSH parameters go next to it as ``<stem>.lsh.json`` (see :func:`params_path`).
Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from offline.clicklog import ClickLogError, atomic_path


class VectorFileError(ClickLogError):
    """A vector or parameter file cannot be used; the message names the file."""


def params_path(vectors_path: str | os.PathLike[str]) -> Path:
    """Where ``recall tune`` writes the parameters for ``vectors_path``."""
    p = Path(vectors_path)
    return p.with_name(p.name.removesuffix(".npz") + ".lsh.json")


def save_vectors(path: str | os.PathLike[str], ids: list[str], vectors: np.ndarray) -> None:
    """Write ids + normalised float32 vectors atomically."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ValueError("vectors must be (len(ids), D)")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=np.asarray(ids, dtype=str), vectors=vectors)


def load_vectors(path: str | os.PathLike[str], dim: int | None = None,
                 ) -> tuple[list[str], np.ndarray]:
    """Read and check a vector file; returns (ids, (n, D) float32 normalised)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"ids", "vectors"} - set(npz.files)
            if missing:
                raise VectorFileError(f"{path}: missing array(s) {', '.join(sorted(missing))}")
            ids_arr, vectors = npz["ids"], npz["vectors"]
    except VectorFileError:
        raise
    except FileNotFoundError:
        raise VectorFileError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise VectorFileError(f"{path}: not a vector file (.npz): {exc}") from None
    if ids_arr.ndim != 1 or ids_arr.dtype.kind != "U":
        raise VectorFileError(f"{path}: 'ids' must be a 1-D string array")
    if vectors.ndim != 2 or vectors.dtype.kind != "f":
        raise VectorFileError(f"{path}: 'vectors' must be a 2-D float array")
    if len(ids_arr) != len(vectors):
        raise VectorFileError(f"{path}: {len(ids_arr)} ids but {len(vectors)} vectors")
    if len(ids_arr) == 0:
        raise VectorFileError(f"{path}: no vectors")
    if dim is not None and vectors.shape[1] != dim:
        raise VectorFileError(
            f"{path}: vectors have dimension {vectors.shape[1]}, expected {dim} (RECALL_DIM)")
    ids = ids_arr.tolist()
    if len(set(ids)) != len(ids):
        raise VectorFileError(f"{path}: repeated item ids")
    vectors = vectors.astype(np.float32, copy=False)
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise VectorFileError(
            f"{path}: vector of item {ids[bad[0]]!r} (row {bad[0]}) is zero or not finite")
    return ids, vectors / norms[:, None]
