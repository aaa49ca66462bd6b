"""The Redis layout: the durable, shared state of the index, user windows and popularity.

The one storage layer that talks to Redis: every key, Lua script, pipeline and retry of
the project is in this package (the worker, the offline loader and the benchmarks call
:class:`Store`'s methods). This module holds the index versions and items;
:mod:`recall.store.users` the user-state keys (windows, click batches, claimed events,
popularity), which :class:`Store` inherits; :mod:`recall.store.client` the client's
retries and packing and :class:`Keys`, the key names both use.
Redis is the source of truth; the hot index lives in each worker's memory and can be
rebuilt from Redis alone (:meth:`Store.iter_items`). Async, over ``redis.asyncio``; the
client must return bytes (``decode_responses=False``; :meth:`Store.from_settings` makes
one). Every multi-key write is sent as one pipeline (one round trip); very large calls
are cut into pipelines of :data:`PIPELINE_CHUNK` commands.

Retries: every command has a deadline (``RECALL_REDIS_TIMEOUT``) and connection errors
and timeouts are retried by redis-py's own ``Retry`` (jittered exponential backoff,
:data:`CLIENT_RETRIES` times) before they reach the caller, whose consumer then retries
its batch (stream.policy). Every write is safe to repeat: whole values, offsets, and the
click batch's script, which adds popularity only if the partitions' stored offsets are
the ones the batch started from (a timed-out call may still run later); that one is
retried until Redis takes it (its users are already changed in the worker's memory).

Key layout (``{p}`` = ``RECALL_REDIS_PREFIX``, default ``recall``; ``{v}`` = index version)::

    {p}:index:live               string  the live version (decimal); absent = none yet
    {p}:index:next               string  INCR counter handing out versions
    {p}:index:{v}:meta           hash    params  (JSON of LSHParams.to_dict())
                                         dim     (decimal)
                                         created (seconds since the epoch, decimal)
                                         user    (optional; JSON: the user-vector settings
                                         chosen offline, {"window", "half_life", ...})
                                         relayout_of (optional; decimal: the version a
                                         re-pick copied with a new hash layout)
    {p}:index:{v}:vectors        hash    item_id -> D float32 little-endian (4*D bytes),
                                         L2-normalised
    {p}:index:{v}:buckets        hash    item_id -> L int64 little-endian (8*L bytes): the
                                         item's bucket key in each table, as returned
                                         by Hasher.keys (bucket membership, per item)
    {p}:index:{v}:offsets        hash    items partition -> next offset written to v: v
                                         holds every change before it (a streaming
                                         write that would leave a gap is refused,
                                         Store.write_items)
    {p}:index:init               string  SET NX lock of the worker creating version 1
    {p}:index:repick             string  SET NX lock of the worker copying the live version
                                         to a new hash layout (stream.watch)
    {p}:user:{uid}               string  UserState.to_bytes() (see recall.userstate)
    {p}:popular                  zset    item_id -> click count (weights not applied)
    {p}:event:{event_id}         string  "1" with a TTL: a click event_id already claimed
    {p}:clicks:offsets           hash    clicks partition -> next offset applied

Versions: a job builds version ``v`` (create_version, upsert_items...) while readers use
the live one, then :meth:`Store.switch_live` sets ``live``, so a reader of ``live``
always finds a complete version. Old versions are removed with
:meth:`Store.delete_version` (SCAN + UNLINK in batches).

Why membership per item (item -> its L keys) and not a set per bucket: with tuned
parameters buckets are small (about 1 item per bucket at k=8, w=1), so sets per bucket
cost one Redis key per item and table (several times the memory and a fraction of the
write rate; figures in docs/state.md). An upsert or delete also needs no old keys (the
item's field is overwritten or deleted; no read-modify-write). Readers build the
bucket -> items map in memory, as LSHIndex does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recall.config import Settings
from recall.store.client import CLIENT_RETRIES, Keys, _pack_with_hiredis, client_retry
from recall.store.users import (
    BATCH_ALREADY_WRITTEN,
    BATCH_CONFLICT,
    CLICKS_WRITE_LUA,
    POPULAR_TOP_LUA,
    ClickOffsetsConflict,
    UserStore,
)

__all__ = ["BATCH_ALREADY_WRITTEN", "BATCH_CONFLICT", "CLICKS_WRITE_LUA", "CLIENT_RETRIES",
           "HSET_CHUNK", "ITEMS_WRITE_LUA", "PIPELINE_CHUNK", "POPULAR_TOP_LUA",
           "ClickOffsetsConflict", "Keys", "PartitionWrite", "Store", "UserStore",
           "VersionGone", "client_retry"]

#: commands per pipeline when a call is very large
PIPELINE_CHUNK = 20_000
#: items per HSET command
HSET_CHUNK = 1000

#: the streaming write of item changes (Store.write_items); KEYS = meta, vectors, buckets,
#: offsets of one version; ARGV = number of partitions, then per partition (partition,
#: start, next, upserts, deletes), then per partition its upserts (id, vector, keys)... and
#: deletes (id)... A partition's part is written only if the stored offset is absent or in
#: [start, next]: below start, writing it would record ``next`` over a gap of changes the
#: version never got (they went to the version live before, or were not written by anyone
#: while the partition changed hands); above next, the version already holds newer
#: changes. Replies the refused partitions as (partition, stored offset)..., or 'gone'
#: when the version no longer exists.
ITEMS_WRITE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local np = tonumber(ARGV[1])
local a = 2 + 5 * np
local refused = {}
for j = 0, np - 1 do
  local b = 2 + 5 * j
  local p, s, n = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local nu, nd = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local cur = redis.call('HGET', KEYS[4], p)
  if cur == false or (tonumber(cur) >= s and tonumber(cur) <= n) then
    for i = 1, nu do
      redis.call('HSET', KEYS[2], ARGV[a], ARGV[a + 1])
      redis.call('HSET', KEYS[3], ARGV[a], ARGV[a + 2])
      a = a + 3
    end
    for i = 1, nd do
      redis.call('HDEL', KEYS[2], ARGV[a])
      redis.call('HDEL', KEYS[3], ARGV[a])
      a = a + 1
    end
    redis.call('HSET', KEYS[4], p, n)
  else
    a = a + 3 * nu + nd
    refused[#refused + 1] = p
    refused[#refused + 1] = cur
  end
end
return refused
"""


