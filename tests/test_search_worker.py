"""The worker keeps user vectors as the live index version's training chose (``recall
load`` puts the model file's user settings in the version), unless the environment says
otherwise; on a real broker and Redis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from devtools.client import RecallClient
from devtools.localstack import LocalStack, create_topics, start_worker
from offline.generate import cluster_vectors
from offline.load import load_index
from recall.config import ENV_NAMES, USER_VECTOR_KEYS
from recall.lsh import LSHParams
from recall.store import Store
from tests.support import eventually, isolated_settings, metric, stored_user

pytestmark = pytest.mark.integration

DIM = 64


async def test_the_worker_applies_the_user_window_of_the_loaded_version(
        stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = isolated_settings(stack, "uw", dim=DIM, topic_partitions=1)
    await create_topics(settings.kafka_bootstrap, settings.topics.values(), 1)
    ids = [f"item-{i}" for i in range(200)]
    vectors = cluster_vectors(np.arange(200) % 10, DIM, seed=3)
    params = LSHParams(dim=DIM, k=4, L=4, T=2)
    store = Store.from_url(settings.redis_url, settings.redis_prefix)
    r = redis.Redis.from_url(settings.redis_url)
    # settings.environ() names every setting: leave the user-vector ones unset
    user_vars = {ENV_NAMES[name] for name in USER_VECTOR_KEYS.values()}
    env = {k: v for k, v in settings.environ().items() if k not in user_vars}
    for var in user_vars:
        monkeypatch.delenv(var, raising=False)
    log = tmp_path / "worker.log"
    client = RecallClient(settings)
    worker = None
    try:
        await load_index(store, ids, vectors, params, progress=False,
                         user={"window": 2, "half_life": 0.0})
        worker = start_worker(env, log, settings.metrics_port)
        await client.start()
        await client.wait_ready(60)

        async def clicks_kept(uid: str, n: int) -> int:
            await client.clicks([{"user_id": uid, "item_id": ids[j], "ts": 100.0 + j}
                                 for j in range(n)])
            # every click applied: the newest one is in the stored window
            state = await eventually(
                lambda: (s := stored_user(r, settings, uid)) is not None
                and s.window[-1].item_id == ids[n - 1] and s, 30)
            return len(state)

        assert await clicks_kept("a", 5) == 2  # not the default 50
        # a new version loaded while the worker runs brings its own settings
        v2, _ = await load_index(store, ids, vectors, params, progress=False,
                                 user={"window": 3, "half_life": 0.0})
        await eventually(lambda: metric(settings.metrics_port, "recall_index_version") == v2,
                         30)
        assert await clicks_kept("b", 6) == 3
        text = log.read_text()
        assert "last 2 clicks" in text and "last 3 clicks" in text
        assert "(from index version)" in text
        worker.stop()
        # an explicit RECALL_USER_WINDOW wins over the version's choice
        worker = start_worker({**env, "RECALL_USER_WINDOW": "4"}, log,
                              settings.metrics_port)
        await client.wait_ready(60)
        assert await clicks_kept("c", 7) == 4
        assert "(from environment over index version)" in log.read_text()
    finally:
        await client.stop()
        if worker is not None:
            worker.stop()
        await store.close()
        r.close()
