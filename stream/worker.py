"""The worker: its state and what it does with clicks, items and recall requests.

- ``clicks`` (:mod:`stream.clicks`, the partitions whose numbers this worker owns of
  ``recall-requests``): the batch of clicks a fetch returns (up to 2000) is applied to
  the in-memory user states at once, then written in ONE atomic Redis call (a Lua
  script): user states, popularity, claimed event ids, and the partition's next offset.
  Offsets already applied (after a crash) and event ids
  already claimed are skipped, so every click applies exactly once.
- ``items`` (:class:`stream.items.ItemsFollower`, no group): every worker applies every
  partition to its in-memory index, and writes the partitions it owns (by the request
  partition numbers) to Redis with their next offsets, in one MULTI per fetch. (As a
  faust agent the writer took ~1,000 items/s and its backlog stalled requests for
  seconds behind it in faust's shared fetch buffer.)
- ``recall-requests`` (:mod:`stream.requests`, the workers' group): the requests of a
  fetch are answered together as soon as they are read, from memory (users not in memory
  are read from Redis in one MGET); LSH top-k, popular items for cold users,
  ``invalid`` / ``error`` responses, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from redis.exceptions import RedisError

from recall import kernels
from recall.config import Settings, set_in_env, user_vector_settings
from recall.interests import merge_results
from recall.lsh import QueryResult
from recall.messages import (
    Click,
    Invalid,
    parse_click,
    parse_request,
    response_record,
)
from recall.messages import dlq_record as make_dlq_record
from recall.store import ClickOffsetsConflict, Store, client_retry
from recall.users import RollingUserVectors, UserState
from stream import deadline
from stream.items import ItemsFollower, ItemsWriter, ensure_live_version, load_index
from stream.metrics import Metrics
from stream.state import IndexSlot, PopularCache, UserCache

log = logging.getLogger(__name__)

#: below this many items, exact search is as fast as LSH and exact
EXACT_MAX_ITEMS = 1000
#: popular items kept in memory (enough for k=1000 after excluding a window)
POPULAR_KEEP = 2000
#: seconds between checks of the live index version
VERSION_POLL = 1.0
#: longest Kafka key copied onto a DLQ record (a longer one is in the record, truncated)
MAX_DLQ_KEY_BYTES = 1024
#: seconds between event-loop lag samples
LOOP_LAG_EVERY = 0.1


#: the top popular items as ONE JSON string: the plain ZREVRANGE WITHSCORES reply of 2000
#: items took ~20% of the event loop (refreshed every second) in redis-py's RESP parser
POPULAR_TOP_LUA = """
local r = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
if #r == 0 then return '[]' end
return cjson.encode(r)
"""


#: glibc's M_MMAP_THRESHOLD option of mallopt()
_M_MMAP_THRESHOLD = -3


def _return_big_frees(threshold: int = 1 << 20) -> None:
    """Allocations of at least ``threshold`` bytes (numpy arrays of a load, a merge, a
    click batch) mapped on their own and unmapped when freed. glibc raises its threshold
    after such frees (up to 32 MB), so later arrays came from the heap and their freed
    pages stayed resident: at 1M items ~400 MB of a load's temporaries stayed in RSS."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold)


def _release_load_memory() -> None:
    """After a big index load: hand freed heap back to the OS (glibc keeps it otherwise,
    and the load's temporaries are hundreds of MB at 1M items) and move the long-lived
    objects out of the GC's generations (fewer objects traversed by full collections)."""
    import ctypes
    import gc

    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_UNSET = object()


