"""The LSH hasher and index: determinism, incremental writes, exactness, recall, errors."""

from __future__ import annotations

import asyncio
import math
import mmap

import numpy as np
import pytest

import recall.lsh.hashing as lsh_hashing
import recall.lsh.index as lsh_index
import recall.lsh.reserve as reserve
from offline.synthetic import clustered_catalogue, user_like_queries
from recall.lsh import Hasher, LSHIndex, LSHParams, normalize
from recall.tunejudge import exact_topk, recall_at_k


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return normalize(rng.standard_normal((n, dim)))


def small_index(n: int = 600, dim: int = 16, seed: int = 0, **params) -> tuple[LSHIndex,
                                                                              np.ndarray]:
    rng = np.random.default_rng(seed)
    x = unit(rng, n, dim)
    index = LSHIndex(LSHParams(dim=dim, **params))
    index.add([f"i{j}" for j in range(n)], x)
    return index, x


# every bucket of every table is probed: simhash with k=3 has 8 codes, T=8 reads them all
ALL_PROBES = {"family": "simhash", "k": 3, "L": 2, "T": 8}


# ------------------------------------------------------------------ hasher


@pytest.mark.parametrize("family", ["pstable", "simhash"])
def test_same_params_and_seed_give_same_keys_in_separate_hashers(family):
    x = unit(np.random.default_rng(1), 300, 24)
    params = LSHParams(family=family, dim=24, k=6, L=5, seed=7)
    a = Hasher(params).keys(x)
    b = Hasher(LSHParams.from_dict(params.to_dict())).keys(x)
    assert a.dtype == np.int64 and a.shape == (300, 5)
    np.testing.assert_array_equal(a, b)
    other = Hasher(LSHParams(family=family, dim=24, k=6, L=5, seed=8)).keys(x)
    assert (other != a).mean() > 0.5


@pytest.mark.parametrize("family", ["pstable", "simhash"])
def test_keys_do_not_depend_on_batch_size(family, monkeypatch):
    x = unit(np.random.default_rng(2), 257, 32)
    hasher = Hasher(LSHParams(family=family, dim=32, k=8, L=4, w=0.5))
    whole = hasher.keys(x)
    one_by_one = np.vstack([hasher.keys(row) for row in x])
    np.testing.assert_array_equal(whole, one_by_one)
    monkeypatch.setattr(lsh_hashing, "_HASH_BLOCK", 10)  # blocks that split the batch unevenly
    np.testing.assert_array_equal(hasher.keys(x), whole)
    np.testing.assert_array_equal(hasher.keys(x[3:50]), whole[3:50])


@pytest.mark.parametrize("family", ["pstable", "simhash"])
def test_probe_keys_start_with_the_home_bucket_and_are_distinct(family):
    x = unit(np.random.default_rng(3), 50, 16)
    hasher = Hasher(LSHParams(family=family, dim=16, k=6, L=4, T=10))
    probes = hasher.probe_keys(x)
    assert probes.shape == (50, 4, 10)
    np.testing.assert_array_equal(probes[:, :, 0], hasher.keys(x))
    for table_rows in probes:
        for row in table_rows:
            assert len(set(row.tolist())) == len(row)
    assert hasher.probe_keys(x, probes=3).shape == (50, 4, 3)  # fewer at run time


def test_normalize_is_idempotent_and_unit():
    x = np.random.default_rng(4).standard_normal((20, 8)) * 5
    once = normalize(x)
    assert once.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(once, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(normalize(once), once)


def test_normalize_handles_huge_finite_values_without_overflow():
    out = normalize(np.array([[1e200, 1e200], [3.0, 4.0]]))
    np.testing.assert_allclose(out, [[2**-0.5, 2**-0.5], [0.6, 0.8]], rtol=1e-6)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([[1.0, 2.0], [np.nan, 1.0]], "vector 1 has NaN or infinite values"),
        ([1.0, np.inf], "vector 0 has NaN or infinite values"),
        ([[1.0, 0.0], [0.0, 0.0]], "vector 1 is a zero vector"),
        (np.array(["a", "b"]), "must be numeric"),
        (np.zeros((2, 2, 2)), "1-D or 2-D"),
    ],
)
def test_normalize_rejects_unusable_vectors_with_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        normalize(bad)


# ------------------------------------------------------------------ params


def test_params_round_trip_through_dict():
    params = LSHParams(family="simhash", dim=32, k=12, L=9, w=0.5, T=3, seed=5, cap=100)
    assert LSHParams.from_dict(params.to_dict()) == params
    assert LSHParams.from_dict({"k": 4.0, "dim": "16"}) == LSHParams(k=4, dim=16)
    assert params.describe() == "simhash k=12 L=9 T=3 cap=100"


@pytest.mark.parametrize(
    "bad",
    [
        {"family": "cosine"},
        {"k": 0},
        {"k": 65},
        {"L": -1},
        {"T": 0},
        {"dim": 0},
        {"w": 0.0},
        {"w": math.nan},
        {"w": math.inf},
        {"seed": -1},
        {"cap": -5},
        {"k": True},
        {"k": 2.5},
        {"tables": 4},
        {"k": "many"},
    ],
)
def test_params_reject_bad_values(bad):
    with pytest.raises(ValueError):
        LSHParams.from_dict(bad)


