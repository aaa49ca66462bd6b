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


@pytest.mark.parametrize("family,k,dtype", [
    ("pstable", 5, np.float32), ("simhash", 5, np.float64), ("pstable", 10, np.float16),
    ("simhash", 3, np.float16), ("pstable", 1, np.float64)])
def test_item_keys_equal_the_numpy_hashers(family, k, dtype):
    """Hasher.keys folds the codes in a compiled pass: each item's L keys must be the
    numpy reference's (codes of the float64 product, folded with wrapping int64 sums),
    for stored float16 rows as for float32/64 ones, and for a narrow w where codes span
    many values."""
    h = Hasher(LSHParams(dim=16, family=family, k=k, L=6, w=0.3, seed=5))
    x = unit(np.random.default_rng(7), 300, 16).astype(dtype)
    got = h.keys(x)
    ref = h._fold(h._codes(x)[0])
    assert got.dtype == np.int64 and got.shape == (300, 6)
    np.testing.assert_array_equal(got, ref)
    assert len(np.unique(got)) > 40  # many buckets per table, not one for all


def twin_search(index, q, ks, exclude=None):
    """The compiled search and the numpy reference on the same index."""
    index.compiled = True
    got = index.search(q, ks, exclude)
    index.compiled = False
    try:
        ref = index.search(q, ks, exclude)
    finally:
        index.compiled = True
    return got, ref


def assert_same_rows(got, ref):
    assert len(got) == len(ref)
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert a.ids == b.ids, f"query {i}"
        assert a.candidates == b.candidates, f"query {i}"
        assert a.scores.dtype == np.float32
        np.testing.assert_array_equal(a.scores, b.scores, err_msg=f"query {i}")


def built(mode: str, family: str = "pstable", n: int = 1500, **params) -> tuple:
    """An index in a given state: everything merged, items pending (not merged yet), or
    stale entries (removed and updated items still in the sorted table, masked out)."""
    from recall.lsh import LSHIndex

    rng = np.random.default_rng(11)
    x = unit(rng, n, 16)
    ids = [f"i{j}" for j in range(n)]
    p = LSHParams(dim=16, family=family, **({"k": 4, "L": 6, "T": 4, "w": 0.9} | params))
    index = LSHIndex(p, merge="deferred")
    index.MERGE_MIN = 10**9  # nothing merges unless asked
    if mode == "merged":
        index.add(ids, x)  # one batch above... the threshold is huge: merge it explicitly
        index._merge_now()
    elif mode == "pending":
        index.add(ids[:500], x[:500])
        index._merge_now()
        for start in range(500, n, 100):
            index.add(ids[start:start + 100], x[start:start + 100])
    else:  # stale
        index.add(ids, x)
        index._merge_now()
        index.remove(ids[::3])
        index.add(ids[1:300:3], unit(rng, 100, 16))  # updated: moved to pending buckets
    assert (mode == "pending") == bool(index._pending and not index._stale)
    return index, rng


@pytest.mark.parametrize("mode", ["merged", "pending", "stale"])
@pytest.mark.parametrize("family", ["pstable", "simhash"])
def test_compiled_search_equals_the_numpy_reference_row_by_row(mode, family):
    index, rng = built(mode, family)
    q = unit(rng, 60, 16)
    ks = [1 + j % 17 for j in range(60)]
    assert_same_rows(*twin_search(index, q, ks))


@pytest.mark.parametrize("params", [{"cap": 3}, {"vote": 2}, {"vote": 3, "T": 8},
                                    {"T": 1}, {"L": 3, "k": 1}])
def test_compiled_search_equals_the_reference_with_cap_vote_and_probes(params):
    index, rng = built("stale", **params)
    q = unit(rng, 40, 16)
    got, ref = twin_search(index, q, 10)
    assert_same_rows(got, ref)
    if params.get("vote", 1) > 1:  # voting keeps fewer candidates than not voting
        plain = index.params
        index.params = LSHParams.from_dict({**plain.to_dict(), "vote": 1})
        assert sum(r.candidates for r in index.search(q, 10)) > sum(r.candidates for r in got)
        index.params = plain


