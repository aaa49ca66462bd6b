"""`recall tune` and `recall load` against a real redis-server (and Tansu for --to-topic)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import orjson
import pytest

from offline.clicklog import read_log
from offline.userwin import user_windows
from offline.vectors import load_vectors, params_path, save_vectors
from recall.cli import main
from recall.lsh import Hasher, LSHParams
from recall.store import Store
from recall.userstate import UserState

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("offline")
    log = d / "clicks.jsonl"
    assert main(["gen", "--users", "300", "--items", "400", "--clicks", "9000",
                 "--out", str(log), "-q", "--seed", "5"]) == 0
    vectors = d / "items.npz"
    assert main(["train", str(log), "--out", str(vectors), "-q", "--epochs", "3"]) == 0
    params = params_path(vectors)
    params.write_text(json.dumps({"params": LSHParams(dim=64, k=6, L=8, T=4).to_dict()}))
    return log, vectors, params


async def run(argv: list[str]) -> int:
    """main() runs its own event loop: call it from a thread."""
    return await asyncio.to_thread(main, argv)


def _env(monkeypatch, redis_url, redis_prefix):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RECALL_REDIS_PREFIX", redis_prefix)
    monkeypatch.setenv("RECALL_USER_WINDOW", "20")


async def test_load_switches_version_with_exact_contents(files, redis_url, redis_prefix,
                                                         monkeypatch, capsys):
    log, vectors, params_file = files
    _env(monkeypatch, redis_url, redis_prefix)
    store = Store.from_url(redis_url, redis_prefix)
    try:
        assert await run(["load", str(vectors), "--log", str(log), "-q"]) == 0
        out = json.loads(capsys.readouterr().out.splitlines()[-1])
        v1 = out["version"]
        assert await store.live_version() == v1
        ids, mat = load_vectors(vectors, 64)
        got: dict[str, np.ndarray] = {}
        async for chunk_ids, chunk in store.iter_items(v1, 500):
            got.update(zip(chunk_ids, chunk, strict=True))
        assert sorted(got) == sorted(ids)
        np.testing.assert_array_equal(np.stack([got[i] for i in ids]), mat)
        meta = await store.get_meta(v1)
        params = LSHParams.from_dict(meta["params"])
        assert params == LSHParams.from_dict(json.loads(params_file.read_text())["params"])
        # buckets: each item's stored bucket keys are its keys in every table
        keys = Hasher(params).keys(mat[:3])
        for j in range(3):
            raw = await store.r.hget(store.keys.buckets(v1), ids[j])
            np.testing.assert_array_equal(np.frombuffer(raw, dtype="<i8"), keys[j])
        # user windows = the last 20 clicks, with the batch mean of their vectors
        clicks = read_log(log)
        win = user_windows(clicks, ids, mat, 20)
        uids = [clicks.user_ids[u] for u in win.users[:25]]
        stored = await store.get_users(uids)
        for j, uid in enumerate(uids):
            state = UserState.from_bytes(stored[uid], 64)
            assert len(state.window) == min(20, int((clicks.user == win.users[j]).sum()))
            np.testing.assert_allclose(state.vector(), win.vectors[j], rtol=1e-4, atol=1e-5)
        counts = np.bincount(clicks.item)
        top = await store.top_popular(3)
        assert [c for _, c in top] == sorted(counts.tolist(), reverse=True)[:3]

        # a second load: a new live version, the old one removed, popularity replaced
        assert await run(["load", str(vectors), "--log", str(log), "-q"]) == 0
        v2 = json.loads(capsys.readouterr().out.splitlines()[-1])["version"]
        assert v2 != v1 and await store.live_version() == v2
        assert await store.get_meta(v1) is None
        assert await store.items_count(v1) == 0
        assert await store.top_popular(3) == top
    finally:
        await store.close()


async def versions(store: Store) -> list[int]:
    """Versions with metadata in Redis (inspected directly: no production code needs it)."""
    found = [k.decode().split(":")[-2] async for k in
             store.r.scan_iter(match=f"{store.keys.prefix}:index:*:meta")]
    return sorted(int(v) for v in found)


async def test_load_rejects_wrong_dimension_and_keeps_live(files, tmp_path, redis_url,
                                                           redis_prefix, monkeypatch, capsys):
    _log, vectors, _params = files
    _env(monkeypatch, redis_url, redis_prefix)
    bad = tmp_path / "small.npz"
    save_vectors(bad, ["a", "b"], np.eye(2, 8, dtype=np.float32))
    assert await run(["load", str(bad), "-q"]) == 2
    assert f"{bad}: vectors have dimension 8, expected 64" in capsys.readouterr().err
    assert await run(["load", str(vectors), "--params", str(tmp_path / "none.json"),
                      "-q"]) == 2
    assert "none.json: no such file" in capsys.readouterr().err
    store = Store.from_url(redis_url, redis_prefix)
    try:
        assert await store.live_version() is None
        assert await versions(store) == []  # nothing half-written
    finally:
        await store.close()


async def test_load_to_topic_publishes_contract_messages(files, stack, redis_prefix,
                                                         monkeypatch, capsys):
    from aiokafka import AIOKafkaConsumer

    from devtools.localstack import create_topics

    _log, vectors, _params = files
    topic = f"items-{redis_prefix}"
    await create_topics(stack.bootstrap, [topic], 1)
    monkeypatch.setenv("KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("RECALL_TOPIC_ITEMS", topic)
    assert await run(["load", str(vectors), "--to-kafka", "-q"]) == 0
    ids, mat = load_vectors(vectors, 64)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    seen: dict[str, list[float]] = {}
    try:
        while len(seen) < len(ids):
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            for records in batch.values():
                for rec in records:
                    msg = orjson.loads(rec.value)
                    assert rec.key.decode() == msg["item_id"]
                    seen[msg["item_id"]] = msg["vector"]
    finally:
        await consumer.stop()
    assert sorted(seen) == sorted(ids)
    np.testing.assert_allclose(np.array([seen[i] for i in ids]), mat, rtol=1e-6)


def test_tune_writes_params_next_to_vectors(files, tmp_path, monkeypatch, capsys):
    log, vectors, _ = files
    monkeypatch.setenv("RECALL_USER_WINDOW", "20")
    out = tmp_path / "p.lsh.json"
    assert main(["tune", str(vectors), "--log", str(log), "--out", str(out), "-q",
                 "--queries", "200"]) == 0
    doc = json.loads(out.read_text())
    params = LSHParams.from_dict(doc["params"])
    assert params.dim == 64 and doc["target_recall"] == 0.95 and doc["queries"] == 200
    bad = tmp_path / "bad.npz"
    save_vectors(bad, ["a"], np.ones((1, 3), np.float32))
    assert main(["tune", str(bad), "-q"]) == 2
    assert f"{bad}: vectors have dimension 3" in capsys.readouterr().err


async def test_failed_load_removes_partial_version_and_keeps_live(files, redis_url,
                                                                  redis_prefix):
    from offline.load import load_index

    _log, vectors, params_file = files
    ids, mat = load_vectors(vectors, 64)
    params = LSHParams.from_dict(json.loads(params_file.read_text())["params"])

    class Failing(Store):
        calls = 0

        async def upsert_items(self, *args, **kwargs):
            Failing.calls += 1
            if Failing.calls == 2:
                raise ConnectionError("redis went away")
            await super().upsert_items(*args, **kwargs)

    store = Store.from_url(redis_url, redis_prefix)
    failing = Failing(store.r, redis_prefix)
    try:
        live, _ = await load_index(store, ids, mat, params, batch=100, progress=False)
        with pytest.raises(ConnectionError):
            await load_index(failing, ids, mat, params, batch=100, progress=False)
        assert await store.live_version() == live
        assert await versions(store) == [live]  # the partial version is gone
        assert await store.items_count(live) == len(ids)
    finally:
        await store.close()


async def test_load_names_unreachable_servers(files, monkeypatch, capsys):
    from devtools.localstack import free_port

    _log, vectors, _params = files
    port = free_port()  # nothing listens there
    assert await run(["load", str(vectors), "--redis-url",
                      f"redis://:secret@127.0.0.1:{port}/0", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"recall load: error: redis redis://:***@127.0.0.1:{port}/0: " in err
    assert "secret" not in err
    monkeypatch.setenv("KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    assert await run(["load", str(vectors), "--to-topic", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"recall load: error: kafka 127.0.0.1:{port}: " in err
    assert "Unclosed AIOKafkaProducer" not in err


async def test_load_bootstraps_users_interests(files, redis_url, redis_prefix, monkeypatch,
                                               capsys):
    """RECALL_USER_INTERESTS=3: the stored states hold the interest vectors the worker
    keeps, equal to the batch computation (offline.userwin), not one vector to re-cut."""
    log, vectors, _ = files
    _env(monkeypatch, redis_url, redis_prefix)
    monkeypatch.setenv("RECALL_USER_INTERESTS", "3")
    store = Store.from_url(redis_url, redis_prefix)
    try:
        assert await run(["load", str(vectors), "--log", str(log), "-q"]) == 0
        capsys.readouterr()
        clicks = read_log(log)
        ids, mat = load_vectors(vectors, 64)
        win = user_windows(clicks, ids, mat, 20, interests=3, session_gap=1800.0)
        uids = [clicks.user_ids[u] for u in win.users[:40]]
        stored = await store.get_users(uids)
        several = 0
        for j, uid in enumerate(uids):
            state = UserState.from_bytes(stored[uid], 64)
            want = win.interests[j][win.interest_ok[j]]
            got = state.interests()
            assert len(got) == len(want)
            several += len(got) > 1
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
        assert several > 0  # the log has users with several sessions in their window
    finally:
        await store.close()