def test_params_from_dict_needs_a_dict():
    with pytest.raises(ValueError, match="JSON object"):
        LSHParams.from_dict([("k", 4)])  # type: ignore[arg-type]


# ------------------------------------------------------------------ index: reads


@pytest.mark.parametrize("family", ["pstable", "simhash"])
def test_query_equals_exact_topk_when_every_bucket_is_probed(family):
    params = ALL_PROBES if family == "simhash" else {"family": "pstable", "k": 1, "L": 1,
                                                     "w": 64.0, "T": 1}
    index, x = small_index(n=500, dim=12, **params)
    rng = np.random.default_rng(5)
    for q in rng.standard_normal((30, 12)):
        got, want = index.search(q, 10)[0], index.search(q, 10, exact=True)[0]
        assert got.candidates == 500
        assert got.ids == want.ids
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
        truth = exact_topk(x, normalize(q)[None, :], 10)[0]
        assert {f"i{j}" for j in truth} == set(got.ids)


def test_scores_are_cosines_best_first_and_exclusions_hold():
    index, x = small_index(**ALL_PROBES)
    q = x[7] + 0.1 * x[8]
    res = index.search(q, 5)[0]
    assert res.ids[0] == "i7"
    assert list(res.scores) == sorted(res.scores, reverse=True)
    # the cosine of the stored row (float16, VECTOR_DTYPE) and the query, and so within
    # half-precision rounding of the float32 one
    stored = x[7].astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(res.scores[0], stored @ normalize(q).astype(np.float64),
                               rtol=1e-6)
    np.testing.assert_allclose(res.scores[0], float(x[7] @ normalize(q)), atol=3e-4)
    res2 = index.search(q, 5, [{"i7", "nope"}])[0]
    assert "i7" not in res2.ids and res2.ids[0] == res.ids[1]
    assert len(index.search(q, 10_000)[0].ids) == len(index)


@pytest.mark.parametrize("family", ["pstable", "simhash"])
def test_recall_on_clustered_data_is_high_with_few_candidates(family):
    n, dim = 20_000, 32
    x, labels = clustered_catalogue(n, dim, seed=3)
    q = user_like_queries(x, labels, 200, seed=4)
    truth = exact_topk(x, q, 10)
    params = (LSHParams(family="pstable", dim=dim, k=6, L=12, w=1.25, T=8)
              if family == "pstable" else LSHParams(family="simhash", dim=dim, k=14, L=12,
                                                    T=8))
    index = LSHIndex(params)
    index.add([str(i) for i in range(n)], x)
    results = [index.search(qi, 10)[0] for qi in q]
    recall = recall_at_k([[int(i) for i in r.ids] for r in results], truth)
    candidates = np.mean([r.candidates for r in results])
    assert recall >= 0.9, recall
    assert candidates <= n / 5, candidates  # it is an index, not a scan
    # a broken index (home bucket of one table only) does much worse: the test can fail
    index.probes = 1
    weak = LSHIndex(LSHParams.from_dict({**params.to_dict(), "L": 1, "T": 1}))
    weak.add([str(i) for i in range(n)], x)
    weak_recall = recall_at_k([[int(i) for i in weak.search(qi, 10)[0].ids] for qi in q], truth)
    assert weak_recall < 0.8


def test_cap_limits_candidates_per_bucket():
    index, _ = small_index(n=2000, dim=8, family="simhash", k=2, L=3, T=1)
    q = np.ones(8)
    full = index.search(q, 10)[0].candidates
    index.probes, index.cap = 1, 5
    assert index.search(q, 10)[0].candidates <= 15 < full


@pytest.mark.parametrize("compiled", [True, False])
def test_a_capped_crowded_bucket_does_not_hide_its_later_items(compiled):
    # 60 near-identical items share one bucket in every table; the last 30 arrive after
    # the bucket filled (a merge appends them at its end). With cap 10, reading the
    # first 10 entries of the bucket never reached them: each item queried with its own
    # vector must be its own top answer for many of them
    rng = np.random.default_rng(3)
    x = normalize(np.ones(8) + 0.05 * rng.standard_normal((60, 8)))
    index = LSHIndex(LSHParams(dim=8, family="pstable", k=2, L=4, w=100.0, T=1, cap=10))
    index.compiled = compiled
    index.MERGE_MIN = 8  # the later batch goes straight into the sorted table
    ids = [f"i{j}" for j in range(60)]
    index.add(ids[:30], x[:30])
    index.add(ids[30:], x[30:])
    assert index.stats()["pending_items"] == 0 and index.stats()["buckets"] == 4
    later = [j for j in range(30, 60) if index.search(x[j], 1)[0].ids == [ids[j]]]
    assert len(later) >= 5, later
    assert all(r.candidates <= 40 for r in index.search(x, 1))  # 10 per table at most


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("family", ["pstable", "simhash"])
def test_probes_given_to_one_search_answer_as_that_t_set_on_the_index_would(compiled,
                                                                             family):
    # the recall monitor measures the answers of the next lower T beside those served:
    # a search with probes=t must be the search the index gives at T=t, and leave T alone
    index, x = small_index(n=3000, family=family, k=6, L=4, T=6)
    index.compiled = compiled
    q = x[:40] + 0.3 * unit(np.random.default_rng(9), 40, x.shape[1])
    skip = [{f"i{j}"} for j in range(40)]
    served = index.search(q, 10, skip)
    for t in (1, 2, 4):
        other = index.search(q, 10, skip, probes=t)
        assert index.probes == 6
        index.probes = t
        assert [r.ids for r in other] == [r.ids for r in index.search(q, 10, skip)]
        assert sum(r.candidates for r in other) < sum(r.candidates for r in served)
        index.probes = 6
    assert [r.ids for r in index.search(q, 10, skip)] == [r.ids for r in served]
    with pytest.raises(ValueError, match="probes"):
        index.search(q, 10, skip, probes=0)