@dataclass(frozen=True)
class PartitionWrite:
    """One items partition's net change in a fetch, for :meth:`Store.write_items`:
    the writer's position before it (``start``) and after it (``next``)."""

    partition: int
    start: int
    next: int
    ids: Sequence[str] = ()
    vectors: np.ndarray | None = None  # (len(ids), D) L2-normalised
    keys: np.ndarray | None = None  # (len(ids), L) from Hasher.keys
    deleted: Sequence[str] = ()


class VersionGone(RuntimeError):
    """The version written to was deleted (another became live): write to the live one."""


def _hset_rows(key: str, ids: Sequence[str], rows: np.ndarray) -> list[tuple[Any, ...]]:
    """HSET commands of HSET_CHUNK fields each: id -> the row's raw bytes."""
    width = rows.shape[1] * rows.itemsize
    blob = rows.tobytes()
    commands: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), HSET_CHUNK):
        args: list[Any] = ["HSET", key]
        for i in range(start, min(len(ids), start + HSET_CHUNK)):
            args += (ids[i], blob[i * width:(i + 1) * width])
        commands.append(tuple(args))
    return commands


class Store(UserStore):
    """Async access to the layout above; ``redis`` must return bytes. The user-state keys'
    methods are :class:`~recall.store.users.UserStore`'s; the versions and items are here."""

    def __init__(self, redis: aioredis.Redis, prefix: str = "recall") -> None:
        super().__init__(redis, Keys(prefix))
        self._items_script = redis.register_script(ITEMS_WRITE_LUA)

    @classmethod
    def from_url(cls, url: str, prefix: str = "recall", timeout: float | None = None) -> Store:
        """A store over a client of ``url``; ``timeout`` (seconds) bounds each command and
        connection attempt (redis-py's default is 5 s). Connection errors and timeouts are
        retried by redis-py's own :class:`~redis.asyncio.retry.Retry` (exponential
        backoff with jitter, :data:`CLIENT_RETRIES` times) before they reach the caller."""
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(_pack_with_hiredis(aioredis.Redis.from_url(
            url, decode_responses=False, retry=client_retry(),
            retry_on_error=[RedisConnectionError, RedisTimeoutError], **kwargs)), prefix)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The worker's store: ``REDIS_URL``, ``RECALL_REDIS_PREFIX``, and
        ``RECALL_REDIS_TIMEOUT`` per command."""
        return cls.from_url(settings.redis_url, settings.redis_prefix,
                            timeout=settings.redis_timeout)

    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> None:
        """PING: raises redis-py's error when Redis refuses the credentials
        (``AuthenticationError``, or a ``ResponseError`` NOAUTH / WRONGPASS) or does not
        answer (the worker's start-up check, stream.preflight)."""
        await self.r.ping()

    async def _run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send raw ``(COMMAND, *args)`` in pipelines of PIPELINE_CHUNK; return the replies."""
        replies: list[Any] = []
        for start in range(0, len(commands), PIPELINE_CHUNK):
            pipe = self.r.pipeline(transaction=False)
            for command in commands[start:start + PIPELINE_CHUNK]:
                pipe.execute_command(*command)
            replies.extend(await pipe.execute())
        return replies

    # --- versions --------------------------------------------------------------

    async def live_version(self) -> int | None:
        raw = await self.r.get(self.keys.live)
        return int(raw) if raw is not None else None

    async def create_version(self, params_dict: Mapping[str, Any], dim: int,
                             user: Mapping[str, Any] | None = None,
                             relayout_of: int | None = None) -> int:
        """A new, empty version with its metadata (not live until switch_live); ``user``:
        the user-vector settings that go with its vectors (``recall train``'s choice);
        ``relayout_of``: the version whose items it copies with a new hash layout (a
        re-pick: a worker serving that version re-hashes the items it has in memory)."""
        v = int(await self.r.incr(self.keys.next))
        mapping = {
            "params": orjson.dumps(dict(params_dict)),
            "dim": str(int(dim)),
            "created": repr(time.time()),
        }
        if user is not None:
            mapping["user"] = orjson.dumps(dict(user))
        if relayout_of is not None:
            mapping["relayout_of"] = str(int(relayout_of))
        await self.r.hset(self.keys.meta(v), mapping=mapping)
        return v

    async def get_meta(self, version: int) -> dict[str, Any] | None:
        """``{"params": dict, "dim": int, "created": float, "user": dict | None,
        "relayout_of": int | None}`` or None if unknown."""
        raw = await self.r.hgetall(self.keys.meta(version))
        if not raw:
            return None
        return {
            "params": orjson.loads(raw[b"params"]),
            "dim": int(raw[b"dim"]),
            "created": float(raw[b"created"]),
            "user": orjson.loads(raw[b"user"]) if b"user" in raw else None,
            "relayout_of": int(raw[b"relayout_of"]) if b"relayout_of" in raw else None,
        }

    async def set_params(self, version: int, params_dict: Mapping[str, Any]) -> None:
        """Replace a version's parameters. Only for changes that keep its stored bucket
        keys valid (the probes per table T, the bucket cap): the hash layout is fixed
        for a version's life; a new layout needs a new version."""
        if not await self.r.exists(self.keys.meta(version)):
            raise ValueError(f"index version {version} does not exist")
        await self.r.hset(self.keys.meta(version), "params", orjson.dumps(dict(params_dict)))

    async def switch_live(self, version: int) -> None:
        """Make ``version`` live (one SET: readers poll ``live``)."""
        if not await self.r.exists(self.keys.meta(version)):
            raise ValueError(f"index version {version} does not exist")
        await self.r.set(self.keys.live, str(int(version)))

    async def create_first_version(self, params_dict: Mapping[str, Any], dim: int,
                                   partitions: int) -> int | None:
        """With no live version yet, one worker creates an empty one (every items
        partition to be read from 0) and makes it live; returns it, or None when another
        worker holds the creation lock (it is creating one: poll :meth:`live_version`)."""
        if not await self.acquire(self.keys.init_lock, 30):
            return None
        v = await self.create_version(params_dict, dim)
        await self.r.hset(self.keys.item_offsets(v), mapping={p: 0 for p in range(partitions)})
        await self.switch_live(v)
        return v

    async def delete_version(self, version: int, batch: int = 1000) -> int:
        """Remove every key of a version that is not live; returns keys removed."""
        if await self.live_version() == version:
            raise ValueError(f"index version {version} is live; switch first")
        removed = 0
        pending: list[bytes] = []
        async for key in self.r.scan_iter(match=self.keys.version_pattern(version), count=batch):
            pending.append(key)
            if len(pending) >= batch:
                removed += int(await self.r.unlink(*pending))
                pending.clear()
        if pending:
            removed += int(await self.r.unlink(*pending))
        return removed

    # --- items -----------------------------------------------------------------

    async def upsert_items(self, version: int, ids: Sequence[str], vectors: np.ndarray,
                           new_keys: np.ndarray) -> None:
        """Write the vectors and bucket keys of ``ids`` (one pipeline, HSET in chunks).

        ``vectors`` (n, D) L2-normalised; ``new_keys`` (n, L) from ``Hasher.keys``.
        Membership is stored per item, so an upsert replaces it: no old keys needed.
        """
        n = len(ids)
        if n == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        new_keys = np.ascontiguousarray(new_keys, dtype="<i8")
        if (vectors.ndim != 2 or new_keys.ndim != 2 or vectors.shape[0] != n
                or new_keys.shape[0] != n):
            raise ValueError("ids, vectors and new_keys must have the same number of rows")
        await self._run([
            *_hset_rows(self.keys.vectors(version), ids, vectors),
            *_hset_rows(self.keys.buckets(version), ids, new_keys),
        ])

    async def write_items(self, version: int,
                          writes: Sequence[PartitionWrite]) -> dict[int, int]:
        """The streaming writer's path: each partition's upserts, deletes and next offset,
        all in ONE script (atomic, one round trip). A partition is written only where
        that keeps ``version`` complete up to its recorded offset (:data:`ITEMS_WRITE_LUA`);
        returns the refused ones, partition -> stored offset (the writer rewinds to it
        when it is behind the batch). Safe to repeat (whole values, offsets checked).
        VersionGone: ``version`` no longer exists."""
        head: list[Any] = [len(writes)]
        body: list[Any] = []
        for w in writes:
            n = len(w.ids)
            if n:
                if w.vectors is None or w.keys is None:
                    raise ValueError("upserts need their vectors and keys")
                vecs = np.ascontiguousarray(w.vectors, dtype="<f4")
                keys = np.ascontiguousarray(w.keys, dtype="<i8")
                if vecs.shape[0] != n or keys.shape[0] != n:
                    raise ValueError("ids, vectors and keys must have the same number of rows")
                vb, kb = vecs.tobytes(), keys.tobytes()
                vw, kw = len(vb) // n, len(kb) // n
                for i, item in enumerate(w.ids):
                    body += (item, vb[i * vw:(i + 1) * vw], kb[i * kw:(i + 1) * kw])
            body += w.deleted
            head += (int(w.partition), int(w.start), int(w.next), n, len(w.deleted))
        if not writes:
            return {}
        keys = [self.keys.meta(version), self.keys.vectors(version),
                self.keys.buckets(version), self.keys.item_offsets(version)]
        reply = await self._items_script(keys=keys, args=[*head, *body])
        if reply == b"gone":
            raise VersionGone(f"index version {version} no longer exists")
        return {int(reply[i]): int(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def items_count(self, version: int) -> int:
        return int(await self.r.hlen(self.keys.vectors(version)))

    async def iter_items(self, version: int, batch: int = 1000,
                         dim: int | None = None) -> AsyncIterator[tuple[list[str], np.ndarray]]:
        """All items of a version as (ids, float32 matrix) batches, by HSCAN.

        Like every SCAN, an item may come twice if the hash is resized meanwhile
        (harmless for upserting consumers). Values of the wrong length raise ValueError.
        """
        if dim is None:
            meta = await self.get_meta(version)
            if meta is None:
                raise ValueError(f"index version {version} does not exist")
            dim = int(meta["dim"])
        row = 4 * dim
        cursor = 0
        while True:
            cursor, chunk = await self.r.hscan(self.keys.vectors(version), cursor, count=batch)
            if chunk:
                values = list(chunk.values())
                blob = b"".join(values)
                if len(blob) != row * len(values):
                    bad = next(k for k, v in chunk.items() if len(v) != row)
                    raise ValueError(f"item {bad!r}: vector of {len(chunk[bad])} bytes, "
                                     f"expected {row}")
                ids = [k.decode() for k in chunk]
                yield ids, np.frombuffer(blob, dtype="<f4").reshape(len(values), dim)
            if cursor == 0:
                return

    async def set_item_offsets(self, version: int, offsets: Mapping[int, int]) -> None:
        """Record ``version`` as complete up to these items offsets (a copied version)."""
        if offsets:
            await self.r.hset(self.keys.item_offsets(version), mapping=dict(offsets))

    async def acquire(self, lock: str, seconds: float) -> bool:
        """Take a lock key of :class:`Keys` (SET NX with a TTL); False if held."""
        return bool(await self.r.set(lock, b"1", nx=True, ex=max(1, int(seconds))))

    async def release(self, lock: str) -> None:
        await self.r.delete(lock)

    async def item_offsets(self, version: int) -> dict[int, int]:
        """Items partition -> next offset written to ``version`` (absent: none recorded)."""
        raw = await self.r.hgetall(self.keys.item_offsets(version))
        return {int(p): int(o) for p, o in raw.items()}

    async def used_memory(self, key: str | None = None) -> int:
        """Bytes Redis uses in all (INFO memory), or for one key (MEMORY USAGE)."""
        if key is None:
            return int((await self.r.info("memory"))["used_memory"])
        return int(await self.r.memory_usage(key, samples=0) or 0)
