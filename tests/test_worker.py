"""The worker end to end, driven only through its Kafka topics, on a real broker and Redis.

One worker process (``recall worker``) serves the whole module, on topics and a Redis
prefix of its own; the tests talk to it with :class:`devtools.client.RecallClient` as a
back end would, and read Redis only through the documented layout.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator

import numpy as np
import orjson
import pytest
import redis

from devtools.client import RecallClient
from devtools.localstack import LocalStack, Service, start_worker
from offline.generate import cluster_vectors
from recall.config import Settings
from recall.lsh import normalize
from tests.support import (
    eventually,
    isolated_settings,
    metric,
    ready_client,
    running_worker,
    stored_user,
)

pytestmark = pytest.mark.integration

N_ITEMS = 3000
DIM = 64
#: RECALL_USER_CACHE_USERS of the module's worker
CACHE_USERS = 4


@pytest.fixture(scope="module")
def catalogue() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(7)
    clusters = rng.integers(0, 60, size=N_ITEMS)
    vectors = cluster_vectors(clusters, DIM, seed=7)
    return [f"item-{i}" for i in range(N_ITEMS)], vectors


@pytest.fixture(scope="module")
def settings(stack: LocalStack) -> Settings:
    # a user cache far below the users of these tests: every answer below must be the
    # same with users dropped from memory and read back from Redis
    return isolated_settings(stack, "wt", dim=DIM, topic_partitions=2, user_window=5,
                             user_cache_users=CACHE_USERS)


@pytest.fixture(scope="module")
def worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # the restart tests swap in their new process; the fixture stops whichever runs
    yield from running_worker(settings, tmp_path_factory.mktemp("worker"), log_tail=5000)


@pytest.fixture(scope="module")
async def client(settings: Settings, worker: Service,
                 catalogue: tuple[list[str], np.ndarray]) -> AsyncIterator[RecallClient]:
    ids, vectors = catalogue
    async with ready_client(settings, ids, vectors, read_dlq=True) as c:
        yield c


@pytest.fixture(scope="module")
def r(settings: Settings) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(settings.redis_url)
    yield conn
    conn.close()


def exact_top(vectors: np.ndarray, ids: list[str], query: np.ndarray, k: int,
              exclude: set[str]) -> list[str]:
    scores = vectors @ normalize(query)
    order = np.argsort(-scores)
    return [ids[i] for i in order if ids[i] not in exclude][:k]


async def click_and_wait(client: RecallClient, r: redis.Redis, settings: Settings,
                         uid: str, items: list[str]) -> None:
    await client.clicks([{"user_id": uid, "item_id": i, "ts": 1000.0 + n}
                         for n, i in enumerate(items)])
    await eventually(lambda: (s := stored_user(r, settings, uid)) is not None
                     and len(s) == len(items))


async def test_items_then_clicks_give_the_exact_top_k(
        client: RecallClient, r: redis.Redis, settings: Settings,
        catalogue: tuple[list[str], np.ndarray]) -> None:
    ids, vectors = catalogue
    rng = np.random.default_rng(1)
    found = []
    for u in range(8):
        uid = f"user-top-{u}"
        anchor = int(rng.integers(N_ITEMS))
        near = np.argsort(-(vectors @ vectors[anchor]))[:20]
        clicked = [ids[i] for i in rng.choice(near, 3, replace=False)]
        await click_and_wait(client, r, settings, uid, clicked)
        resp = await client.recall(uid, k=10)
        assert resp.value["status"] == "ok"
        assert resp.value["source"] == "lsh"
        got = resp.item_ids
        assert len(got) == 10 and not set(got) & set(clicked)
        mean = vectors[[ids.index(c) for c in clicked]].mean(axis=0)
        want = exact_top(vectors, ids, mean, 10, set(clicked))
        found.append(len(set(got) & set(want)) / 10)
        # scores are exact cosines, best first
        scores = [i["score"] for i in resp.value["items"]]
        assert scores == sorted(scores, reverse=True)
        qn = normalize(mean)
        for item in resp.value["items"]:
            cos = float(vectors[ids.index(item["item_id"])] @ qn)
            # item vectors held in half precision (VECTOR_DTYPE): cosines within 3e-4
            assert item["score"] == pytest.approx(cos, abs=3e-4)
    assert np.mean(found) >= 0.9, found


async def test_users_beyond_the_cache_are_read_back_from_redis_with_the_same_answers(
        client: RecallClient, r: redis.Redis, settings: Settings,
        catalogue: tuple[list[str], np.ndarray]) -> None:
    """RECALL_USER_CACHE_USERS bounds the users a worker holds; one dropped from memory
    gets the answer it got before, and its next clicks add to its stored window."""
    ids, _ = catalogue
    users = [f"user-cache-{u}" for u in range(3 * CACHE_USERS)]
    for u, uid in enumerate(users):
        await click_and_wait(client, r, settings, uid, [ids[7 * u], ids[7 * u + 1]])
    before = {uid: (await client.recall(uid, k=5)).item_ids for uid in users}
    port = settings.metrics_port
    assert metric(port, "recall_users_evicted_total") >= 2 * CACHE_USERS
    assert metric(port, "recall_users_cached") <= CACHE_USERS + 1
    after = {uid: (await client.recall(uid, k=5)).item_ids for uid in users}
    assert after == before and all(len(v) == 5 for v in after.values())
    # the worker's GC collections are timed (recall_gc_pause_seconds, published each second)
    await eventually(lambda: metric(port, "recall_gc_pause_seconds_count") > 0)
    await client.clicks([{"user_id": users[0], "item_id": ids[2000], "ts": 5000.0}])
    await eventually(lambda: len(stored_user(r, settings, users[0]) or []) == 3)


async def test_exclude_seen_false_can_return_clicked_items(
        client: RecallClient, r: redis.Redis, settings: Settings,
        catalogue: tuple[list[str], np.ndarray]) -> None:
    ids, _ = catalogue
    await click_and_wait(client, r, settings, "user-seen", [ids[5]])
    resp = await client.recall("user-seen", k=3, exclude_seen=False)
    assert resp.item_ids[0] == ids[5]
    assert resp.value["items"][0]["score"] == pytest.approx(1.0, abs=1e-4)


async def test_a_new_item_becomes_recallable_and_a_deleted_one_never_again(
        client: RecallClient, r: redis.Redis, settings: Settings,
        catalogue: tuple[list[str], np.ndarray]) -> None:
    ids, vectors = catalogue
    clicked = [ids[10], ids[11]]
    await click_and_wait(client, r, settings, "user-new", clicked)
    mean = vectors[[10, 11]].mean(axis=0)
    await client.upsert_items(["brand-new"], mean[None, :] * 3.0)  # normalised on arrival

    async def first_is_new() -> bool:
        resp = await client.recall("user-new", k=5)
        return bool(resp.item_ids) and resp.item_ids[0] == "brand-new"

    await eventually(first_is_new)
    resp = await client.recall("user-new", k=5)
    assert resp.value["items"][0]["score"] == pytest.approx(1.0, abs=1e-4)

    await client.delete_items(["brand-new"])

    async def gone() -> bool:
        return "brand-new" not in (await client.recall("user-new", k=50)).item_ids

    await eventually(gone)
    for _ in range(5):
        assert "brand-new" not in (await client.recall("user-new", k=1000)).item_ids


async def test_a_duplicate_event_id_applies_once(
        client: RecallClient, r: redis.Redis, settings: Settings,
        catalogue: tuple[list[str], np.ndarray]) -> None:
    ids, _ = catalogue
    first = {"user_id": "user-dup", "item_id": ids[20], "ts": 10.0, "event_id": "ev-1"}
    again = {**first, "item_id": ids[21], "ts": 11.0}  # a replay under the same event id
    other = {"user_id": "user-dup", "item_id": ids[22], "ts": 12.0, "event_id": "ev-2"}
    await client.clicks([first, first, again])
    await client.clicks([other])
    state = await eventually(lambda: (s := stored_user(r, settings, "user-dup")) is not None
                             and any(c.event_id == "ev-2" for c in s.window) and s)
    assert [c.item_id for c in state.window] == [ids[20], ids[22]]
    await client.clicks([first])  # later, after it was applied
    await client.clicks([{"user_id": "user-dup", "item_id": ids[23], "ts": 13.0}])
    state = await eventually(lambda: (s := stored_user(r, settings, "user-dup")) is not None
                             and len(s) == 3 and s)
    assert [c.item_id for c in state.window] == [ids[20], ids[22], ids[23]]


async def test_a_cold_user_gets_the_most_clicked_items(
        client: RecallClient, r: redis.Redis, settings: Settings,
        catalogue: tuple[list[str], np.ndarray]) -> None:
    ids, _ = catalogue
    hot = ids[100]
    await client.clicks([{"user_id": f"fan-{n}", "item_id": hot} for n in range(30)])

    async def popular_first() -> bool:
        resp = await client.recall(f"cold-{uuid.uuid4().hex}", k=3)
        return resp.value["source"] == "popular" and resp.item_ids[:1] == [hot]

    await eventually(popular_first)


async def test_bad_messages_go_to_the_dlq_and_the_worker_goes_on(
        client: RecallClient, settings: Settings) -> None:
    bad = [
        (settings.topic_clicks, b"not json", "not_json"),
        (settings.topic_clicks, orjson.dumps({"user_id": "u"}), "missing_field"),
        (settings.topic_items, orjson.dumps({"item_id": "x", "vector": [1.0, 2.0]}),
         "bad_dimension"),
        (settings.topic_items, b'{"item_id": "y", "vector": [' + b",".join([b"1e999"] * DIM)
         + b"]}", "not_finite"),
        (settings.topic_items, orjson.dumps({"item_id": "z", "vector": [0.0] * DIM}),
         "zero_vector"),
        (settings.topic_requests, b"\xff\xfe", "not_json"),
    ]
    for topic, value, _ in bad:
        await client.send_raw(topic, b"key", value)
    rid = "req-bad-k"
    fut = client.expect(rid)
    await client.send_raw(settings.topic_requests, b"u",
                          orjson.dumps({"request_id": rid, "user_id": "u", "k": 0}))
    resp = await asyncio.wait_for(fut, 15)
    assert resp.value["status"] == "invalid" and "k" in resp.value["error"]

    await eventually(lambda: len(client.dlq) >= len(bad) + 1)
    by_value = {base64.b64decode(d["value_b64"]): d for d in client.dlq}
    for topic, value, reason in bad:
        record = by_value[value]
        assert record["topic"] == topic and record["reason"] == reason
        assert isinstance(record["partition"], int) and isinstance(record["offset"], int)
    # still serving, and a valid message sent after the bad ones is used
    await client.upsert_items(["after-bad"], np.ones((1, DIM), dtype=np.float32))
    assert (await client.recall("user-top-0")).value["status"] == "ok"
    await eventually(lambda: metric(settings.metrics_port, "recall_invalid_messages_total")
                     >= len(bad) + 1)


async def test_a_message_too_big_for_the_dlq_blocks_nothing(
        client: RecallClient, r: redis.Redis, settings: Settings,
        catalogue: tuple[list[str], np.ndarray]) -> None:
    """600 KB of junk makes a DLQ record over the producer's 1 MB limit if copied whole:
    it is dead-lettered truncated, and the valid messages behind it (same keys, so the
    same partitions) are applied and answered."""
    ids, _ = catalogue
    pill = b"this is not json " + b"y" * 600_000
    topics = (settings.topic_clicks, settings.topic_items, settings.topic_requests)
    for topic in topics:
        await client.send_raw(topic, b"user-pill", pill)
    await client.send_raw(settings.topic_clicks, b"user-pill", orjson.dumps(
        {"user_id": "user-pill", "item_id": ids[5], "ts": 1.0}))
    await client.send_raw(settings.topic_items, b"user-pill", orjson.dumps(
        {"item_id": "after-pill", "vector": [1.0] * DIM}))
    resp = await client.recall("user-pill", k=3)
    assert resp.value["status"] == "ok"
    await eventually(lambda: (s := stored_user(r, settings, "user-pill")) is not None
                     and [c.item_id for c in s.window] == [ids[5]], 20)
    live = int(r.get(f"{settings.redis_prefix}:index:live"))
    await eventually(lambda: r.hexists(f"{settings.redis_prefix}:index:{live}:vectors",
                                       "after-pill"), 20)
    pills = await eventually(lambda: [d for d in client.dlq if d.get("value_size") == len(pill)]
                             if len({d["topic"] for d in client.dlq
                                     if d.get("value_size") == len(pill)}) == 3 else None, 20)
    for d in pills:
        assert d["truncated"] and d["reason"] == "not_json"
        assert d["value_sha256"] == hashlib.sha256(pill).hexdigest()


async def test_a_restarted_worker_gives_the_same_answers(
        client: RecallClient, worker: Service, settings: Settings) -> None:
    users = [f"user-top-{u}" for u in range(4)] + ["user-new"]
    before = {u: (await client.recall(u, k=10)).item_ids for u in users}
    worker.proc.kill()  # no clean shutdown
    worker.proc.wait(10)
    log = worker.log_path
    fresh = start_worker(settings.environ(), log, settings.metrics_port)
    worker.proc = fresh.proc  # the module fixture stops whichever runs
    await client.wait_ready(60)
    after = {u: (await client.recall(u, k=10)).item_ids for u in users}
    assert after == before
    # and it keeps applying clicks on top of the state it rebuilt
    await client.clicks([{"user_id": "user-new", "item_id": "item-0", "ts": 5000.0}])

    async def changed() -> bool:
        return (await client.recall("user-new", k=10)).item_ids != before["user-new"]

    await eventually(changed)


async def test_a_cleanly_stopped_worker_hands_over_without_answering_twice(
        client: RecallClient, worker: Service, settings: Settings) -> None:
    """SIGTERM: the worker commits the offsets of what it answered (after the responses
    were acknowledged) and leaves the group, so its successor answers nothing again."""
    rids = [await client.send_request(f"user-top-{i % 4}", k=5) for i in range(20)]
    await asyncio.gather(*(asyncio.wait_for(client.expect(r), 10) for r in rids))
    worker.stop(timeout=15)
    assert worker.proc.returncode == 0, "the worker did not stop cleanly"
    fresh = start_worker(settings.environ(), worker.log_path, settings.metrics_port)
    worker.proc = fresh.proc
    await client.wait_ready(60)
    await asyncio.sleep(1.0)  # time for a second answer to arrive, if one were coming
    assert not set(rids) & set(client.unclaimed)


def test_a_batchs_freed_temporaries_are_not_faulted_in_again_by_the_next() -> None:
    """The worker maps big allocations on their own (so a load's temporaries go back to
    the OS), but the heap that one batch frees must stay for the next: not be given
    back and faulted in again, page by page, batch after batch
    (stream.worker._return_big_frees). Counted in minor page faults of a fresh process
    with the worker's modules loaded: 40 batches of a 900 kB and a 450 kB temporary
    (a click batch's Redis command and arrays are of that size)."""
    import subprocess
    import sys

    code = """
import resource
from stream.worker import _return_big_frees
_return_big_frees()
size = 900 * 1024
b, c = b"x" * size, b"y" * (size // 2)  # the first batch grows the heap
del b, c
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for j in range(40):
    b, c = b"x" * size, b"y" * (size // 2)
    del b, c
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    faults = int(out.stdout.strip())
    pages = 40 * (900 * 1024 * 3 // 2) // 4096  # if given back every batch: ~13,500
    assert faults < pages // 10, f"{faults} page faults over 40 batches"


def test_the_worker_s_threads_share_a_few_malloc_arenas() -> None:
    """glibc gives each thread that contends for malloc an arena of its own (up to 8 per
    core), and what one thread frees stays in its arena: the worker's threads (event
    loop, merges, the recall monitor) share MALLOC_ARENAS of them
    (stream.worker._return_big_frees). Counted by glibc's malloc_stats in a fresh
    process: 8 threads allocating at once."""
    import subprocess
    import sys

    from stream.worker import MALLOC_ARENAS

    code = """
import ctypes, os, threading
from stream.worker import _return_big_frees
_return_big_frees()
libc = ctypes.CDLL("libc.so.6")
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    held = [libc.malloc(1000) for _ in range(2000)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
os.dup2(1, 2)  # malloc_stats writes to stderr
libc.malloc_stats()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    arenas = sum(1 for line in out.stdout.splitlines() if line.startswith("Arena "))
    assert 1 <= arenas <= MALLOC_ARENAS, out.stdout