def test_an_index_grows_where_the_system_refuses_big_reservations(monkeypatch):
    # under strict overcommit (vm.overcommit_memory=2) the kernel counts a whole
    # MAP_NORESERVE mapping against the commit limit and refuses it: the index must
    # still load and answer, growing by copies, not fail to start
    real = reserve.reserve
    refused = []

    def strict(rows, dtype, tail=()):
        if rows >= reserve.MIN_ROWS:
            refused.append(rows)
            raise OSError(12, "Cannot allocate memory")
        return real(rows, dtype, tail)

    monkeypatch.setattr(reserve, "reserve", strict)
    rng = np.random.default_rng(6)
    index = LSHIndex(LSHParams(dim=16, k=4, L=4, T=2))
    x = unit(rng, 3000, 16)
    ids = [f"i{i}" for i in range(3000)]
    for lo in range(0, 3000, 500):
        index.add(ids[lo:lo + 500], x[lo:lo + 500])
    assert refused, "the big reservation was never asked for"
    assert len(index._vecs) < reserve.MIN_ROWS
    got, present = index.vectors_of(ids)
    assert present.all()
    np.testing.assert_allclose(got, x, atol=1e-3)
    assert [r.ids[0] for r in index.search(x[::97], 1)] == ids[::97]


def test_the_vector_matrix_starts_on_a_page_as_it_grows():
    # a row of 64 float16 is 128 bytes: two cache lines only when rows start on a line
    # (numpy's big arrays start 16 bytes into a page: every row read three lines)
    rng = np.random.default_rng(4)
    index = LSHIndex(LSHParams(dim=64))
    index.reserve(200_000)
    assert index._vecs.ctypes.data % 4096 == 0 and index._vecs.shape == (200_000, 64)
    x = unit(rng, 3, 64)
    index.add(["a", "b", "c"], x)
    index._grow(300_000)  # grown: the rows are copied into a new aligned matrix
    assert index._vecs.ctypes.data % 4096 == 0 and index._vecs.flags.c_contiguous
    got, present = index.vectors_of(["a", "b", "c"])
    assert present.all()
    np.testing.assert_allclose(got, x, atol=1e-3)
    assert [r.ids[0] for r in index.search(x, 1)] == ["a", "b", "c"]


@pytest.mark.parametrize("room", [True, False])
def test_growing_keeps_the_rows_in_place_until_the_reservation_is_outgrown(monkeypatch,
                                                                          room):
    # a catalogue streamed in grows the index many times: each growth used to copy the
    # vector matrix (old and new resident at once); now the rows stay where they are,
    # and a reservation outgrown (room=False: reservations of just the rows needed, so
    # every growth) copies them into a new one
    if not room:
        monkeypatch.setattr(reserve, "MIN_ROWS", 1)
        monkeypatch.setattr(reserve, "GROWTH", 1)
    rng = np.random.default_rng(5)
    index = LSHIndex(LSHParams(dim=16, k=4, L=4, T=2))
    x = unit(rng, 3000, 16)
    ids = [f"i{i}" for i in range(3000)]
    index.add(ids[:1000], x[:1000])
    before = {name: getattr(index, name) for name in ("_vecs", "_alive", "_in_main")}
    for lo in range(1000, 3000, 250):  # grows from 1,024 slots to 3,000 and more
        index.add(ids[lo:lo + 250], x[lo:lo + 250])
    assert index._capacity >= 3000
    for name, arr in before.items():
        assert np.shares_memory(getattr(index, name), arr) == room, name
    assert index._vecs.ctypes.data % 4096 == 0
    got, present = index.vectors_of(ids)
    assert present.all()
    np.testing.assert_allclose(got, x, atol=1e-3)
    assert [r.ids[0] for r in index.search(x[::97], 1)] == ids[::97]
    fresh = LSHIndex(index.params)
    fresh.add(ids, x)
    q = unit(rng, 20, 16)
    assert ([r.ids for r in index.search(q, 10)] == [r.ids for r in fresh.search(q, 10)])


