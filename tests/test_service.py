"""The recall service with a fake store (unit tests: no Kafka, no Redis).

What users rely on: one response per request, from the index for users with clicks
(never an item they have seen, when asked), from popularity otherwise; every click
applied exactly once, its effects written to the store in one call; a failed write
leaves nothing half-applied in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import orjson
import pytest

from recall.config import Settings
from recall.lsh import LSHIndex, LSHParams, normalize
from recall.messages import Click, Invalid, Request
from recall.store import ClickOffsetsConflict
from recall.userstate import UserState
from stream.service import EXACT_MAX_ITEMS, Ask, ClickAt, RecallService
from stream.state import IndexSlot, UserCache

DIM = 8


class FakeStore:
    """The store's service-facing methods over dicts."""

    def __init__(self) -> None:
        self.users: dict[str, bytes] = {}
        self.events: set[str] = set()
        self.offsets: dict[int, int] = {}
        self.popular: Counter[str] = Counter()
        self.writes = 0
        self.fail_writes = False

    async def get_users(self, uids: Sequence[str]) -> dict[str, bytes | None]:
        return {u: self.users.get(u) for u in uids}

    async def get_users_and_events(self, uids: Sequence[str], event_ids: Sequence[str]
                                   ) -> tuple[dict[str, bytes | None], set[str]]:
        return await self.get_users(uids), {e for e in event_ids if e in self.events}

    async def click_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        return {p: self.offsets[p] for p in partitions if p in self.offsets}

    async def write_clicks(self, users: Mapping[str, bytes], popular: Mapping[str, int],
                           event_ids: Sequence[str], event_ttl: int,
                           offsets: Mapping[int, tuple[int, int]]) -> bool:
        if self.fail_writes:
            raise ConnectionError("redis is down")
        if all(self.offsets.get(p, 0) == nxt for p, (_, nxt) in offsets.items()):
            return False  # written before
        if any(self.offsets.get(p, 0) != exp for p, (exp, _) in offsets.items()):
            raise ClickOffsetsConflict(f"{offsets} vs {self.offsets}")
        self.writes += 1
        self.users.update(users)
        self.popular.update(popular)
        self.events.update(event_ids)
        self.offsets.update({p: nxt for p, (_, nxt) in offsets.items()})
        return True

    async def top_popular(self, k: int) -> list[tuple[str, float]]:
        return [(i, float(n)) for i, n in self.popular.most_common(k)]


