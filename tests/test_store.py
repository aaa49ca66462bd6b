"""The Redis store against a real redis-server (tests/conftest.py starts it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from recall.store import Keys, Store
from recall.users import RollingUserVectors, UserState

pytestmark = pytest.mark.integration

DIM, L = 8, 4


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[Store]:
    s = Store.from_url(redis_url, redis_prefix)
    yield s
    await s.close()


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fake_keys(vectors: np.ndarray) -> np.ndarray:
    """Deterministic bucket keys (sign bits of a few coordinates) standing in for Hasher."""
    bits = (vectors[:, :2 * L] > 0).astype(np.int64).reshape(len(vectors), L, 2)
    return bits[:, :, 0] * 2 + bits[:, :, 1] - 1  # -1..2: several items per bucket


async def all_items(store: Store, v: int, batch: int = 7) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    async for ids, mat in store.iter_items(v, batch):
        assert mat.shape == (len(ids), DIM) and mat.dtype == np.float32
        out.update(zip(ids, mat, strict=True))
    return out


async def membership(store: Store, v: int, keys: np.ndarray) -> dict[tuple[int, int], set[str]]:
    return {(t, int(k)): await store.bucket_members(v, t, int(k))
            for t in range(L) for k in np.unique(keys[:, t])}


async def test_versions_and_atomic_switch(store: Store) -> None:
    assert await store.live_version() is None
    params = {"family": "pstable", "dim": DIM, "k": 2, "L": L, "w": 4.0, "T": 3, "seed": 1}
    v1 = await store.create_version(params, DIM)
    v2 = await store.create_version(params, DIM)
    assert v2 > v1
    meta = await store.get_meta(v1)
    assert meta is not None and meta["params"] == params and meta["dim"] == DIM
    assert await store.get_meta(v2 + 100) is None
    assert await store.live_version() is None  # not live until switched

    pubsub = store.r.pubsub()
    await pubsub.subscribe(store.keys.events_channel)
    await pubsub.get_message(timeout=1.0)  # subscribe confirmation
    await store.switch_live(v1)
    assert await store.live_version() == v1
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
    assert msg is not None and msg["data"] == str(v1).encode()
    await pubsub.aclose()

    with pytest.raises(ValueError, match="does not exist"):
        await store.switch_live(v2 + 100)
    assert await store.versions() == [v1, v2]


async def test_items_round_trip_and_rebuild_from_redis_alone(store: Store,
                                                             redis_url: str) -> None:
    rng = np.random.default_rng(1)
    v = await store.create_version({"L": L}, DIM)
    ids = [f"item-{i}" for i in range(50)]
    vecs = unit(rng, 50)
    keys = fake_keys(vecs)
    await store.upsert_items(v, ids, vecs, keys)
    assert await store.items_count(v) == 50

    # a fresh process: only the URL and prefix
    other = Store.from_url(redis_url, store.keys.prefix)
    try:
        got = await all_items(other, v)
        assert set(got) == set(ids)
        for i, item in enumerate(ids):
            np.testing.assert_array_equal(got[item], vecs[i])  # exact float32 bytes
        mat, present = await other.get_vectors(v, [*ids[:3], "nope"], DIM)
        assert present.tolist() == [True, True, True, False]
        np.testing.assert_array_equal(mat[:3], vecs[:3])
        assert not mat[3].any()
    finally:
        await other.close()

    # membership is exactly what the keys say
    got_keys, present = await store.get_keys(v, [*ids, "nope"], L)
    assert present.tolist() == [True] * 50 + [False]
    np.testing.assert_array_equal(got_keys[:50], keys)
    members = await membership(store, v, keys)
    for (t, k), got_ids in members.items():
        assert got_ids == {ids[i] for i in np.flatnonzero(keys[:, t] == k)}


async def test_upsert_moves_buckets_and_remove_clears_them(store: Store) -> None:
    rng = np.random.default_rng(2)
    v = await store.create_version({"L": L}, DIM)
    ids = [f"i{i}" for i in range(30)]
    vecs = unit(rng, 30)
    keys = fake_keys(vecs)
    await store.upsert_items(v, ids, vecs, keys)

    # move 10 items to new vectors (new buckets); old membership must go
    moved = ids[:10]
    new_vecs = -vecs[:10]  # opposite signs: every table changes bucket
    new_keys = fake_keys(new_vecs)
    await store.upsert_items(v, moved[:5], new_vecs[:5], new_keys[:5], old_keys=keys[:5])
    await store.upsert_items(v, moved[5:], new_vecs[5:], new_keys[5:])  # old keys not needed
    all_keys = keys.copy()
    all_keys[:10] = new_keys
    all_vecs = vecs.copy()
    all_vecs[:10] = new_vecs
    got = await all_items(store, v)
    np.testing.assert_array_equal(np.stack([got[i] for i in ids]), all_vecs)
    for (t, k), members in (await membership(store, v, np.vstack([keys, all_keys]))).items():
        assert members == {ids[i] for i in np.flatnonzero(all_keys[:, t] == k)}

    # remove 15 (including moved ones): gone from the hash and from every bucket
    gone = ids[5:20]
    idx = list(range(5, 20))
    assert await store.remove_items(v, [*gone, "never-there"]) == 15
    assert await store.items_count(v) == 15
    kept = [i for i in range(30) if i not in idx]
    for (t, k), members in (await membership(store, v, np.vstack([keys, all_keys]))).items():
        assert members == {ids[i] for i in kept if all_keys[i, t] == k}
    assert set(await all_items(store, v)) == {ids[i] for i in kept}
    _, present = await store.get_keys(v, ids, L)
    assert np.flatnonzero(present).tolist() == kept


async def test_delete_version_removes_only_that_version(store: Store) -> None:
    rng = np.random.default_rng(3)
    vecs = unit(rng, 20)
    ids = [f"i{i}" for i in range(20)]
    v1 = await store.create_version({}, DIM)
    v2 = await store.create_version({}, DIM)
    for v in (v1, v2):
        await store.upsert_items(v, ids, vecs, fake_keys(vecs))
    await store.put_users({"u": b"x"})
    await store.switch_live(v2)
    with pytest.raises(ValueError, match="live"):
        await store.delete_version(v2)
    removed = await store.delete_version(v1, batch=2)
    assert removed == 3  # meta, vectors, buckets
    assert await store.get_meta(v1) is None and await store.items_count(v1) == 0
    assert not [k async for k in store.r.scan_iter(match=store.keys.version_pattern(v1))]
    assert await store.items_count(v2) == 20
    assert (await store.get_users(["u"]))["u"] == b"x"


async def test_users_round_trip(store: Store) -> None:
    roll = RollingUserVectors(DIM, 3)
    state = roll.new_state()
    roll.apply(state, "a", 5.0, 2.0, unit(np.random.default_rng(4), 1)[0], "e1")
    await store.put_users({"u1": state.to_bytes(), "u:2": b""})
    got = await store.get_users(["u1", "u:2", "nobody"])
    assert got["nobody"] is None and got["u:2"] == b""
    back = UserState.from_bytes(got["u1"], DIM)
    assert back.window == state.window
    np.testing.assert_array_equal(back.vector(), state.vector())
    assert await store.get_users([]) == {}


async def test_popularity(store: Store) -> None:
    assert await store.top_popular(5) == []
    await store.incr_popular({"a": 1, "b": 3})
    await store.incr_popular({"a": 4, "c": 1})
    assert await store.top_popular(2) == [("a", 5.0), ("b", 3.0)]
    assert len(await store.top_popular(10)) == 3


async def test_claim_events(store: Store) -> None:
    assert await store.claim_events(["e1", "e2"], 60) == [True, True]
    assert await store.claim_events(["e2", "e3", "e3"], 60) == [False, True, False]
    assert 0 < await store.r.ttl(store.keys.event("e1")) <= 60


def test_keys_layout_is_documented() -> None:
    k = Keys("p*x")
    assert k.live == "p*x:index:live"
    assert k.vectors(3) == "p*x:index:3:vectors"
    assert k.buckets(3) == "p*x:index:3:buckets"
    assert k.user("u") == "p*x:user:u"
    assert k.version_pattern(3) == "p\\*x:index:3:*"  # glob characters escaped