def test_query_rejects_bad_input():
    index, _ = small_index(n=50)
    with pytest.raises(ValueError, match="unusable query: query 0 has NaN"):
        index.search(np.full(16, np.nan), 5)
    with pytest.raises(ValueError, match="unusable query: query 0 is a zero vector"):
        index.search(np.zeros(16), 5)
    batch = np.ones((4, 16))
    batch[2] = 0.0
    with pytest.raises(ValueError, match="query 2 is a zero vector"):  # names the row
        index.search(batch, 5)
    with pytest.raises(ValueError, match="dimension 16"):
        index.search(np.ones(15), 5)
    for k in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="k must be"):
            index.search(np.ones(16), k)


def test_empty_index_returns_nothing():
    index = LSHIndex(LSHParams(dim=4))
    res = index.search(np.ones(4), 3)[0]
    assert res.ids == [] and res.candidates == 0
    assert index.search(np.ones(4), 3, exact=True)[0].ids == []


# ------------------------------------------------------------------ index: writes


@pytest.fixture(params=["pending", "merged"])
def merge_mode(request):
    """'pending': writes stay in the pending buckets; 'merged': every write is merged."""
    return request.param


def make_index(mode: str, dim: int = 16, **params) -> LSHIndex:
    index = LSHIndex(LSHParams(dim=dim, **(params or ALL_PROBES)))
    if mode == "merged":
        index.MERGE_MIN = 1
        index.MERGE_RATIO = 10**9
    else:
        index.MERGE_MIN = 10**9
    return index


def test_add_update_remove_single_items_without_rebuild(merge_mode):
    rng = np.random.default_rng(6)
    x = unit(rng, 300, 16)
    index = make_index(merge_mode)
    for j in range(300):
        index.add([f"i{j}"], x[j])
    assert len(index) == 300 and "i5" in index
    assert index.search(x[5], 1)[0].ids == ["i5"]

    new = unit(rng, 1, 16)[0]
    index.add(["i5"], new)  # update: moves to its new place
    assert len(index) == 300
    assert index.search(new, 1)[0].ids == ["i5"]
    np.testing.assert_allclose(index.search(new, 1)[0].scores[0], 1.0, atol=3e-4)
    assert index.search(x[5], 1)[0].ids != ["i5"] or float(new @ x[5]) > 0.99
    np.testing.assert_array_equal(index.vectors_of(["i5"])[0][0], new.astype(np.float16))

    assert index.remove(["i9"]) == 1
    assert index.remove(["i9", "unknown"]) == 0
    assert "i9" not in index and len(index) == 299
    for q in (x[9], x[9] + 0.01 * x[10]):
        assert "i9" not in index.search(q, 300)[0].ids
        assert "i9" not in index.search(q, 300, exact=True)[0].ids


def test_add_update_remove_many_and_never_return_removed(merge_mode):
    rng = np.random.default_rng(7)
    x = unit(rng, 1000, 16)
    ids = [f"i{j}" for j in range(1000)]
    index = make_index(merge_mode)
    index.add(ids[:600], x[:600])
    index.add(ids[600:], x[600:])
    moved = unit(rng, 100, 16)
    index.add(ids[:100], moved)  # update many
    gone = set(ids[100:400])
    assert index.remove(sorted(gone)) == 300
    index.add(["late"], x[150])  # reuses a freed slot
    assert len(index) == 701
    for j in rng.integers(0, 1000, 60):
        q = moved[j] if j < 100 else x[j]
        got = index.search(q, 50)[0]
        assert not gone & set(got.ids)
        assert got.ids == index.search(q, 50, exact=True)[0].ids  # every bucket probed: exact
        if j < 100 or j >= 400:
            assert got.ids[0] == ids[j]
    assert index.search(x[150], 1)[0].ids == ["late"]
    stats = index.stats()
    assert stats["items"] == 701
    if merge_mode == "merged":
        assert stats["merges"] > 0 and stats["pending_items"] == 0
    else:
        assert stats["merges"] == 0


def test_pending_and_merged_indexes_answer_the_same():
    rng = np.random.default_rng(8)
    x = unit(rng, 800, 16)
    ids = [f"i{j}" for j in range(800)]
    params = {"family": "pstable", "k": 4, "L": 6, "w": 1.0, "T": 4}
    a, b = make_index("pending", **params), make_index("merged", **params)
    for index in (a, b):
        for start in range(0, 800, 37):
            index.add(ids[start : start + 37], x[start : start + 37])
        index.remove(ids[::7])
    for q in unit(rng, 40, 16):
        ra, rb = a.search(q, 10)[0], b.search(q, 10)[0]
        assert ra.ids == rb.ids and ra.candidates == rb.candidates


def test_duplicate_ids_in_one_batch_keep_the_last_vector():
    rng = np.random.default_rng(9)
    x = unit(rng, 3, 16)
    index = make_index("pending")
    index.add(["a", "b", "a"], x)
    assert len(index) == 2
    np.testing.assert_array_equal(index.vectors_of(["a"])[0][0], x[2].astype(np.float16))


