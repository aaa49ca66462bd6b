"""The Redis store against a real redis-server (tests/conftest.py starts it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from recall.store import Keys, PartitionWrite, Store, VersionGone
from recall.users import RollingUserVectors
from recall.userstate import UserState

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


async def stored_keys(store: Store, v: int, ids: list[str]) -> dict[str, np.ndarray]:
    """Each item's stored bucket keys (read raw: only tests need to look)."""
    raws = await store.r.hmget(store.keys.buckets(v), ids)
    return {i: np.frombuffer(r, dtype="<i8") for i, r in zip(ids, raws, strict=True) if r}


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

    await store.switch_live(v1)
    assert await store.live_version() == v1
    with pytest.raises(ValueError, match="does not exist"):
        await store.switch_live(v2 + 100)
    assert await store.live_version() == v1


async def test_one_worker_creates_the_first_version(store: Store, redis_url: str) -> None:
    other = Store.from_url(redis_url, store.keys.prefix)
    try:
        params = {"family": "pstable", "dim": DIM, "k": 2, "L": L}
        v = await store.create_first_version(params, DIM, partitions=3)
        assert v is not None and await store.live_version() == v
        assert await other.create_first_version(params, DIM, partitions=3) is None  # locked
        assert await store.item_offsets(v) == {0: 0, 1: 0, 2: 0}
    finally:
        await other.close()


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
    finally:
        await other.close()

    # membership is exactly what the keys say
    got_keys = await stored_keys(store, v, [*ids, "nope"])
    assert set(got_keys) == set(ids)
    np.testing.assert_array_equal(np.stack([got_keys[i] for i in ids]), keys)


async def test_the_streaming_write_moves_and_deletes_items_with_their_offsets(
        store: Store) -> None:
    rng = np.random.default_rng(2)
    v = await store.create_version({"L": L}, DIM)
    ids = [f"i{i}" for i in range(30)]
    vecs = unit(rng, 30)
    keys = fake_keys(vecs)
    await store.upsert_items(v, ids, vecs, keys)
    # move 10 items to new vectors (new buckets), delete 15 others, one MULTI
    new_vecs = -vecs[:10]  # opposite signs: every table changes bucket
    new_keys = fake_keys(new_vecs)
    gone = ids[15:30]
    refused = await store.write_items(v, [
        PartitionWrite(0, 0, 12, ids[:10], new_vecs, new_keys, [*gone, "never-there"]),
        PartitionWrite(3, 0, 40)])
    assert refused == {}
    assert await store.item_offsets(v) == {0: 12, 3: 40}
    assert await store.items_count(v) == 15
    got = await all_items(store, v)
    assert set(got) == set(ids[:15])
    np.testing.assert_array_equal(np.stack([got[i] for i in ids[:10]]), new_vecs)
    stored = await stored_keys(store, v, ids)
    assert set(stored) == set(ids[:15])
    np.testing.assert_array_equal(np.stack([stored[i] for i in ids[:10]]), new_keys)
    np.testing.assert_array_equal(np.stack([stored[i] for i in ids[10:15]]), keys[10:15])


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


async def test_a_click_batch_is_written_in_one_call(store: Store) -> None:
    assert await store.top_popular(5) == []
    users, claimed = await store.get_users_and_events(["u1"], ["e1"])
    assert users == {"u1": None} and claimed == set()
    assert await store.write_clicks({"u1": b"state-1", "u2": b"state-2"}, {"a": 1, "b": 3},
                                    ["e1", "e2"], 60, {0: (0, 17)})
    second = ({"u1": b"state-1b"}, {"a": 4, "c": 1}, ["e3"], 60, {0: (17, 20), 2: (0, 5)})
    assert await store.write_clicks(*second)
    assert not await store.write_clicks(*second)  # a repeated call writes nothing again
    users, claimed = await store.get_users_and_events(["u1", "u2", "u3"], ["e1", "e3", "e9"])
    assert users == {"u1": b"state-1b", "u2": b"state-2", "u3": None}
    assert claimed == {"e1", "e3"}
    assert 0 < await store.r.ttl(store.keys.event("e1")) <= 60
    assert await store.click_offsets([0, 1, 2]) == {0: 20, 2: 5}
    assert await store.top_popular(2) == [("a", 5.0), ("b", 3.0)]
    assert len(await store.top_popular(10)) == 3
    await store.replace_popular({"z": 9.0})
    assert await store.top_popular(10) == [("z", 9.0)]


async def test_the_worker_store_has_a_deadline_and_redis_py_retries(redis_url: str) -> None:
    from recall.config import Settings
    from recall.store import CLIENT_RETRIES

    settings = Settings(redis_url=redis_url, redis_timeout=3.0)
    store = Store.from_settings(settings)
    try:
        assert store.r.get_retry()._retries == CLIENT_RETRIES
        kwargs = store.r.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 3.0
        assert await store.live_version() is None  # a working client
    finally:
        await store.close()


