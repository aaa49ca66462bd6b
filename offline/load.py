"""Bulk-load item vectors into Redis as a new index version and switch it live atomically;
or publish them to the ``items`` topic; and bootstrap user windows and popularity.

Into Redis (through :class:`recall.store.Store`): a new version is created with the
tuned parameters in its meta, vectors and bucket memberships are written in pipelined
batches, and only then is ``{p}:index:live`` switched (one MULTI/EXEC), so a worker
never sees a half-loaded index. The previous live version is deleted afterwards unless
``keep_old``. A failure before the switch deletes the partial version.

The user-vector settings written next to the vectors (``<stem>.model.json``, by
``recall train``) go into the version's metadata: the worker then makes user vectors as
the training chose (unless RECALL_USER_WINDOW / RECALL_USER_DECAY_HALF_LIFE are set).

From a click log: every user's last ``window`` clicks (those same settings) become their
stored window (``UserState`` built by :class:`recall.users.RollingUserVectors`, overwriting what
was there), and the popularity zset is replaced by the log's click counts (one
MULTI/EXEC).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from offline.clicklog import ClickLog
from recall.config import kafka_client_kwargs

log = logging.getLogger(__name__)


@dataclass
class LoadResult:
    version: int | None  # None when published to the topic
    previous: int | None
    items: int
    users: int
    popular_items: int


async def load_index(store: Any, ids: list[str], vectors: np.ndarray, params: Any,
                     batch: int = 5000, keep_old: bool = False, progress: bool = True,
                     user: dict[str, Any] | None = None) -> tuple[int, int | None]:
    """Write a new version and switch it live; returns (new version, previous live).
    ``user``: the user-vector settings chosen with the vectors (the model file's), kept
    in the version's metadata for the worker."""
    from tqdm import tqdm

    from recall.lsh import Hasher

    hasher = Hasher(params)
    previous = await store.live_version()
    version = await store.create_version(params.to_dict(), vectors.shape[1], user=user)
    try:
        with tqdm(total=len(ids), unit="item", desc=f"load v{version}",
                  disable=not progress) as bar:
            for start in range(0, len(ids), batch):
                chunk = vectors[start:start + batch]
                await store.upsert_items(version, ids[start:start + batch], chunk,
                                         hasher.keys(chunk))
                bar.update(len(chunk))
        written = await store.items_count(version)
        if written != len(ids):
            raise RuntimeError(f"version {version} holds {written} items, expected {len(ids)}")
        await store.switch_live(version)
    except BaseException:
        log.error("load failed; removing the partial version %d", version)
        await store.delete_version(version)
        raise
    if previous is not None and previous != version and not keep_old:
        await store.delete_version(previous)
    return version, previous


async def bootstrap_users(store: Any, clicks: ClickLog, ids: list[str], vectors: np.ndarray,
                          window: int, half_life: float = 0.0, batch: int = 2000,
                          progress: bool = True, interests: int = 1,
                          session_gap: float = 1800.0, state_format: str = "packed") -> int:
    """Store every user's last ``window`` clicks as their window (cut into ``interests``
    sessions, as the worker will keep it), in ``state_format`` (RECALL_USER_STATE_FORMAT:
    "columns" while workers older than format 4 run, "json" older than format 3);
    returns users written."""
    from tqdm import tqdm

    from offline.userwin import window_mask
    from recall.users import RollingUserVectors
    from recall.userstate import FORMATS

    row_of = {item_id: r for r, item_id in enumerate(ids)}
    dim = vectors.shape[1]

    def lookup(items: list[str]) -> tuple[np.ndarray, np.ndarray]:
        r = np.fromiter((row_of.get(i, -1) for i in items), dtype=np.int64, count=len(items))
        present = r >= 0
        out = np.zeros((len(items), dim), dtype=np.float32)
        out[present] = vectors[r[present]]
        return out, present

    policy = RollingUserVectors(dim, window, half_life, lookup=lookup, interests=interests,
                                session_gap=session_gap)
    win = clicks.take(window_mask(clicks, window))
    bounds = win.user_bounds()
    names, users = clicks.item_ids, clicks.user_ids
    item = win.item.tolist()
    ts, w = win.ts.tolist(), win.weight.tolist()
    ev = [None] * len(win) if win.event_id is None else win.event_id.tolist()
    pending: dict[str, bytes] = {}
    n_users = len(bounds) - 1
    with tqdm(total=n_users, unit="user", desc="users", disable=not progress) as bar:
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            state = policy.new_state()
            state.clicks = [(names[item[j]], ts[j], w[j], ev[j], False)
                            for j in range(a, b)]
            policy.recompute(state)
            pending[users[int(win.user[a])]] = state.to_bytes(FORMATS[state_format])
            if len(pending) >= batch:
                await store.put_users(pending)
                bar.update(len(pending))
                pending = {}
        if pending:
            await store.put_users(pending)
            bar.update(len(pending))
    return n_users


async def replace_popular(store: Any, clicks: ClickLog) -> int:
    """Replace the popularity zset with the log's click counts, atomically."""
    counts = np.bincount(clicks.item, minlength=len(clicks.item_ids))
    nz = np.flatnonzero(counts)
    await store.replace_popular({clicks.item_ids[i]: float(counts[i]) for i in nz.tolist()})
    return len(nz)


async def publish_items(settings: Any, ids: list[str], vectors: np.ndarray,
                        progress: bool = True) -> int:
    """Send every vector to the items topic (key = item id, contract format)."""
    import orjson
    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5,
                                max_batch_size=256 * 1024, **kafka_client_kwargs(settings))
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # else aiokafka warns about an unclosed producer
        raise
    try:
        vec_lists = vectors.tolist()
        with tqdm(total=len(ids), unit="item", desc=f"publish {settings.topic_items}",
                  disable=not progress) as bar:
            for start in range(0, len(ids), 5000):
                futures = [
                    await producer.send(
                        settings.topic_items, key=item_id.encode(),
                        value=orjson.dumps({"item_id": item_id, "vector": vec}))
                    for item_id, vec in zip(ids[start:start + 5000],
                                            vec_lists[start:start + 5000], strict=True)
                ]
                for fut in futures:
                    await fut
                bar.update(len(futures))
    finally:
        await producer.stop()
    return len(ids)