def test_add_rejects_bad_input_and_leaves_the_index_unchanged():
    index = make_index("pending")
    index.add(["a"], np.ones(16))
    with pytest.raises(ValueError, match="zero vector"):
        index.add(["b", "c"], np.vstack([np.ones(16), np.zeros(16)]))
    with pytest.raises(ValueError, match="NaN"):
        index.add(["b"], np.full(16, np.nan))
    with pytest.raises(ValueError, match="2 ids but 1 vectors"):
        index.add(["b", "c"], np.ones((1, 16)))
    with pytest.raises(ValueError, match="shape"):
        index.add(["b"], np.ones((1, 8)))
    with pytest.raises(ValueError, match="not a single string"):
        index.add("b", np.ones((1, 16)))
    with pytest.raises(ValueError, match="must be strings"):
        index.add([1], np.ones((1, 16)))
    assert len(index) == 1 and "a" in index


def test_bulk_add_above_the_merge_threshold_goes_straight_to_the_sorted_arrays():
    index, x = small_index(n=5000, dim=16, family="pstable", k=4, L=4, T=2)
    stats = index.stats()
    assert stats["pending_items"] == 0 and stats["sorted_entries"] == 5000 * 4
    assert index.nbytes() > x.nbytes


def test_a_merged_part_lives_in_mappings_of_its_own():
    """A merge's new parts are not carved from malloc's heap: each array is a view of an
    anonymous mapping of its own (unmapped once the part is replaced). From the heap, a
    replaced part stayed resident in a merge thread's arena until the trim after the
    whole merge, and the next, bigger part did not fit its hole."""
    index, _ = small_index(n=3000, L=4)  # pending: below the merge threshold
    index._merge_now()  # merged in: every part replaced
    assert index.merges == 1 and index._buckets.size == 3000 * 4
    for part in index._buckets.parts:
        for arr in (part.ukeys, part.starts, part.slots, part.directory):
            base = arr
            while isinstance(base, np.ndarray):
                base = base.base
            assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


@pytest.mark.parametrize("least", [10**9, 2000, 1])
def test_a_bulk_build_in_ranges_of_parts_gives_the_table_merges_give(monkeypatch, least):
    """build() scatters a range of the table's parts at a time (half the entries left,
    at least ``_BUILD_RANGE``, at least one part): whatever the ranges,
    every part holds the entries of its keys, in slot order within a bucket, as the
    same items merged into an empty table, big buckets (skewed data: a cell sorted by
    merge sort) and empty parts included; and each part's arrays are its own, so a
    merge replacing a part frees them."""
    monkeypatch.setattr(lsh_index, "_BUILD_RANGE", least)
    rng = np.random.default_rng(31)
    x = np.concatenate([unit(rng, 2500, 16), np.repeat(unit(rng, 3, 16), 200, axis=0)])
    ids = [f"i{j}" for j in range(len(x))]
    params = LSHParams(dim=16, family="pstable", k=3, L=5, w=0.8)
    built = LSHIndex(params)
    built.stage(ids, x)
    built.build()
    merged = LSHIndex(params)
    merged.MERGE_MIN = 1
    merged.add(ids, x)  # one batch above the merge threshold: merged into the empty table
    assert built._buckets.size == merged._buckets.size == len(x) * params.L
    for a, b in zip(built._buckets.parts, merged._buckets.parts, strict=True):
        np.testing.assert_array_equal(a.ukeys, b.ukeys)
        np.testing.assert_array_equal(a.starts, b.starts)
        np.testing.assert_array_equal(a.slots, b.slots)
        np.testing.assert_array_equal(a.directory, b.directory)
    assert all(arr.flags.owndata for part in built._buckets.parts  # no views of a whole
               for arr in (part.ukeys, part.starts, part.slots))
    q = unit(rng, 30, 16)
    assert _answers(built, q) == _answers(merged, q)


def test_build_ranges_halve_what_is_left_down_to_the_least_and_take_whole_parts():
    first = [0, 10, 20, 30, 70, 80, 80]  # six parts: 10, 10, 10, 40, 10 and 0 entries
    assert lsh_index._part_ranges(first, 25) == [(0, 3), (3, 4), (4, 6)]
    assert lsh_index._part_ranges(first, 80) == [(0, 6)]
    assert lsh_index._part_ranges(first, 0) == [(0, 3), (3, 4), (4, 5), (5, 6)]
    even = list(range(0, 17_000_000, 1_000_000))  # 1M x 16 entries in 16 parts
    assert lsh_index._part_ranges(even, 2_000_000) == [(0, 8), (8, 12), (12, 14), (14, 16)]


