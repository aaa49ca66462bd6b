"""The user-state keys: users' windows, click batches, claimed events, popularity.

Half of the one storage layer (:mod:`recall.store`, whose docstring lists the keys):
the click path's reads and its one atomic write, and the popular items. :class:`Store`
adds the index versions and items on top of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from recall.store.client import Keys, client_retry

log = logging.getLogger(__name__)

#: the atomic write of a click batch (Store.write_clicks); KEYS = offsets hash,
#: popular zset, user keys, event keys; ARGV = counts, ttl, user blobs, (item, n)...,
#: (partition, expected offset, next offset)...
#: Safe to repeat: it writes only if every partition's stored offset is the one the batch
#: was computed from. A batch already written (its command ran late, after redis-py gave
#: up waiting, and was sent again) finds the batch's next offsets: -1, nothing written,
#: so popularity is not counted twice. Any other offset (Redis lost writes in a crash,
#: another worker applied the partition): -2, nothing written; the worker reloads.
CLICKS_WRITE_LUA = """
local nu, ni, ne, ttl, np = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
    ARGV[4], tonumber(ARGV[5])
local a = 6 + nu + 2 * ni
local done = 0
for j = 0, np - 1 do
  local b = a + 3 * j
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[b]) or '0')
  if cur == tonumber(ARGV[b + 2]) then done = done + 1
  elseif cur ~= tonumber(ARGV[b + 1]) then return -2 end
end
if done == np and np > 0 then return -1 end
if done > 0 then return -2 end
a = 6
for i = 1, nu do redis.call('SET', KEYS[2 + i], ARGV[a]); a = a + 1 end
for i = 1, ni do redis.call('ZINCRBY', KEYS[2], ARGV[a + 1], ARGV[a]); a = a + 2 end
for i = 1, ne do redis.call('SET', KEYS[2 + nu + i], '1', 'EX', ttl) end
for j = 1, np do redis.call('HSET', KEYS[1], ARGV[a], ARGV[a + 2]); a = a + 3 end
return nu
"""


#: CLICKS_WRITE_LUA's replies besides the number of users written
BATCH_ALREADY_WRITTEN, BATCH_CONFLICT = -1, -2


class ClickOffsetsConflict(RuntimeError):
    """Redis's applied clicks offsets are not the ones a batch was computed from (Redis
    lost writes, or another worker applied the partition): nothing was written; the
    caller reloads the partitions' users and reads their clicks again from Redis's."""


#: the top popular items as ONE JSON string: the plain ZREVRANGE WITHSCORES reply of 2000
#: items took ~20% of the worker's event loop (refreshed every second) in redis-py's parser
POPULAR_TOP_LUA = """
local r = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
if #r == 0 then return '[]' end
return cjson.encode(r)
"""


class UserStore:
    """Async access to the user-state keys; ``redis`` must return bytes."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.r = redis
        self.keys = keys
        self._clicks_script = redis.register_script(CLICKS_WRITE_LUA)
        self._popular_script = redis.register_script(POPULAR_TOP_LUA)
        self._until_written = client_retry(retries=-1, cap=2.0, errors=(RedisError, OSError))

    async def get_users(self, uids: Sequence[str]) -> dict[str, bytes | None]:
        """Stored UserState bytes per user (None when unknown), one MGET."""
        if not uids:
            return {}
        values = await self.r.mget([self.keys.user(u) for u in uids])
        return dict(zip(uids, values, strict=True))

    async def get_users_and_events(self, uids: Sequence[str], event_ids: Sequence[str]
                                   ) -> tuple[dict[str, bytes | None], set[str]]:
        """Stored user states and which event ids are already claimed: ONE round trip
        (a click batch's read)."""
        pipe = self.r.pipeline(transaction=False)
        if uids:
            pipe.mget([self.keys.user(u) for u in uids])
        if event_ids:
            pipe.mget([self.keys.event(e) for e in event_ids])
        replies = list(await pipe.execute()) if (uids or event_ids) else []
        users = dict(zip(uids, replies.pop(0), strict=True)) if uids else {}
        claimed = ({e for e, raw in zip(event_ids, replies.pop(0), strict=True)
                    if raw is not None} if event_ids else set())
        return users, claimed

    async def put_users(self, states: Mapping[str, bytes]) -> None:
        """Store UserState bytes of several users, one MSET."""
        if states:
            await self.r.mset({self.keys.user(u): b for u, b in states.items()})

    async def click_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        """Next clicks offset applied, per partition (absent = none applied)."""
        if not partitions:
            return {}
        raw = await self.r.hmget(self.keys.click_offsets, [str(p) for p in partitions])
        return {p: int(v) for p, v in zip(partitions, raw, strict=True) if v is not None}

    async def top_popular(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most clicked items, most first (one script call returning JSON)."""
        if k <= 0:
            return []
        flat = orjson.loads(await self._popular_script(keys=[self.keys.popular], args=[k]))
        return [(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def write_clicks(self, users: Mapping[str, bytes], popular: Mapping[str, int],
                           event_ids: Sequence[str], event_ttl: int,
                           offsets: Mapping[int, tuple[int, int]]) -> bool:
        """A click batch in ONE atomic script call (a MULTI of 2 commands per click cost
        ~150 us per click in redis-py): user states, popularity increments, claimed event
        ids (with a TTL) and, per partition, ``(expected, next)`` applied offsets.

        Safe to repeat (:data:`CLICKS_WRITE_LUA`), so it is retried until Redis takes it:
        True when written, False when this batch was written before (nothing written
        again); ClickOffsetsConflict when the stored offsets are others."""
        offsets_key = self.keys.click_offsets
        keys = [offsets_key, self.keys.popular, *(self.keys.user(u) for u in users),
                *(self.keys.event(e) for e in event_ids)]
        args: list[Any] = [len(users), len(popular), len(event_ids), int(event_ttl),
                           len(offsets), *users.values()]
        for item_id, n in popular.items():
            args += (item_id, n)
        for p, (expected, nxt) in offsets.items():
            args += (p, expected, nxt)

        async def failed(exc: BaseException) -> None:
            log.warning("redis: click batch write failed (%s: %s); retrying until Redis "
                        "takes it", type(exc).__name__, exc)

        # until Redis is back: the script is safe to repeat, and the batch's users are
        # already changed in memory (the consumer holds its partitions meanwhile)
        written = int(await self._until_written.call_with_retry(
            lambda: self._clicks_script(keys=keys, args=args), failed))
        if written == BATCH_CONFLICT:
            stored = await self.r.hmget(offsets_key, [str(p) for p in offsets])
            raise ClickOffsetsConflict(f"clicks offsets {dict(offsets)} (expected, next) "
                                       f"but Redis holds {stored}")
        return written != BATCH_ALREADY_WRITTEN

    async def replace_popular(self, counts: Mapping[str, float]) -> None:
        """Replace the popularity zset with ``counts``, atomically (MULTI/EXEC)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.keys.popular)
        items = list(counts.items())
        for start in range(0, len(items), 10_000):
            pipe.zadd(self.keys.popular, dict(items[start:start + 10_000]))
        await pipe.execute()