def test_scores_closer_than_float32_can_tell_rank_as_the_reference():
    """The compiled re-rank scores every candidate in float32 first and only the few that
    can reach the top k exactly: with 600 items that differ only in tiny components (exact
    scores a float32 rounding apart), its answers must still be the reference's."""
    from recall.lsh import LSHIndex

    rng = np.random.default_rng(8)
    x = np.empty((600, 16))
    x[:, :8] = rng.standard_normal(8)  # one shared direction
    x[:, 8:] = rng.choice([1, -1], (600, 8)) * 10.0 ** rng.uniform(-7.5, -5.5, (600, 8))
    index = LSHIndex(LSHParams(dim=16, family="pstable", k=2, L=4, w=4.0, T=2, seed=2))
    index.add([f"i{j}" for j in range(600)], normalize(x))
    q = normalize(x[:40] + 0.3 * rng.standard_normal((40, 16)))
    got, ref = twin_search(index, q, [1 + j % 25 for j in range(40)])
    assert min(r.candidates for r in got) >= 500  # the approximate pass is used
    assert_same_rows(got, ref)


@pytest.mark.parametrize("vote", [1, 2])  # two dedupe paths: a bitset, a count per slot
def test_compiled_search_excludes_like_the_reference(vote):
    index, rng = built("pending", vote=vote, L=6 * vote, T=4 * vote)
    q = unit(rng, 30, 16)
    first = index.search(q, 8)
    # exclude some of each query's own results, ids not in the index, and nothing
    exclude = [set(r.ids[::2]) | {"nope"} if j % 3 else set() for j, r in enumerate(first)]
    got, ref = twin_search(index, q, 8, exclude)
    assert_same_rows(got, ref)
    for r, ex in zip(got, exclude, strict=True):
        assert not set(r.ids) & ex and len(r.ids) == 8


def test_compiled_search_on_an_empty_index_and_with_fewer_candidates_than_k():
    from recall.lsh import LSHIndex

    empty = LSHIndex(LSHParams(dim=16, k=4, L=2, T=2))
    q = unit(np.random.default_rng(0), 3, 16)
    assert [r.ids for r in empty.search(q, 5)] == [[], [], []]
    index, _ = built("merged", n=40, k=12, L=2, T=1)  # tiny buckets: few candidates
    got, ref = twin_search(index, q, 30)
    assert_same_rows(got, ref)
    assert all(len(r.ids) == r.candidates < 30 for r in got)


def test_equal_scores_rank_by_slot_on_both_paths():
    """Duplicated vectors score exactly the same: the order must not depend on the path."""
    from recall.lsh import LSHIndex

    rng = np.random.default_rng(5)
    base = unit(rng, 50, 16)
    x = np.repeat(base, 4, axis=0)  # every vector 4 times
    index = LSHIndex(LSHParams(dim=16, k=3, L=4, T=4, w=1.0))
    index.add([f"d{j}" for j in range(len(x))], x)
    got, ref = twin_search(index, base[:20], 7)
    assert_same_rows(got, ref)
    assert got[0].ids[:4] == ["d0", "d1", "d2", "d3"]


@pytest.mark.parametrize("vote", [1, 2])
def test_the_scratch_arrays_are_left_clean(vote):
    index, rng = built("stale", vote=vote)
    index.search(unit(rng, 20, 16), 10, [{"i1", "i2"}] * 20)
    assert not index._mark.any()
    assert not index._seen.any()


def test_warm_up_compiles_every_kernel():
    kernels.warm_up()
    for fn in (kernels.probe_keys, kernels.search_queries, kernels.count_cells,
               kernels.scatter_cells, kernels.finish_cells, kernels.unique_csr,
               kernels.unit_rows, kernels.radix_directory):
        assert fn.signatures, fn


def test_warm_up_compiles_the_types_a_real_index_searches_with():
    """A worker warms up before taking traffic: its first search must not compile
    (seconds) because the index passes other array types (offsets int32, scratch)."""
    from recall.lsh import LSHIndex

    kernels.warm_up()
    index, rng = built("merged")
    staged = LSHIndex(index.params)
    staged.stage([f"s{j}" for j in range(300)], unit(rng, 300, 16))
    staged.build()
    before = {fn: len(fn.signatures) for fn in (kernels.probe_keys, kernels.search_queries,
                                                kernels.unit_rows)}
    for idx in (index, staged):
        idx.search(unit(rng, 3, 16), 5)
        idx.search(unit(rng, 1, 16)[0], 5, [{"i1"}])
    assert {fn: len(fn.signatures) for fn in before} == before