def test_a_bulk_build_hashes_its_blocks_on_one_blas_thread(monkeypatch):
    """The items' projections are small products (a block of rows by 64 x L*k): a BLAS
    pool's threads doubled the CPU of a 1M build's hashing on a shared 2-core machine, so
    item hashing holds BLAS to one thread, whatever the pool was set to."""
    from threadpoolctl import threadpool_info, threadpool_limits

    seen: list[int] = []
    fold = lsh_hashing.fold_keys  # called after each block's product

    def watched(*args):
        seen.extend(i["num_threads"] for i in threadpool_info()  # numpy's own BLAS
                    if i["user_api"] == "blas" and "numpy" in i["filepath"])
        return fold(*args)

    monkeypatch.setattr(lsh_hashing, "fold_keys", watched)
    index = LSHIndex(LSHParams(dim=16, k=4, L=4))
    index.stage([f"i{j}" for j in range(3000)], unit(np.random.default_rng(2), 3000, 16))
    with threadpool_limits(2, user_api="blas"):
        index.build()
        index.add([f"n{j}" for j in range(500)], unit(np.random.default_rng(3), 500, 16))
    assert seen and set(seen) == {1}


# ------------------------------------------------------------------ batched queries


@pytest.mark.parametrize("family,T", [("pstable", 6), ("simhash", 6), ("pstable", 1)])
def test_a_batchs_probe_keys_are_each_querys_own(family, T):
    h = Hasher(LSHParams(dim=16, family=family, k=5, L=4, T=T, w=0.8))
    q = unit(np.random.default_rng(3), 25, 16)
    many = h.probe_keys(q)
    for i in range(len(q)):
        one = h.probe_keys(q[i])[0]
        assert many[i].shape == one.shape
        assert (many[i][:, 0] == one[:, 0]).all()  # home buckets first
        assert (np.sort(many[i], axis=1) == np.sort(one, axis=1)).all()


@pytest.mark.parametrize("mode", ["pending", "merged", "stale"])
def test_a_batch_search_answers_as_one_search_per_row(mode):
    rng = np.random.default_rng(4)
    params = {"family": "pstable", "k": 4, "L": 6, "T": 4, "w": 0.9}
    index = make_index("merged" if mode != "pending" else "pending", **params)
    x = unit(rng, 800, 16)
    index.add([f"i{j}" for j in range(800)], x)
    if mode == "stale":  # removed items still in the merged table, masked out
        index.MERGE_MIN = 10**9
        index.remove([f"i{j}" for j in range(0, 800, 3)])
    q = unit(rng, 30, 16)
    ks = [1 + j % 12 for j in range(30)]
    excludes = [{f"i{j}" for j in rng.integers(0, 800, 5)} for _ in range(30)]
    many = index.search(q, ks, excludes)
    for i, res in enumerate(many):
        one = index.search(q[i], ks[i], [excludes[i]])[0]
        assert res.ids == one.ids and res.candidates == one.candidates
        assert np.array_equal(res.scores, one.scores)
    assert index.search(np.zeros((0, 16)), []) == []
    with pytest.raises(ValueError, match="k values"):
        index.search(q, ks[:-1])
    with pytest.raises(ValueError, match="exclude sets"):
        index.search(q, 3, excludes[:-1])


def test_exclusions_give_the_items_of_a_search_without_the_excluded():
    """search() ranks the top k + |excluded| and drops the excluded after: the same
    items as searching an index that never held them."""
    rng = np.random.default_rng(12)
    params = {"family": "pstable", "k": 3, "L": 4, "T": 6, "w": 1.0}
    x = unit(rng, 600, 16)
    ids = [f"i{j}" for j in range(600)]
    index = make_index("merged", **params)
    index.add(ids, x)
    for q in unit(rng, 20, 16):
        full = index.search(q, 30)[0].ids
        drop = set(full[:8:2]) | {"unknown"}
        got = index.search(q, 10, [drop])[0].ids
        assert got == [i for i in full if i not in drop][:10]
        assert index.search(q, 10, [drop], exact=True)[0].ids == [
            i for i in index.search(q, 30, exact=True)[0].ids if i not in drop][:10]


def test_probes_set_at_run_time_change_the_next_search_only():
    index, x = small_index(n=3000, dim=16, family="pstable", k=6, L=4, T=1, w=0.8)
    q = x[:20] + 0.3 * x[20:40]
    one = sum(r.candidates for r in index.search(q, 10))
    index.probes = 8
    assert index.probes == 8 and index.params.T == 8
    more = sum(r.candidates for r in index.search(q, 10))
    assert more > one
    index.probes = 1
    assert sum(r.candidates for r in index.search(q, 10)) == one
    with pytest.raises(ValueError):
        index.probes = 0