class Recaller:
    """Everything a worker holds; its consumers call into it (one per process)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = Store.from_url(settings.redis_url, settings.redis_prefix,
                                    timeout=settings.redis_timeout)
        # the stream's Redis calls wait for Redis (nothing is acknowledged meanwhile)
        self._stream_retry = client_retry(retries=-1, cap=2.0, errors=(RedisError, OSError))
        self.users = UserCache()
        self.popular = PopularCache()
        self._explicit = set_in_env()
        self._policy = RollingUserVectors(settings.dim, settings.user_window,
                                          settings.user_decay_half_life)
        self._policy_for: object = _UNSET  # the slot's ``user`` the policy was made for
        self.slot: IndexSlot | None = None
        self.follower: ItemsFollower | None = None
        self.writer = ItemsWriter(self.store, settings, self.metrics)
        self._popular_script = self.store.r.register_script(POPULAR_TOP_LUA)
        self.click_offsets: dict[int, int] = {}  # partition -> next offset, owned partitions
        self.clicks: Any = None  # stream.clicks.ClicksConsumer, once started
        self.requests: Any = None  # stream.requests.RequestsConsumer, once started
        self.n_request_partitions = 0  # set from the group's metadata
        self._tasks: list[asyncio.Task] = []
        self._send: Any = None  # async (topic_name, key, value) -> None, set by the app
        self.ready = asyncio.Event()
        self.watch: Any = None  # stream.watch.RecallWatch, once started

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        # the compiled search kernels: loaded from numba's cache (compiled on a first
        # run), before any request can wait for them
        await asyncio.to_thread(kernels.warm_up)
        _return_big_frees()
        version = await ensure_live_version(self.store, s, s.topic_partitions)
        t0 = time.perf_counter()
        index, offsets = await load_index(self.store, version, s.dim)
        self.slot = IndexSlot(index, version, (await self.store.get_meta(version) or {}
                                               ).get("user"))
        _ = self.policy  # logs the user-vector settings in use
        _release_load_memory()
        self.metrics.index_rebuild.set(time.perf_counter() - t0)
        self.metrics.index_version.set(version)
        self.metrics.index_items.set(len(index))
        log.info("index version %d: %d items loaded in %.1fs", version, len(index),
                 time.perf_counter() - t0)
        from stream.clicks import ClicksConsumer
        from stream.kafka import client_kwargs
        from stream.requests import RequestsConsumer

        self.follower = ItemsFollower(s, self.slot, self.metrics, client_kwargs(s),
                                      writer=self.writer, dlq=self.dlq)
        await self.follower.start(offsets)
        self.watch = start_watch(s, self.slot, self.metrics, self.store,
                                 self.follower.positions)
        await self.refresh_popular()
        clicks = ClicksConsumer(s, self, client_kwargs(s))
        await clicks.start()
        self.clicks = clicks
        self._tasks = [asyncio.create_task(self._watch(), name="recall-watch"),
                       asyncio.create_task(self._loop_lag(), name="recall-loop-lag")]
        self.ready.set()
        # last: join the group once requests can be answered
        requests = RequestsConsumer(s, self, client_kwargs(s))
        await requests.start()
        self.requests = requests

    async def stop(self) -> None:
        if self.requests is not None:  # first: commit answered requests, leave the group
            await self.requests.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.watch is not None:
            await self.watch.stop()
        if self.clicks is not None:
            await self.clicks.stop()
        if self.follower is not None:
            await self.follower.stop()
        await self.store.close()

    async def _watch(self) -> None:
        """Poll the live version (rebuild on change) and refresh popular items."""
        while True:
            await asyncio.sleep(VERSION_POLL)
            try:
                live = await self.store.live_version()
                if live is not None and self.slot is not None and live != self.slot.version:
                    log.info("live index version changed %d -> %d: rebuilding",
                             self.slot.version, live)
                    assert self.follower is not None
                    await self.follower.rebuild(self.store, live)
                if self.popular.stale():
                    await self.refresh_popular()
                self.metrics.users_cached.set(len(self.users))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background refresh failed; retrying")

    async def _loop_lag(self) -> None:
        """recall_event_loop_lag_seconds: how late a 100 ms timer fires. Everything the
        worker does shares one event loop, so this is the wait any request saw then."""
        observe = self.metrics.loop_lag.observe
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(LOOP_LAG_EVERY)
            observe(max(0.0, time.perf_counter() - t0 - LOOP_LAG_EVERY))

    async def refresh_popular(self) -> None:
        t0 = time.perf_counter()
        raw = await self._popular_script(keys=[self.store.keys.popular], args=[POPULAR_KEEP])
        flat = orjson.loads(raw)
        self.popular.set([(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)])
        self.metrics.redis_duration.labels("popular").observe(time.perf_counter() - t0)

    async def own_partitions(self, partitions: set[int]) -> None:
        """The group's assignment changed: consume the clicks partitions of these numbers."""
        assert self.clicks is not None and self.follower is not None  # started before the group
        await self.clicks.own(partitions)
        if not self.n_request_partitions:
            consumer = self.follower.consumer
            found = consumer.partitions_for_topic(self.settings.topic_requests)
            if not found:
                await consumer._client.force_metadata_update()
                found = consumer.partitions_for_topic(self.settings.topic_requests)
            self.n_request_partitions = len(found or ())
        await self.follower.own(self.items_partitions(partitions))

    def items_partitions(self, owned: set[int]) -> set[int]:
        """Items partitions whose Redis writes are this worker's: p such that
        p mod (requests partitions) is an owned request partition."""
        assert self.follower is not None
        n = max(1, self.settings.topic_partitions if not self.n_request_partitions
                else self.n_request_partitions)
        return {tp.partition for tp in self.follower.partitions if tp.partition % n in owned}

    async def stored_click_offsets(self, partitions: list[int]) -> dict[int, int]:
        """Next clicks offset applied to Redis, per partition (absent = none applied)."""
        return await self.store.click_offsets(partitions)

    def on_revoked(self, partitions: set[int]) -> None:
        """Forget users and click offsets of partitions this worker no longer owns."""
        for p in partitions:
            self.click_offsets.pop(p, None)
        dropped = self.users.drop_partitions(partitions)
        log.info("partitions %s revoked: %d users dropped", sorted(partitions), dropped)
        self.metrics.users_cached.set(len(self.users))

    async def dlq(self, topic: str, partition: int, offset: int, exc: Invalid,
                  raw: bytes | None, key: bytes | None) -> None:
        """Dead-letter one unusable message. Never raises: a message that cannot be
        dead-lettered is logged and skipped, so it cannot hold up its partition (the
        callers apply or answer the rest of the batch after this)."""
        self.metrics.invalid.labels(topic, exc.reason).inc()
        log.info("DLQ %s[%d]@%d: %s", topic, partition, offset, exc.reason)
        record = make_dlq_record(topic, partition, offset, exc.reason, exc.message, raw, key)
        dlq_key = key if key is None or len(key) <= MAX_DLQ_KEY_BYTES else None
        try:
            await self._send(self.settings.topic_dlq, dlq_key, record)
        except Exception:
            log.exception("could not write %s[%d]@%d (%d bytes) to the DLQ; skipped",
                          topic, partition, offset, len(raw or b""))

    async def _execute(self, call: Any, op: str) -> Any:
        """Await ``call()``, retried by redis-py's Retry while Redis fails."""

        async def attempt() -> Any:
            t0 = time.perf_counter()
            result = await call()
            self.metrics.redis_duration.labels(op).observe(time.perf_counter() - t0)
            return result

        async def failed(exc: Exception) -> None:
            log.warning("redis %s failed (%s: %s); retrying", op, type(exc).__name__, exc)

        return await self._stream_retry.call_with_retry(attempt, failed)

    # --- users ---------------------------------------------------------------

    @property
    def policy(self) -> RollingUserVectors:
        """User vectors as the live index version's training chose (``recall load``),
        unless RECALL_USER_WINDOW / RECALL_USER_DECAY_HALF_LIFE are set. A change applies
        from each user's next click (a longer stored window is cut then)."""
        stored = self.slot.user if self.slot is not None else None
        if stored is not self._policy_for:
            v, source = user_vector_settings(self.settings, stored, self._explicit)
            p = self._policy
            if self._policy_for is _UNSET or (v["window"], v["half_life"], v["interests"],
                                              v["session_gap"]) != (
                    p.window, p.half_life, p.interests, p.session_gap):
                log.info("user vectors: last %d clicks, decay half-life %gs, %d interest(s), "
                         "session gap %gs (from %s)", v["window"], v["half_life"],
                         v["interests"], v["session_gap"], source)
            self._policy = RollingUserVectors(
                self.settings.dim, int(v["window"]), v["half_life"],
                interests=int(v["interests"]), session_gap=v["session_gap"])
            self._policy_for = stored
        return self._policy

    def _decode_user(self, uid: str, raw: bytes | None) -> UserState:
        if raw is None:
            return self.policy.new_state()
        try:
            return UserState.from_bytes(raw, self.settings.dim)
        except ValueError:
            log.warning("user %r: stored state unreadable; starting empty", uid)
            return self.policy.new_state()

    # --- clicks ----------------------------------------------------------------

    async def handle_clicks(self, records: Sequence[Any]) -> None:
        """Apply a batch of clicks (aiokafka records) of partitions this worker owns."""
        s, m, store = self.settings, self.metrics, self.store
        m.batch_size.labels("clicks").observe(len(records))
        parsed: list[tuple[int, int, Click]] = []
        next_offsets: dict[int, int] = {}
        expected = {}  # partition -> the applied offset this batch starts from
        for r in records:
            applied_to = self.click_offsets.get(r.partition, 0)
            if r.offset < applied_to:  # read again before a seek took effect: skip
                continue
            expected[r.partition] = applied_to
            next_offsets[r.partition] = max(next_offsets.get(r.partition, 0), r.offset + 1)
            ts = r.timestamp / 1000.0 if r.timestamp else time.time()
            try:
                click = parse_click(r.value, ts, s.max_message_bytes)
            except Invalid as exc:
                await self.dlq(r.topic, r.partition, r.offset, exc, r.value, r.key)
                continue
            parsed.append((r.partition, r.offset, click))
        if not next_offsets:
            return
        # one read round trip: users not cached, event ids (the partitions' applied
        # offsets were read when this worker took them: stream.clicks.ClicksConsumer.own)
        missing = self.users.missing(c.user_id for _, _, c in parsed)
        eids = list(dict.fromkeys(c.event_id for _, _, c in parsed if c.event_id))
        claimed: set[str] = set()
        if missing or eids:

            def read() -> Any:
                pipe = store.r.pipeline(transaction=False)
                if missing:
                    pipe.mget([store.keys.user(u) for u in missing])
                if eids:
                    pipe.mget([store.keys.event(e) for e in eids])
                return pipe

            replies = list(await self._execute(lambda: read().execute(), "clicks_read"))
            if missing:
                part_of = {c.user_id: p for p, _, c in parsed}
                for uid, raw in zip(missing, replies.pop(0), strict=True):
                    if self.users.get(uid) is None:
                        self.users.put(uid, self._decode_user(uid, raw), part_of[uid])
            if eids:
                claimed = {e for e, raw in zip(eids, replies.pop(0), strict=True)
                           if raw is not None}
        lookup = self.slot.lookup if self.slot is not None else None
        changed: dict[str, UserState] = {}
        popular: Tally[str] = Tally()
        new_events: list[str] = []
        applied = dupes = 0
        index = self.slot.index if self.slot is not None else None
        # the vectors of the whole batch in one lookup (not one per click)
        if index is not None and parsed:
            mat, present = index.vectors_of([c.item_id for _, _, c in parsed])
            has = present.tolist()
        else:
            mat, has = None, [False] * len(parsed)
        for row, (_, _, c) in enumerate(parsed):
            if c.event_id and c.event_id in claimed:
                dupes += 1
                continue
            state = self.users.get(c.user_id)
            if state is None:  # revoked meanwhile: load again next time
                continue
            vec = mat[row] if has[row] else None
            if not self.policy.apply(state, c.item_id, c.ts, c.weight, vec, c.event_id,
                                     lookup=lookup):
                dupes += 1
                continue
            applied += 1
            changed[c.user_id] = state
            popular[c.item_id] += 1
            if c.event_id:
                claimed.add(c.event_id)
                new_events.append(c.event_id)
        # one write round trip, atomic and safe to repeat (Store.write_click_batch)
        users_blob = {u: st.to_bytes() for u, st in changed.items()}
        offsets = {p: (expected[p], o) for p, o in next_offsets.items()}

        try:  # the consumer then seeks to the offsets Redis holds
            written = await self._execute(lambda: store.write_click_batch(
                users_blob, popular, new_events, int(s.event_id_ttl_seconds), offsets),
                "clicks")
        except ClickOffsetsConflict:
            await self._resync_clicks(set(next_offsets))
            raise
        if not written:
            log.warning("click batch %s was already written (a retried call ran twice); "
                        "not counted again", next_offsets)
        for p, o in next_offsets.items():
            self.click_offsets[p] = max(self.click_offsets.get(p, 0), o)
        m.clicks.inc(applied)
        if dupes:
            m.click_duplicates.inc(dupes)

    async def _resync_clicks(self, partitions: set[int]) -> None:
        """Forget these partitions' users and take Redis's applied offsets."""
        dropped = self.users.drop_partitions(partitions)
        stored = await self.stored_click_offsets(sorted(partitions))
        for p in partitions:
            self.click_offsets[p] = stored.get(p, 0)
        log.warning("clicks partitions %s out of step with Redis: %d users reloaded, "
                    "reading again from offsets %s", sorted(partitions), dropped, stored)

    # --- items -----------------------------------------------------------------

    # --- requests --------------------------------------------------------------

    async def handle_requests(self, records: Sequence[Any]) -> None:
        """Answer the requests one fetch returned (aiokafka records), together: one Redis
        read for the users not in memory, then each from memory. Exactly one response per
        request whose request_id is readable; unusable records also go to the DLQ."""
        t0 = time.perf_counter()
        s = self.settings
        self.metrics.batch_size.labels("requests").observe(len(records))
        parsed = []
        for r in records:
            ts = r.timestamp / 1000.0 if r.timestamp else None
            try:
                parsed.append((r, parse_request(r.value, s.max_message_bytes), ts))
            except Invalid as exc:
                await self.dlq(r.topic, r.partition, r.offset, exc, r.value, r.key)
                if exc.request_id is not None:
                    await self._respond(exc.request_id, exc.user_id, "invalid", [], "none",
                                        t0, ts, error=f"{exc.reason}: {exc.message}")
        # users in memory first: their answers need no Redis, and never wait for it
        await self._answer([x for x in parsed if x[1].user_id in self.users.entries], t0)
        waiting = [x for x in parsed if x[1].user_id not in self.users.entries]
        if waiting:
            await self._answer(waiting, t0, await self._load_users_by(waiting))

    async def _answer(self, parsed: Sequence[tuple[Any, Any, float | None]], t0: float,
                      unavailable: str | None = None) -> None:
        """Answer ``(record, Request, ts)`` from memory; users not there: ``unavailable``."""
        asks = []  # each request's query (its seen items and vectors), computed once
        for r, req, ts in parsed:
            state = self.users.get(req.user_id)
            if state is None:  # not in memory, and Redis did not answer in time
                await self._respond(req.request_id, req.user_id, "error", [], "none", t0,
                                    ts, error=unavailable or "user state unavailable")
                continue
            seen = state.seen() if req.exclude_seen else set()
            asks.append((r, req, ts, seen, self.policy.queries(state, self._lookup())))
        hashed = self._lsh_together([(req.k, seen, vecs) for _, req, _, seen, vecs in asks])
        for j, (_, req, ts, seen, vecs) in enumerate(asks):
            try:
                items, source, n_cand = self.recall(req.k, seen, vecs, hashed.get(j))
            except Exception as exc:
                log.exception("request %r failed", req.request_id)
                await self._respond(req.request_id, req.user_id, "error", [], "none", t0,
                                    ts, error=f"internal error: {type(exc).__name__}")
                continue
            if n_cand is not None:
                self.metrics.candidates.observe(n_cand)
            await self._respond(req.request_id, req.user_id, "ok", items, source, t0, ts)

    async def _load_users_by(self, asks: Sequence[tuple[Any, Any, float | None]]) -> str | None:
        """:meth:`load_users` of ``(record, Request, ts)`` by their deadline (stream.deadline);
        None when done, else why not."""
        return await deadline.by_deadline(
            self.load_users({req.user_id: r.partition for r, req, _ in asks}),
            deadline.budget(self.settings.request_deadline_ms, (ts for _, _, ts in asks)))

    async def load_users(self, partition_of: dict[str, int]) -> None:
        """Read the users not in memory from Redis in one MGET and keep them."""
        missing = self.users.missing(partition_of)
        if not missing:
            return
        store = self.store
        t0 = time.perf_counter()
        raws = await store.r.mget([store.keys.user(u) for u in missing])
        self.metrics.redis_duration.labels("users_load").observe(time.perf_counter() - t0)
        for uid, raw in zip(missing, raws, strict=True):
            if self.users.get(uid) is None:  # a click batch may have loaded it meanwhile
                self.users.put(uid, self._decode_user(uid, raw), partition_of[uid])

    def _lookup(self) -> Any:
        return self.slot.lookup if self.slot is not None else None

    def _lsh_together(self, asks: Sequence[tuple[int, set[str], list[np.ndarray]]]
                      ) -> dict[int, list[QueryResult]]:
        """The LSH results of a batch's queries ``(k, seen, vectors)`` (one vector per
        interest), hashed and looked up together (LSHIndex.search: ~25% less work per
        query from 4 queries on), by request position; empty when fewer than two vectors
        need LSH or one is unusable (then each request queries alone, and only the bad
        one fails)."""
        assert self.slot is not None
        index = self.slot.index
        rows = [(j, v) for j, (_, _, vecs) in enumerate(asks) for v in vecs]
        if len(rows) < 2 or len(index) <= EXACT_MAX_ITEMS:
            return {}
        ks = [asks[j][0] + len(asks[j][1]) for j, _ in rows]
        try:
            found = index.search(np.stack([v for _, v in rows]), ks)
        except ValueError:
            return {}
        out: dict[int, list[QueryResult]] = {}
        for (j, _), res in zip(rows, found, strict=True):
            out.setdefault(j, []).append(res)
        return out

    def recall(self, k: int, seen: set[str], vecs: Sequence[np.ndarray],
               hashed: list[QueryResult] | None = None
               ) -> tuple[list[tuple[str, float]], str, int | None]:
        """(items best first, source, candidates re-ranked or None) for a user's query
        vectors (RollingUserVectors.queries; [] = no usable clicks) leaving out ``seen``;
        several (interests) are merged by each item's best score. ``hashed``: the LSH
        results computed with the batch (:meth:`_lsh_together`)."""
        assert self.slot is not None
        index = self.slot.index
        if len(vecs) and len(index):
            if len(index) <= EXACT_MAX_ITEMS:
                found = index.search(np.stack(vecs), k, [seen] * len(vecs), exact=True)
                source = "exact"
            else:
                # the top k + |seen| without exclusion, then drop the seen ones: the same
                # items as query(exclude=seen), without its np.isin over every candidate
                # (~8% of the event loop at 1M items, 500 requests/s)
                found = hashed if hashed is not None else index.search(
                    np.stack(vecs), k + len(seen))
                source = "lsh"
            items, each = merge_results([(r.ids, r.scores) for r in found], seen, k)
            if source == "lsh" and self.watch is not None:  # sampled: recall vs exact
                for q, got in zip(vecs, each, strict=True):
                    self.watch.offer(q, k, seen, got, index)
            if items:
                return items, source, sum(res.candidates for res in found)
        return self.popular.top(k, seen, index), "popular", None

    async def _respond(self, rid: str, uid: str | None, status: str,
                       items: list[tuple[str, float]], source: str, t0: float,
                       record_ts: float | None, error: str | None = None) -> None:
        value = response_record(rid, uid, status, items, source, error)
        await self._send(self.settings.topic_responses, rid.encode(), value)
        m = self.metrics
        m.requests.labels(status).inc()
        m.request_duration.observe(time.perf_counter() - t0)
        if record_ts:
            m.end_to_end.observe(max(0.0, time.time() - record_ts))