@pytest.mark.parametrize("family", ["pstable", "simhash"])
def test_a_staged_bulk_load_builds_the_same_table_as_add(family):
    """stage() + build() (the worker's catalogue load) give the very table add() sorts:
    same keys, offsets and slot order, so searches answer the same."""
    from recall.lsh import LSHIndex

    rng = np.random.default_rng(8)
    x = unit(rng, 5000, 16)
    ids = [f"i{j}" for j in range(5000)]
    p = LSHParams(dim=16, family=family, k=5, L=6, T=3, w=0.7)
    added = LSHIndex(p)
    added.add(ids, x)
    staged = LSHIndex(p)
    staged.reserve(5000)
    for start in range(0, 5000, 700):  # batches as they come from Redis
        staged.stage(ids[start:start + 700], x[start:start + 700])
    staged.stage(ids[:3], unit(rng, 3, 16))  # restaged ids keep their last vector
    added.add(ids[:3], staged.vectors_of(ids[:3])[0])
    added._merge_now()
    assert all(r.ids == [] for r in staged.search(x[:5], 3))  # not indexed before build()
    staged.build()
    for a, b in zip(added._buckets.parts, staged._buckets.parts, strict=True):
        np.testing.assert_array_equal(a.ukeys, b.ukeys)
        np.testing.assert_array_equal(a.starts, b.starts)
        np.testing.assert_array_equal(np.sort(a.slots), np.sort(b.slots))
    q = unit(rng, 30, 16)
    for r1, r2 in zip(added.search(q, 10), staged.search(q, 10), strict=True):
        assert r1.ids == r2.ids and r1.candidates == r2.candidates
    assert staged.stats()["capacity"] == 5000  # reserved exactly: no growth spare
    with pytest.raises(RuntimeError):
        staged.stage(["new"], x[:1])


def test_unit_rows_accepts_only_what_normalize_leaves_unchanged():
    """The search skips normalize() for rows unit_rows() accepts: every accepted row must
    be one normalize() returns bit for bit, and rows it would rescale, NaN or infinite
    ones must be refused (then normalize() runs and reports them)."""
    rng = np.random.default_rng(5)
    q = unit(rng, 50, 16)
    assert kernels.unit_rows(q, 0.5e-5)
    np.testing.assert_array_equal(normalize(q), q)
    for bad in (q * np.float32(1.001), q * np.float32(3.0), q * np.float32(0.5)):
        assert not kernels.unit_rows(bad, 0.5e-5)
    for value in (np.nan, np.inf):
        row = q[:1].copy()
        row[0, 3] = value
        assert not kernels.unit_rows(row, 0.5e-5)