async def test_a_deferred_merge_runs_in_a_thread_and_gives_the_same_index():
    """The worker merges off its event loop: merge_off_loop() builds in a thread while
    searches read the index as it was; writes are refused until it is swapped in; the
    result answers as an inline merge."""
    rng = np.random.default_rng(9)
    params = LSHParams(dim=16, family="pstable", k=4, L=6, T=4, w=0.9)
    x = unit(rng, 3000, 16)
    ids = [f"i{j}" for j in range(3000)]
    inline, deferred = LSHIndex(params), LSHIndex(params, merge="deferred")
    for index in (inline, deferred):
        index.add(ids[:2000], x[:2000])
        index.MERGE_MIN, index.MERGE_RATIO = 500, 10**9
    q = unit(rng, 20, 16)
    for index in (inline, deferred):  # pending adds and stale removals
        for start in range(2000, 3000, 100):
            index.add(ids[start:start + 100], x[start:start + 100])
        index.remove(ids[:300:2])
    assert inline.merges > deferred.merges and deferred.merge_due()
    before = [r.ids for r in deferred.search(q, 10)]
    merging = asyncio.ensure_future(deferred.merge_off_loop())
    await asyncio.sleep(0)  # the merge's thread has started
    assert [r.ids for r in deferred.search(q, 10)] == before  # reads while it works
    with pytest.raises(RuntimeError, match="merging"):
        deferred.add(["new"], x[0])
    with pytest.raises(RuntimeError, match="merging"):
        deferred.remove(["i1"])
    assert await merging is True
    assert not deferred.merge_due() and deferred.stats()["pending_items"] == 0
    assert await deferred.merge_off_loop() is False  # nothing due
    deferred.add(["new"], x[0])  # writable again
    inline.add(["new"], x[0])
    inline._merge_now()
    for a, b in zip(inline.search(q, 10), deferred.search(q, 10), strict=True):
        assert a.ids == b.ids


def _merging_index(seed: int) -> tuple[LSHIndex, LSHIndex, np.ndarray, list[str]]:
    """A deferred index with a merge due over pending adds, updates and removals (items
    in the table, stale entries and pending ones at once), and a fresh build of the same
    items, for searches to compare while the merge goes part by part."""
    rng = np.random.default_rng(seed)
    params = LSHParams(dim=16, family="pstable", k=3, L=6, T=3, w=0.9)
    x = unit(rng, 3000, 16)
    ids = [f"i{j}" for j in range(3000)]
    index = LSHIndex(params, merge="deferred")
    index.MERGE_MIN, index.MERGE_RATIO = 500, 10**9
    index.add(ids[:2000], x[:2000])  # a bulk add: straight into the table
    for start in range(2000, 3000, 100):
        index.add(ids[start:start + 100], x[start:start + 100])
    moved = unit(rng, 200, 16)
    index.add(ids[:400:2], moved)  # updates: stale in the table, pending again
    index.remove(ids[1:600:3])  # removals: stale
    index.add(ids[2500:2600], moved[:100])  # pending items updated while pending
    index.remove(ids[2900:2950])  # and removed while pending
    assert index.merge_due() and index._n_pending and index._stale
    fresh = LSHIndex(params)
    current = [i for i in ids if i in index]
    fresh.add(current, index.vectors_of(current)[0])
    return index, fresh, unit(rng, 40, 16), current


def _answers(index: LSHIndex, q: np.ndarray) -> list[tuple[list[str], int]]:
    return [(r.ids, r.candidates) for r in index.search(q, 10)]


@pytest.mark.parametrize("vote", [1, 2])
async def test_searches_between_the_parts_of_a_merge_answer_as_a_fresh_build(monkeypatch,
                                                                             vote):
    """A merge swaps the table in one part at a time; a search on the event loop between
    two parts finds every current item once (the parts merged hold the pending items,
    the others are read with the pending buckets), none removed, none stale: the same
    ids and the same candidate counts (vote = 2 counts every table an item is found in:
    an item found twice in one table would count twice) as a fresh build, compiled and
    numpy, at every step; and after it."""
    index, fresh, q, _ = _merging_index(10)
    index.vote = fresh.vote = vote
    want = _answers(fresh, q)
    seen_parts = []
    swap = index._swap_part

    def swap_and_search(job, part):  # the loop's turn between two parts
        swap(job, part)
        seen_parts.append(index._buckets.fresh)
        for compiled in (True, False):
            index.compiled = compiled
            assert _answers(index, q) == want, (compiled, index._buckets.fresh)
        index.compiled = True

    monkeypatch.setattr(index, "_swap_part", swap_and_search)
    assert _answers(index, q) == want
    assert await index.merge_off_loop() is True
    assert seen_parts == list(range(1, len(index._buckets.parts) + 1))
    assert index._buckets.fresh == 0 and not index._pending and index._stale == 0
    assert _answers(index, q) == want
    index.compiled = False
    assert _answers(index, q) == want


async def test_a_forced_merge_folds_what_is_pending_before_it_is_due():
    """merge_off_loop(force=True) (a re-layout folds the served layout's pending buckets
    into its table before building the new one, so their memory is not held beside it)
    merges pending items and stale entries below the merge threshold, the answers those
    of a fresh build; with nothing pending or stale it does nothing."""
    index, fresh, q, _ = _merging_index(14)
    index.MERGE_MIN = 10**9  # far from due
    assert not index.merge_due() and index._n_pending and index._stale
    want = _answers(fresh, q)
    assert await index.merge_off_loop() is False
    assert await index.merge_off_loop(force=True) is True
    assert not index._pending and index._n_pending == 0 and index._stale == 0
    assert _answers(index, q) == want
    assert await index.merge_off_loop(force=True) is False