def test_keys_layout_is_documented() -> None:
    k = Keys("p*x")
    assert k.live == "p*x:index:live"
    assert k.vectors(3) == "p*x:index:3:vectors"
    assert k.buckets(3) == "p*x:index:3:buckets"
    assert k.user("u") == "p*x:user:u"
    assert k.item_offsets(3) == "p*x:index:3:offsets"
    assert k.click_offsets == "p*x:clicks:offsets"
    assert k.version_pattern(3) == "p\\*x:index:3:*"  # glob characters escaped


async def test_a_streaming_write_never_leaves_a_gap_before_the_recorded_offset(
        store: Store) -> None:
    """The offsets say "every change before them is here": a partition's batch is refused
    when the version's offset is behind its start (changes in between were never written
    to this version) or past its end (newer changes are there); an overlap is written."""
    rng = np.random.default_rng(3)
    v = await store.create_version({"L": L}, DIM)
    vecs = unit(rng, 4)
    keys = fake_keys(vecs)

    def w(p: int, start: int, nxt: int, i: int) -> PartitionWrite:
        return PartitionWrite(p, start, nxt, [f"i{i}"], vecs[i:i + 1], keys[i:i + 1])

    assert await store.write_items(v, [w(0, 0, 10, 0)]) == {}  # no offset yet: taken
    # a gap (10..20 never written) and a batch wholly behind: refused, nothing written
    await store.set_item_offsets(v, {1: 12})
    assert await store.write_items(v, [w(0, 20, 30, 1), w(1, 5, 9, 2)]) == {0: 10, 1: 12}
    assert await store.item_offsets(v) == {0: 10, 1: 12}
    assert set(await all_items(store, v)) == {"i0"}
    # an overlap (10 inside 5..15): written, the offset moves on
    assert await store.write_items(v, [w(0, 5, 15, 3)]) == {}
    assert await store.item_offsets(v) == {0: 15, 1: 12}
    assert set(await all_items(store, v)) == {"i0", "i3"}
    # a version deleted meanwhile is not written again
    await store.delete_version(v)
    with pytest.raises(VersionGone):
        await store.write_items(v, [w(0, 15, 20, 1)])
    assert not await store.r.exists(store.keys.vectors(v), store.keys.item_offsets(v))


async def test_commands_are_packed_as_redis_py_packs_them(redis_url: str) -> None:
    """The store's connections pack with hiredis (a click batch's write is one call of
    thousands of arguments): byte for byte what redis-py's own Python packer sends, for
    every kind of argument the store passes, and a binary, non-ASCII batch round-trips."""
    import redis.asyncio as aioredis
    from redis.utils import HIREDIS_AVAILABLE

    store = Store.from_url(redis_url, "packtest")
    reference = aioredis.Connection()  # redis-py's asyncio packer, in Python
    blobs = {f"ü{j}": bytes(range(256)) * (j + 1) for j in range(50)}
    try:
        conn = store.r.connection_pool.make_connection()
        assert HIREDIS_AVAILABLE  # hiredis is a dependency (pyproject.toml)
        for args in [("SET", "k", b"\x00\xff\r\n"), ("CONFIG GET", "maxmemory"),
                     (b"CLIENT LIST",), ("EVALSHA", "a" * 40, 3, -7, 0.1, 1733212345.123456,
                                         1e-7, 10**20, "é-ü", memoryview(b"mv"), bytearray(b"ba"))]:
            assert b"".join(conn.pack_command(*args)) == b"".join(
                reference.pack_command(*args)), args
        await store.put_users(blobs)
        assert await store.get_users(list(blobs)) == blobs
    finally:
        await store.r.delete(*[store.keys.user(u) for u in blobs])
        await store.close()


async def test_a_worker_load_runs_the_index_kernels_off_the_event_loop(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_index sizes, stages and builds in threads: each calls numba kernels, and a
    first call waits for numba's lock, which the start-up warm-up holds for a second or
    more; on the event loop that wait stalled the group join begun meanwhile."""
    import threading

    from recall.lsh import Hasher, LSHIndex, LSHParams
    from stream.items import load_index

    params = LSHParams(dim=DIM, k=3, L=L)
    v = await store.create_version(params.to_dict(), DIM)
    vecs = unit(np.random.default_rng(2), 300)
    await store.upsert_items(v, [f"i{i}" for i in range(300)], vecs, Hasher(params).keys(vecs))
    loop_thread = threading.current_thread()
    on_loop: list[str] = []
    for name in ("reserve", "stage", "build"):
        method = getattr(LSHIndex, name)

        def watched(self, *args, _method=method, _name=name):  # type: ignore[no-untyped-def]
            if threading.current_thread() is loop_thread:
                on_loop.append(_name)
            return _method(self, *args)

        monkeypatch.setattr(LSHIndex, name, watched)
    index, _ = await load_index(store, v, DIM)
    assert len(index) == 300 and on_loop == []