def random_unit_index(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """An index (dim 16, k=4 L=4 T=4) of 800 random unit items i0..i799."""
    from recall.lsh import LSHIndex

    index = LSHIndex(LSHParams(dim=16, k=4, L=4, T=4, w=1.0))
    index.add([f"i{j}" for j in range(800)], unit(rng, 800, 16))
    return index


def test_a_query_of_any_norm_finds_what_its_unit_query_finds():
    rng = np.random.default_rng(6)
    index = random_unit_index(rng)
    q = unit(rng, 10, 16)
    for scale in (1.0, 1.01, 7.0):
        got = index.search(q * np.float32(scale), 5)
        ref = index.search(normalize(q * np.float32(scale)), 5)
        assert_same_rows(got, ref)


def test_a_single_query_of_any_norm_dtype_or_layout_finds_what_its_unit_row_finds():
    """One 1-D query (the worker's call takes a shorter path when it is unit float32)
    answers as the same query normalised in a batch; bad k and shapes are refused."""
    rng = np.random.default_rng(7)
    index = random_unit_index(rng)
    q = unit(rng, 8, 16)
    for scale in (1.0, 1.01, 7.0):
        ref = index.search(normalize(q * np.float32(scale)), 5)
        for variant in (q * np.float32(scale), (q * scale).astype(np.float64),
                        np.asfortranarray(np.repeat(q * np.float32(scale), 2, axis=1))[:, ::2]):
            got = [index.search(row, 5)[0] for row in variant]
            assert_same_rows(got, ref)
    for bad_k in (0, True, 2.0):
        with pytest.raises(ValueError):
            index.search(q[0], bad_k)
    with pytest.raises(ValueError):
        index.search(q[0, :8].copy(), 5)


@pytest.mark.parametrize("prefix", [0, 4])
@pytest.mark.parametrize("bits", [1, 3, 12])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_radix_directory_is_the_first_key_at_or_above_each_top_bits_value(bits, dtype,
                                                                          prefix):
    """The bucket table's directory: for every d, the first sorted key whose top bits (in
    signed order) after the ``prefix`` bits of the table's part are >= d, and the most
    keys under one d; as the counting definition (bincount of the top bits, cumulated)
    gives it."""
    rng = np.random.default_rng(bits)
    keys = np.unique(np.concatenate([
        rng.integers(-2**63, 2**63 - 1, 3000, dtype=np.int64, endpoint=True),
        rng.integers(-5, 5, 10, dtype=np.int64),  # clustered around 0: a wide cell
        np.array([-2**63, 2**63 - 1], dtype=np.int64)]))
    if prefix:  # the keys of one part: their first 4 bits (signed order) 1000, as 0's
        keys = keys[(keys.view(np.uint64) >> np.uint64(60)) == 0]
    shift = 64 - bits
    top = ((keys.view(np.uint64) ^ np.uint64(1 << 63)) << np.uint64(prefix)) >> np.uint64(
        shift)
    want = np.zeros(2**bits + 1, dtype=np.int64)
    np.cumsum(np.bincount(top.astype(np.int64), minlength=2**bits), out=want[1:])
    for part in (keys, keys[:1], keys[len(keys) // 2:]):
        top_p = ((part.view(np.uint64) ^ np.uint64(1 << 63)) << np.uint64(prefix)
                 ) >> np.uint64(shift)
        expect = np.zeros(2**bits + 1, dtype=np.int64)
        np.cumsum(np.bincount(top_p.astype(np.int64), minlength=2**bits), out=expect[1:])
        got = np.full(2**bits + 1, -7, dtype=dtype)
        widest = kernels.radix_directory(part, prefix, shift, got)
        np.testing.assert_array_equal(got, expect)
        assert widest == np.diff(expect).max()
    assert want[-1] == len(keys)


@pytest.mark.parametrize("stale", [0.0, 0.3, 1.0])
def test_a_merge_equals_a_dict_of_bucket_lists(stale):
    """SortedBuckets.merged (the compiled one-pass merge) against a dict key -> slots:
    kept entries in their order, then each new entry at the end of its bucket, buckets
    left empty dropped, new keys inserted in order; keys collide between old and new,
    repeat among the new, and fall before, between and after the old ones."""
    from recall.lsh.buckets import SortedBuckets

    rng = np.random.default_rng(9)
    keys = np.sort(rng.integers(-50, 50, 400)) * 2**40  # many entries per bucket
    slots = rng.permutation(400).astype(np.int32)
    table = SortedBuckets(keys, slots, prefix=0)  # a table of one part
    keep = rng.random(400) >= stale
    new_keys = np.sort(rng.integers(-70, 70, 150), kind="stable") * 2**40 + 2**40 * (
        rng.random(150) < 0.2)  # some between the old keys
    new_keys = np.sort(new_keys, kind="stable")
    new_slots = (1000 + np.arange(150)).astype(np.int32)
    ref: dict[int, list[int]] = {}
    for key, slot, ok in zip(keys.tolist(), slots.tolist(), keep.tolist(), strict=True):
        if ok:
            ref.setdefault(key, []).append(slot)
    for key, slot in zip(new_keys.tolist(), new_slots.tolist(), strict=True):
        ref.setdefault(key, []).append(slot)
    for got in (table.merged(keep, new_keys, new_slots),
                table.merged(None if stale == 0 else keep, new_keys, new_slots)):
        assert got.ukeys.tolist() == sorted(ref)
        assert got.starts[-1] == got.size == len(got.slots) == sum(map(len, ref.values()))
        for b, key in enumerate(got.ukeys.tolist()):
            assert got.slots[got.starts[b]:got.starts[b + 1]].tolist() == ref[key]
        lo, hi = got.lookup(np.array(sorted(ref), dtype=np.int64))
        assert (hi - lo).tolist() == [len(ref[k]) for k in sorted(ref)]
    empty = table.merged(np.zeros(400, dtype=bool), new_keys[:0], new_slots[:0])
    assert empty.size == 0 and len(empty.ukeys) == 0


def test_warm_up_compiles_the_types_a_build_uses():
    """A re-layout's build (a move, in a running worker) must not compile its kernels
    for other array types than the warm-up did (the cells' offsets are int32)."""
    from recall.lsh import LSHIndex

    kernels.warm_up()
    fns = (kernels.count_cells, kernels.scatter_cells, kernels.finish_cells,
           kernels.unique_csr, kernels.radix_directory)
    before = {fn: len(fn.signatures) for fn in fns}
    rng = np.random.default_rng(3)
    staged = LSHIndex(LSHParams(dim=16, k=4, L=4, seed=3))
    staged.stage([f"s{j}" for j in range(300)], unit(rng, 300, 16))
    staged.build()
    assert {fn: len(fn.signatures) for fn in fns} == before