async def test_a_merge_stopped_by_an_error_is_finished_before_the_next_write(monkeypatch):
    """A part that fails (memory, say) leaves the merged parts served and the others
    waiting: searches still answer as a fresh build; the next write finishes the merge
    first (so no new pending item lands in a part read without pending buckets), and a
    later merge_off_loop() would resume it."""
    index, fresh, q, _ = _merging_index(11)
    want = _answers(fresh, q)
    merge_part = index._merge_part

    def fail_at_5(job):
        if job.next == 5:
            raise MemoryError("part 5")
        return merge_part(job)

    monkeypatch.setattr(index, "_merge_part", fail_at_5)
    with pytest.raises(MemoryError):
        await index.merge_off_loop()
    assert index._buckets.fresh == 5 and index._pending
    assert _answers(index, q) == want
    monkeypatch.setattr(index, "_merge_part", merge_part)
    rng = np.random.default_rng(12)
    extra = unit(rng, 3, 16)
    index.add(["n1", "n2", "n3"], extra)  # finishes the merge, then adds
    fresh.add(["n1", "n2", "n3"], extra)
    assert index._buckets.fresh == 0 and index._n_pending == 3
    assert _answers(index, q) == _answers(fresh, q)
    assert [r.ids[0] for r in index.search(extra, 1)] == ["n1", "n2", "n3"]


async def test_a_stopped_merge_is_resumed_off_the_loop(monkeypatch):
    index, fresh, q, _ = _merging_index(13)
    merge_part = index._merge_part
    calls = []

    def fail_once_at_9(job):
        calls.append(job.next)
        if job.next == 9 and calls.count(9) == 1:
            raise MemoryError("part 9")
        return merge_part(job)

    monkeypatch.setattr(index, "_merge_part", fail_once_at_9)
    with pytest.raises(MemoryError):
        await index.merge_off_loop()
    assert await index.merge_off_loop() is True
    assert calls == [*range(10), *range(9, 16)]  # parts merged once, from where it stopped
    assert index._buckets.fresh == 0 and not index._pending and index._stale == 0
    assert _answers(index, q) == _answers(fresh, q)


def test_merge_mode_is_checked():
    with pytest.raises(ValueError, match="merge must be"):
        LSHIndex(LSHParams(dim=4), merge="auto")  # type: ignore[arg-type]


def test_a_relayout_answers_as_a_fresh_build_and_takes_the_vectors_over():
    """A re-pick's new layout over the same items (LSHIndex.relayout) must answer as an
    index built afresh with those parameters, pending items, updates and removals
    included; it holds the same vector matrix and ids (no second copy of the catalogue:
    the point of it), and the old index, whose arrays it took, refuses writes."""
    rng = np.random.default_rng(10)
    x = unit(rng, 3000, 16)
    ids = [f"i{j}" for j in range(3000)]
    old = LSHIndex(LSHParams(dim=16, family="pstable", k=3, L=4, T=2, w=0.9),
                   merge="deferred")
    old.MERGE_MIN, old.MERGE_RATIO = 1000, 10**9
    old.add(ids[:2500], x[:2500])  # into the sorted table
    old.add(ids[2500:], x[2500:])  # pending: not merged yet
    old.add(ids[:40], x[100:140])  # updates
    old.remove(ids[200:260])
    assert old.stats()["pending_items"] > 0 and old.stats()["stale_items"] > 0
    params = LSHParams(dim=16, family="pstable", k=5, L=6, T=3, w=0.9)
    new = old.relayout(params)
    fresh = LSHIndex(params)
    live = [i for i in ids if i in old]
    fresh.add(live, np.stack([x[100 + j] if j < 40 else x[j] for j in map(int, (
        i[1:] for i in live))]))
    q = unit(rng, 60, 16)
    for a, b in zip(new.search(q, 10), fresh.search(q, 10), strict=True):
        assert a.ids == b.ids and a.candidates == b.candidates
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    assert new.params == params and len(new) == len(fresh)
    assert np.shares_memory(new._vecs, old._vecs) and new._ids is old._ids
    with pytest.raises(RuntimeError, match="new layout"):
        old.add(["x"], x[0])
    new.add(["x"], x[0])  # the new one is writable
    new.remove(ids[:5])
    assert "x" in new and ids[0] not in new


async def test_a_catalogue_streaming_in_keeps_at_most_a_64th_of_its_items_pending():
    """Pending items cost ~500 bytes each in their buckets, and a merge's temporaries
    grow with them: a worker streaming a catalogue in (batches, merged off its loop when
    due) holds at most items / 64 pending past MERGE_MIN (plus the batch that made the
    merge due), which bounds the teeth of its RSS at 1M items (~45 MB at 1/16)."""
    rng = np.random.default_rng(3)
    index = LSHIndex(LSHParams(dim=8, k=4, L=2, T=1, seed=1), merge="deferred")
    index.MERGE_MIN = 16
    batch, over = 50, []
    for start in range(0, 40_000, batch):
        index.add([f"i{i}" for i in range(start, start + batch)], unit(rng, batch, 8))
        if index._n_pending > max(16, len(index) // 64) + batch:
            over.append((len(index), index._n_pending))
        await index.merge_off_loop()
    assert over == []
    assert index.merges > 0
