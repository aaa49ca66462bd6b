"""Compiled re-rank of the index's search: candidate rows scored exactly, top k kept.

Split from :mod:`recall.kernels` (probe -> gather -> dedupe), which calls :func:`rerank`
once per query; :mod:`recall.exactkernels` shares :func:`half`. Why the scoring is shaped
as it is (float16 rows read as two cache lines, prefetched ahead; a float32 pass before
the exact one) is in each function's docstring: the re-rank of ~4,350 random rows is
most of a search's time at 1M items.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from recall import jit  # noqa: F401  (numba's cache directory, before any @njit)

#: rows re-ranked ahead of the one being scored whose cache lines are prefetched
PREFETCH_AHEAD = 8


@intrinsic
def prefetch(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """Hint the CPU to load the cache line of ``arr.flat[idx]`` (LLVM's prefetch
    intrinsic; numba has no call for it). Re-ranking reads candidate rows at random
    places in a matrix far bigger than the caches: without hints the core waits on one
    or two rows at a time; with the next rows' lines requested early it overlaps ~8
    (measured at 1M x 64: 296 -> 172 us for 4,352 random rows). A hint only: results
    are the same bits."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # read, high temporal locality, data cache
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def half(typingctx, bits):  # type: ignore[no-untyped-def]
    """The float32 value of an IEEE half given as its uint16 bits (numba has no float16
    type): LLVM's fpext, one instruction where the CPU has F16C. Exact."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def prefetch_row(flat: np.ndarray, row: int, dim: int) -> None:
    """Prefetch every cache line (32 halves) of one row of a C-contiguous matrix."""
    base = row * dim
    for c in range(0, dim, 32):
        prefetch(flat, base + c)


@njit(cache=True, nogil=True, fastmath=True)
def _scores(vectors: np.ndarray, slots: np.ndarray, m: int, q: np.ndarray,
            out: np.ndarray) -> None:
    """out[j] = vectors[slots[j]] . q for j < m: float64 sums of the products of the
    float16 vector (its uint16 bits) and the float32 query, rounded to float32.
    Half-precision rows are 128 bytes, two cache lines: re-ranking reads half the lines
    of float32 rows (4,352 random rows at 1M: ~0.12 -> ~0.09 ms, interleaved). fastmath
    lets LLVM reorder each sum into SIMD lanes (a chain of 64 dependent adds took ~2x
    longer); that moves a sum by a few float64 ulps, far
    below the float32 rounding of the score, so the scores equal numpy's float64 ones."""
    dim = vectors.shape[1]
    flat = vectors.reshape(-1)
    for j in range(min(PREFETCH_AHEAD, m)):
        prefetch_row(flat, slots[j], dim)
    for j in range(m):
        if j + PREFETCH_AHEAD < m:
            prefetch_row(flat, slots[j + PREFETCH_AHEAD], dim)
        s = slots[j]
        acc = 0.0
        for d in range(dim):
            acc += np.float64(half(vectors[s, d])) * np.float64(q[d])
        out[j] = np.float32(acc)


@njit(cache=True, nogil=True, fastmath=True)
def _approx_scores(vectors: np.ndarray, slots: np.ndarray, m: int, q: np.ndarray,
                   out: np.ndarray) -> None:
    """out[j] ~ vectors[slots[j]] . q for j < m: :func:`_scores` summed in float32 (16
    lanes a SIMD register instead of 8, no conversions to float64). Within
    (dim + 1) * 2**-24 * |row| * |q| of the exact score (any summation order), which
    :func:`rerank` allows for."""
    dim = vectors.shape[1]
    flat = vectors.reshape(-1)
    for j in range(min(PREFETCH_AHEAD, m)):
        prefetch_row(flat, slots[j], dim)
    for j in range(m):
        if j + PREFETCH_AHEAD < m:
            prefetch_row(flat, slots[j + PREFETCH_AHEAD], dim)
        s = slots[j]
        acc = np.float32(0.0)
        for d in range(dim):
            acc += half(vectors[s, d]) * q[d]
        out[j] = acc


@njit(cache=True, nogil=True)
def rerank(vectors: np.ndarray, cand: np.ndarray, m: int, q: np.ndarray, k: int,
            scores: np.ndarray, top_s: np.ndarray, top_v: np.ndarray) -> None:
    """The top k of the m candidates cand[:m] by their exact scores (:func:`_scores`)
    into top_s/top_v (pre-filled with -1/-inf); cand and scores are scratch.

    Every candidate is first scored in float32 (:func:`_approx_scores`); only those
    within twice the float32 error bound of the k-th best of these can be in the top k,
    and only they (~10 of ~4,350 at 1M) are scored exactly, from rows still in the cache.
    Same answer and scores as scoring all exactly: an item of the exact top k scores at
    least the k-th exact score, which is at least the k-th approximate score less the
    bound, so its approximate score is at least that less twice the bound (equal scores
    included). Rows are unit (the index normalises them; a float16 rounding adds at most
    2**-11 to a norm): the bound is taken for norms up to 1.01, and doubled. Re-rank of
    4,352 rows at 1M, the same candidates: ~94 -> ~82 us (p50, interleaved A/B, load ~2)."""
    if m <= 2 * k:
        _scores(vectors, cand, m, q, scores)
        top_k(cand, scores, m, k, top_s, top_v)
        return
    _approx_scores(vectors, cand, m, q, scores)
    top_k(cand, scores, m, k, top_s, top_v)
    qq = 0.0
    for d in range(q.shape[0]):
        qq += np.float64(q[d]) * np.float64(q[d])
    # the error bound of an approximate score, doubled for safety
    bound = 2.0 * (q.shape[0] + 2) * 2.0**-24 * 1.01 * np.sqrt(qq)
    keep = np.float64(top_v[k - 1]) - 2.0 * bound
    top_s[:] = -1
    top_v[:] = -np.inf
    kept = 0
    for j in range(m):
        if scores[j] >= keep:
            cand[kept] = cand[j]
            kept += 1
    _scores(vectors, cand, kept, q, scores)
    top_k(cand, scores, kept, k, top_s, top_v)


@njit(cache=True, nogil=True)
def top_k(slots: np.ndarray, scores: np.ndarray, m: int, k: int, top_s: np.ndarray,
           top_v: np.ndarray) -> None:
    """The k best of the first m (slot, score) pairs into top_s/top_v (pre-filled with
    -1/-inf), by score descending, equal scores by slot ascending (as the numpy
    reference): insertion into the sorted row, most candidates fail the first test."""
    filled = 0
    for j in range(m):
        v = scores[j]
        s = slots[j]
        if filled == k and not (v > top_v[k - 1] or (v == top_v[k - 1] and s < top_s[k - 1])):
            continue
        pos = filled if filled < k else k - 1
        while pos > 0 and (top_v[pos - 1] < v or (top_v[pos - 1] == v and top_s[pos - 1] > s)):
            top_v[pos] = top_v[pos - 1]
            top_s[pos] = top_s[pos - 1]
            pos -= 1
        top_v[pos] = v
        top_s[pos] = s
        if filled < k:
            filled += 1