def start_watch(settings: Settings, slot: IndexSlot, metrics: Metrics, store: Store,
                positions: Any) -> Any:
    """The live recall monitor (stream.watch), running. A version with the default hash
    layout (one a worker created empty) counts as chosen for 0 items: re-picked once the
    catalogue passes the exact-search size."""
    from dataclasses import replace

    from stream.items import default_params
    from stream.watch import RecallWatch

    s = settings
    explicit = bool(s.lsh_tables or s.lsh_hashes or s.lsh_width or s.lsh_probes)
    default = default_params(s)
    untuned = not explicit and replace(slot.index.params, T=default.T) == default
    watch = RecallWatch(s, slot, metrics, store, positions, EXACT_MAX_ITEMS,
                        explicit_params=explicit, chosen_for=0 if untuned else None)
    watch.start()
    return watch


def build_worker(settings: Settings, metrics: Metrics | None = None) -> tuple[Any, Recaller]:
    """The faust app running the :class:`Recaller` as a service (started and stopped with
    the worker), its responses and DLQ records sent by faust's producer."""
    import mode

    from stream.app import build_app

    app = build_app(settings)
    rec = Recaller(settings, metrics)

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        delivery = await app.producer.send(topic, key, value, None, None, None)
        if rec.requests is not None:
            rec.requests.track(delivery)

    rec._send = send

    @app.service
    class RecallerService(mode.Service):
        """Loads the index, then joins the group: ``Recaller.start`` / ``stop``."""

        _starting: asyncio.Task | None = None

        async def on_started(self) -> None:
            # in a task: loading 1M items takes seconds, faust's own start must not wait
            self._starting = asyncio.create_task(rec.start(), name="recaller-start")

        async def on_stop(self) -> None:
            if self._starting is not None and not self._starting.done():
                self._starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._starting
            await rec.stop()

    return app, rec
