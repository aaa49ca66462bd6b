"""Multi-interest users in the worker (RECALL_USER_INTERESTS=2), through its topics.

A user who clicked two unrelated things in two sessions hours apart gets items near both
in one response: each interest vector is searched through the LSH index and the results
merged by score (with one vector, their mean points between the interests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import redis

from devtools.client import RecallClient
from devtools.localstack import LocalStack, Service
from offline.generate import cluster_vectors
from recall.config import Settings
from recall.userstate import UserState
from tests.support import eventually, isolated_settings, ready_client, running_worker, stored_user

pytestmark = pytest.mark.integration

N_ITEMS = 3000  # above the worker's exact-search size: answers come through LSH
DIM = 32


@pytest.fixture(scope="module")
def catalogue() -> tuple[list[str], np.ndarray, np.ndarray]:
    clusters = np.random.default_rng(5).integers(0, 30, size=N_ITEMS)
    vectors = cluster_vectors(clusters, DIM, seed=5)
    return [f"it-{i}" for i in range(N_ITEMS)], vectors, clusters


@pytest.fixture(scope="module")
def settings(stack: LocalStack) -> Settings:
    return isolated_settings(stack, "mi", dim=DIM, topic_partitions=2, user_window=20,
                             user_interests=2, user_session_gap=1800.0)


@pytest.fixture(scope="module")
def worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from running_worker(settings, tmp_path_factory.mktemp("worker"), log_tail=3000)


@pytest.fixture(scope="module")
async def client(settings: Settings, worker: Service,
                 catalogue: tuple[list[str], np.ndarray, np.ndarray],
                 ) -> AsyncIterator[RecallClient]:
    ids, vectors, _ = catalogue
    async with ready_client(settings, ids, vectors) as c:
        yield c


async def test_a_user_with_two_interests_gets_items_near_both(
        client: RecallClient, settings: Settings,
        catalogue: tuple[list[str], np.ndarray, np.ndarray]) -> None:
    ids, vectors, clusters = catalogue
    rng = np.random.default_rng(2)
    a, b = 3, 17  # two clusters far apart
    assert float(vectors[clusters == a].mean(0) @ vectors[clusters == b].mean(0)) < 0.5
    first = rng.choice(np.flatnonzero(clusters == a), 4, replace=False)
    second = rng.choice(np.flatnonzero(clusters == b), 4, replace=False)
    uid = "two-interests"
    clicks = [{"user_id": uid, "item_id": ids[i], "ts": 1000.0 + n}
              for n, i in enumerate(first)]
    clicks += [{"user_id": uid, "item_id": ids[i], "ts": 20_000.0 + n}  # 5 h later
               for n, i in enumerate(second)]
    await client.clicks(clicks)
    r = redis.Redis.from_url(settings.redis_url)
    try:
        def stored() -> UserState | None:
            return stored_user(r, settings, uid)

        await eventually(lambda: (s := stored()) is not None and len(s) == 8)
        assert stored().starts == (0, 4)  # two sessions, two interest vectors
    finally:
        r.close()
    resp = await client.recall(uid, k=10)
    assert resp.value["status"] == "ok" and resp.value["source"] == "lsh"
    got = [int(i.split("-")[1]) for i in resp.item_ids]
    assert len(got) == 10 and not set(got) & {*first.tolist(), *second.tolist()}
    near_a = int((clusters[got] == a).sum())
    near_b = int((clusters[got] == b).sum())
    assert near_a >= 2 and near_b >= 2, (near_a, near_b)
    # merged by score: best first, and each item's score is its cosine to the nearer
    # interest (the exact mean of that session's clicks)
    interests = np.stack([vectors[first].mean(0), vectors[second].mean(0)])
    interests /= np.linalg.norm(interests, axis=1, keepdims=True)
    scores = [i["score"] for i in resp.value["items"]]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, (vectors[got] @ interests.T).max(axis=1), atol=1e-4)