def service(n_items: int = 2000, seed: int = 0, cache: int = 0, store: FakeStore | None = None,
            fmt: str = "packed") -> tuple[RecallService, FakeStore, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = normalize(rng.standard_normal((n_items, DIM)))
    index = LSHIndex(LSHParams(dim=DIM, k=2, L=8, T=4, w=1.0))
    index.add([f"i{j}" for j in range(n_items)], x)
    store = store or FakeStore()
    svc = RecallService(Settings(dim=DIM, user_cache_users=cache, user_state_format=fmt),
                        store, IndexSlot(index, 1))
    return svc, store, x


def clicks(user: str, items: list[int], partition: int = 0, first_offset: int = 0,
           event: bool = True) -> list[ClickAt]:
    return [ClickAt(partition, first_offset + j, Click(
        user, f"i{i}", 1000.0 + j, 1.0, f"{user}-e{first_offset + j}" if event else None))
        for j, i in enumerate(items)]


async def test_answers_come_from_the_index_without_seen_items_or_from_popularity() -> None:
    svc, _, x = service()
    await svc.take_partitions([0])
    await svc.apply(clicks("u1", [3, 4, 5]), {0: 3})
    await svc.apply(clicks("u2", [7], first_offset=3), {0: 4})
    await svc.refresh_popular()
    answers = await svc.answer([
        Ask(Request("r1", "u1", k=5), 0), Ask(Request("r2", "u1", k=5, exclude_seen=False), 0),
        Ask(Request("r3", "nobody", k=2), 0)])
    assert [a.key for _, a in answers] == [b"r1", b"r2", b"r3"]
    r1, r2, r3 = (orjson.loads(a.value) for _, a in answers)
    assert r1["status"] == "ok" and r1["source"] == "lsh" and len(r1["items"]) == 5
    assert not {"i3", "i4", "i5"} & {it["item_id"] for it in r1["items"]}
    # the user's vector is the mean of its clicks: the top items are near it
    want = normalize(x[[3, 4, 5]].mean(axis=0))
    assert r1["items"][0]["score"] == pytest.approx(
        max(float(x[j] @ want) for j in range(len(x)) if j not in (3, 4, 5)), rel=0.05)
    assert {it["item_id"] for it in r2["items"]} & {"i3", "i4", "i5"}
    assert r3["source"] == "popular"
    assert [it["item_id"] for it in r3["items"]] == ["i3", "i4"]  # ties: first clicked


async def test_small_catalogues_are_searched_exactly() -> None:
    svc, _, x = service(n_items=EXACT_MAX_ITEMS // 2)
    await svc.take_partitions([0])
    await svc.apply(clicks("u1", [1, 2]), {0: 2})
    ((_, answer),) = await svc.answer([Ask(Request("r", "u1", k=3), 0)])
    got = orjson.loads(answer.value)
    q = normalize(x[[1, 2]].mean(axis=0))
    order = [f"i{j}" for j in np.argsort(-(x @ q)) if j not in (1, 2)][:3]
    assert got["source"] == "exact" and [it["item_id"] for it in got["items"]] == order


async def test_an_invalid_request_gets_an_invalid_answer_when_it_can_be_addressed() -> None:
    svc, _, _ = service(n_items=50)
    answer = svc.invalid(Invalid("bad_k", "k must be 1..1000", request_id="r9", user_id="u"))
    assert answer is not None and orjson.loads(answer.value)["status"] == "invalid"
    assert svc.invalid(Invalid("bad_json", "not JSON")) is None


async def test_every_click_applies_once_across_replays_and_event_ids() -> None:
    svc, store, _ = service()
    assert await svc.take_partitions([0, 1]) == {0: 0, 1: 0}
    batch = clicks("u1", [1, 2, 3])
    await svc.apply(batch, {0: 3})
    assert store.offsets == {0: 3} and store.writes == 1
    assert sum(store.popular.values()) == 3
    await svc.apply(batch, {0: 3})  # the same offsets again (a replay after a crash)
    # the same event ids at new offsets (a producer's retry)
    again = [ClickAt(1, j, c.click) for j, c in enumerate(batch)]
    await svc.apply(again, {1: 3})
    assert sum(store.popular.values()) == 3
    state = UserState.from_bytes(store.users["u1"], DIM)
    assert len(state.clicks) == 3
    assert svc.metrics.click_duplicates._value.get() == 3  # the replay wrote nothing at all


async def test_a_rolling_upgrade_keeps_windows_and_event_ids_across_formats() -> None:
    """Workers writing the JSON formats (as before format 3, or with
    RECALL_USER_STATE_FORMAT=json during an upgrade), format 3 (``columns``) and format 4
    (``packed``, the default) hand a user over every way: the window, its event ids (a
    replayed click is not counted again) and the vector go on as if one worker had
    applied every click."""
    store = FakeStore()
    old, _, _ = service(store=store, fmt="json")
    await old.take_partitions([0])
    await old.apply(clicks("u1", [1, 2]), {0: 2})
    assert store.users["u1"][0] == 1  # what a worker before format 3 reads
    cols, _, _ = service(store=store, fmt="columns")  # to a worker of format 3
    await cols.take_partitions([0])
    replay = clicks("u1", [1, 2, 3], first_offset=0)  # i1, i2 again (same event ids), i3
    await cols.apply([ClickAt(0, 2 + j, c.click) for j, c in enumerate(replay)], {0: 5})
    assert store.users["u1"][0] == 3
    new, _, _ = service(store=store)  # to an upgraded worker
    await new.take_partitions([0])
    await new.apply([ClickAt(0, 5, Click("u1", "i3", 1002.0, 1.0, "u1-e2")),
                     ClickAt(0, 6, Click("u1", "i5", 1500.0, 1.0, "u1-e8"))], {0: 7})
    assert store.users["u1"][0] == 4
    back, _, _ = service(store=store, fmt="columns")  # and back (a rollback)
    await back.take_partitions([0])
    await back.apply([ClickAt(0, 7, Click("u1", "i5", 1500.0, 1.0, "u1-e8")),
                      ClickAt(0, 8, Click("u1", "i4", 2000.0, 1.0, "u1-e0")),
                      ClickAt(0, 9, Click("u1", "i4", 2000.0, 1.0, "u1-e9"))], {0: 10})
    assert store.users["u1"][0] == 3
    back, _, _ = service(store=store, fmt="json")  # and back again
    await back.take_partitions([0])
    await back.apply([ClickAt(0, 10, Click("u1", "i4", 2000.0, 1.0, "u1-e9")),
                      ClickAt(0, 11, Click("u1", "i6", 2100.0, 1.0, "u1-e10"))], {0: 12})
    assert store.users["u1"][0] == 1
    state = UserState.from_bytes(store.users["u1"], DIM)
    ids = ["i1", "i2", "i3", "i5", "i4", "i6"]
    assert [c[0] for c in state.clicks] == ids  # each once
    mat, _ = back.slot.lookup(ids)  # the index's stored vectors
    np.testing.assert_allclose(state.vector(), mat.astype(np.float64).mean(axis=0),
                               rtol=1e-5, atol=1e-6)


async def test_offsets_redis_does_not_hold_reload_the_partition_from_redis() -> None:
    svc, store, _ = service()
    await svc.take_partitions([0])
    await svc.apply(clicks("u1", [1]), {0: 1})
    store.offsets[0] = 5  # another worker applied the partition meanwhile
    with pytest.raises(ClickOffsetsConflict):
        await svc.apply(clicks("u1", [2], first_offset=1), {0: 2})
    assert svc.applied == {0: 5} and svc.users.get("u1") is None  # Redis's, reloaded


async def test_a_failed_write_leaves_memory_as_redis_has_it() -> None:
    svc, store, _ = service()
    await svc.take_partitions([0])
    await svc.apply(clicks("u1", [1]), {0: 1})
    store.fail_writes = True
    with pytest.raises(ConnectionError):
        await svc.apply(clicks("u1", [2, 3], first_offset=1), {0: 3})
    assert svc.users.get("u1") is None  # dropped: read again from the store
    assert svc.applied == {0: 1}  # where the retry starts
    store.fail_writes = False
    await svc.apply(clicks("u1", [2, 3], first_offset=1), {0: 3})
    state = UserState.from_bytes(store.users["u1"], DIM)
    assert [c[0] for c in state.clicks] == ["i1", "i2", "i3"]  # each once


async def test_a_batch_failing_half_applied_leaves_memory_as_redis_has_it(monkeypatch) -> None:
    """Clicks without event ids (nothing dedupes them but the offsets): a batch that
    fails after changing some windows in memory is applied once when retried."""
    svc, store, _ = service()
    await svc.take_partitions([0])
    await svc.apply(clicks("u1", [1], event=False), {0: 1})

    def half(policy, todo, lookup):
        state = todo[0][0]
        state.clicks = [*state.clicks, (todo[0][1], todo[0][2], 1.0, None, True)]
        raise RuntimeError("a bug half way")

    monkeypatch.setattr("stream.service.apply_batch", half)
    with pytest.raises(RuntimeError):
        await svc.apply(clicks("u1", [2], first_offset=1, event=False), {0: 2})
    assert svc.users.get("u1") is None  # dropped: read again from the store
    monkeypatch.undo()
    await svc.apply(clicks("u1", [2], first_offset=1, event=False), {0: 2})
    state = UserState.from_bytes(store.users["u1"], DIM)
    assert [c[0] for c in state.clicks] == ["i1", "i2"]  # each once


async def test_revoked_partitions_forget_their_users_and_offsets() -> None:
    svc, store, _ = service()
    store.offsets = {0: 40, 1: 7}
    assert await svc.take_partitions([0, 1]) == {0: 40, 1: 7}
    await svc.apply(clicks("u1", [1], partition=1, first_offset=7), {1: 8})
    svc.drop_partitions([1])
    assert svc.users.get("u1") is None and svc.applied == {0: 40}


async def test_users_in_memory_never_wait_for_redis_the_others_get_an_error_in_time() -> None:
    import asyncio
    import time

    svc, store, _ = service()
    await svc.take_partitions([0])
    await svc.apply(clicks("u1", [1, 2]), {0: 2})

    async def stalled(uids: Sequence[str]) -> dict[str, bytes | None]:
        await asyncio.sleep(60)  # Redis does not answer
        return {}

    store.get_users = stalled  # type: ignore[method-assign]
    ready, waiting = svc.answer_from_memory([Ask(Request("a", "u1"), 0),
                                             Ask(Request("b", "cold"), 0, time.time())])
    assert [a.key for _, a in ready] == [b"a"] and orjson.loads(ready[0][1].value)["status"] == "ok"
    t0 = time.perf_counter()
    ((_, late),) = await svc.answer_after_load(waiting)
    assert time.perf_counter() - t0 < svc.settings.request_deadline_ms / 1000 + 0.5
    value = orjson.loads(late.value)
    assert value["status"] == "error" and "redis" in value["error"]


async def test_a_request_is_answered_between_the_chunks_of_a_large_click_batch() -> None:
    """A big fetch of clicks must not hold the event loop until it is written: a request
    arriving meanwhile is answered before the batch's Redis write (even with a store that
    answers without suspending, as this fake does)."""
    import asyncio

    from stream.service import CLICK_CHUNK

    svc, store, _ = service()
    await svc.take_partitions([0])
    await svc.apply(clicks("u1", [1, 2]), {0: 2})
    order: list[str] = []
    write = store.write_clicks

    async def recorded(*args, **kwargs) -> bool:
        order.append("clicks written")
        return await write(*args, **kwargs)

    store.write_clicks = recorded  # type: ignore[method-assign]
    big = [ClickAt(0, 2 + j, Click(f"u{2 + j % 50}", f"i{j % 2000}", 2000.0 + j, 1.0,
                                   f"big-{j}")) for j in range(4 * CLICK_CHUNK)]

    async def request() -> None:
        ((_, answer),) = await svc.answer([Ask(Request("r", "u1", k=3), 0)])
        assert orjson.loads(answer.value)["status"] == "ok"
        order.append("request answered")

    applying = asyncio.create_task(svc.apply(big, {0: 2 + len(big)}))
    await asyncio.sleep(0)  # the batch has begun
    await asyncio.gather(applying, request())
    assert order == ["request answered", "clicks written"]
    # and the batch is applied whole, once
    assert store.offsets == {0: 2 + len(big)} and sum(store.popular.values()) == 2 + len(big)


async def test_a_batch_applied_in_chunks_equals_the_clicks_applied_one_by_one() -> None:
    from stream.service import CLICK_CHUNK

    n = 3 * CLICK_CHUNK + 5
    batch = [ClickAt(0, j, Click(f"u{j % 3}", f"i{(7 * j) % 2000}", 1000.0 + j, 1.0,
                                 f"e{j}")) for j in range(n)]
    whole, whole_store, _ = service()
    await whole.take_partitions([0])
    await whole.apply(batch, {0: n})
    single, single_store, _ = service()
    await single.take_partitions([0])
    for c in batch:
        await single.apply([c], {0: c.offset + 1})
    assert whole_store.offsets == single_store.offsets == {0: n}
    assert whole_store.popular == single_store.popular
    for u in ("u0", "u1", "u2"):
        a = UserState.from_bytes(whole_store.users[u], DIM)
        b = UserState.from_bytes(single_store.users[u], DIM)
        assert a.clicks == b.clicks
        np.testing.assert_allclose(a.vector(), b.vector(), rtol=1e-5, atol=1e-6)


def same_users(a: FakeStore, b: FakeStore) -> None:
    assert a.users.keys() == b.users.keys()
    for u in a.users:
        sa, sb = UserState.from_bytes(a.users[u], DIM), UserState.from_bytes(b.users[u], DIM)
        assert sa.clicks == sb.clicks
        np.testing.assert_allclose(sa.vector(), sb.vector(), rtol=1e-5, atol=1e-6)


async def test_memory_keeps_at_most_the_cache_limit_and_answers_as_if_unbounded() -> None:
    """RECALL_USER_CACHE_USERS bounds the states in memory; a dropped user is read from
    Redis again on its next click or request, so every click counts once and answers
    are those of a worker that kept everyone."""
    batches = [clicks(f"u{j % 5}", [j, j + 1], first_offset=2 * j) for j in range(20)]
    bounded, bounded_store, _ = service(cache=2)
    free, free_store, _ = service()
    for svc in (bounded, free):
        await svc.take_partitions([0])
        for j, batch in enumerate(batches):
            await svc.apply(batch, {0: 2 * j + 2})
            assert svc is free or len(svc.users) <= 2
    assert len(free.users) == 5
    assert bounded.metrics.registry.get_sample_value("recall_users_evicted_total") >= 3
    same_users(bounded_store, free_store)
    asks = [Ask(Request(f"r{u}", f"u{u}", k=5), 0) for u in range(5)]
    got = {a.key: orjson.loads(a.value) for _, a in await bounded.answer(asks)}
    want = {a.key: orjson.loads(a.value) for _, a in await free.answer(asks)}
    assert got == want and all(g["source"] == "lsh" for g in got.values())
    assert len(bounded.users) <= 2


async def test_a_user_is_not_dropped_while_its_click_batch_is_being_written() -> None:
    """A state whose clicks are applied in memory but not yet written must stay: dropped
    and read back from Redis by a request meanwhile, the batch's clicks would be lost
    from memory, and the user's next batch would overwrite them in Redis."""
    import asyncio

    bounded, bounded_store, _ = service(cache=1)
    free, free_store, _ = service()
    batch = clicks("a", [3, 4, 5], first_offset=2)
    last = [ClickAt(0, 5, Click("a", "i7", 9000.0, 1.0, "a-last"))]
    for svc, store in ((bounded, bounded_store), (free, free_store)):
        await svc.take_partitions([0])
        await svc.apply(clicks("a", [1, 2]), {0: 2})
        writing, release = asyncio.Event(), asyncio.Event()
        write = store.write_clicks

        async def gated(*args, write=write, writing=writing, release=release, **kw) -> bool:
            writing.set()
            await release.wait()  # Redis is slow to answer
            return await write(*args, **kw)

        store.write_clicks = gated  # type: ignore[method-assign]
        applying = asyncio.create_task(svc.apply(batch, {0: 5}))
        await writing.wait()
        await svc.answer([Ask(Request("rb", "b", k=3), 0)])  # a cold user is read
        await svc.answer([Ask(Request("ra", "a", k=3), 0)])
        release.set()
        await applying
        await svc.apply(last, {0: 6})
    same_users(bounded_store, free_store)
    assert sorted(c[0] for c in UserState.from_bytes(bounded_store.users["a"], DIM).clicks) == [
        "i1", "i2", "i3", "i4", "i5", "i7"]


def test_the_user_cache_keeps_recent_users_and_forgets_partitions_with_them() -> None:
    """Least recently used users go first; a user's partition is forgotten with it (a
    revoked partition drops exactly its users, and nothing is left behind)."""
    cache = UserCache(limit=2)
    for user, partition in (("a", 0), ("b", 1), ("c", 0)):
        cache.put(user, UserState(4), partition)
    assert cache.get("a") is not None  # now the most recently used
    assert cache.trim() == 1
    assert list(cache.entries) == ["c", "a"] and cache.partitions == {"c": 0, "a": 0}
    cache.put("d", UserState(4), 1)
    assert cache.drop_partitions([0]) == 2
    assert list(cache.entries) == ["d"] and cache.partitions == {"d": 1}
    assert cache.missing(["d", "a", "a"]) == ["a"]
