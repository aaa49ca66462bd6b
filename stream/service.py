"""The recall service: what the worker does with requests and clicks, with no Kafka in it.

- :meth:`RecallService.answer` turns a batch of parsed requests into responses: the users
  not in memory are read from Redis in one MGET, every request's query (its user's vector
  and seen items) is searched in the LSH index together (one batched
  :meth:`~recall.lsh.LSHIndex.search`), small catalogues are searched exactly, users
  without a usable vector get popular items, and a request that fails gets an ``error``
  response: exactly one response per request, never an exception for one bad request.
- :meth:`RecallService.apply` applies a batch of clicks to the in-memory user states, then
  writes them in ONE atomic Redis call (:meth:`recall.store.Store.write_clicks`): user
  states, popularity, claimed event ids and the partitions' next offsets. Offsets already
  applied (after a crash) and event ids already claimed are skipped, so every click
  applies exactly once.

Both share one event loop with the consumers and the producer, so neither holds it for
long: clicks are applied (and their states encoded) ``CLICK_CHUNK`` at a time with a
loop turn in between, so requests that arrive meanwhile are answered between two chunks
rather than after the whole batch (a 500-click batch is ~15-25 ms of CPU at 1M items);
the requests consumer answers ``stream.requests.REQUEST_CHUNK`` requests at a time. The
batch is still written to Redis in one call, and a batch failing anywhere drops every
user it touched from memory (read again from Redis), as before.

The store is injected (unit tests pass a fake); Kafka (consumers, producer, commits) is
the callers' business (stream.requests, stream.clicks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from recall.config import Settings, set_in_env, user_vector_settings
from recall.interests import merge_results
from recall.lsh import LSHIndex, QueryResult
from recall.messages import Click, Invalid, Request, response_record
from recall.store import ClickOffsetsConflict
from recall.userbatch import apply_batch
from recall.users import RollingUserVectors
from recall.userstate import FORMATS, UserState
from stream import deadline
from stream.metrics import Metrics
from stream.state import IndexSlot, PopularCache, UserCache

log = logging.getLogger(__name__)

#: below this many items, exact search is as fast as LSH and exact
EXACT_MAX_ITEMS = 1000
#: popular items kept in memory (enough for k=1000 after excluding a window)
POPULAR_KEEP = 2000
#: most clicks applied (or user states encoded) in one event-loop turn (module docstring)
CLICK_CHUNK = 64

_UNSET = object()


async def turn() -> None:
    """Give the event loop one turn: what is ready (a fetch of requests, a response to
    send) runs before the caller goes on."""
    await asyncio.sleep(0)


class Watch(Protocol):
    """The live recall monitor's intake (stream.watch.RecallWatch)."""

    def offer(self, vector: np.ndarray, k: int, exclude: Collection[str],
              found: Sequence[str], index: LSHIndex) -> None: ...


class ServiceStore(Protocol):
    """What the service needs of :class:`recall.store.Store` (a fake in unit tests)."""

    async def get_users(self, uids: Sequence[str]) -> dict[str, bytes | None]: ...

    async def get_users_and_events(self, uids: Sequence[str], event_ids: Sequence[str]
                                   ) -> tuple[dict[str, bytes | None], set[str]]: ...

    async def click_offsets(self, partitions: Sequence[int]) -> dict[int, int]: ...

    async def write_clicks(self, users: Mapping[str, bytes], popular: Mapping[str, int],
                           event_ids: Sequence[str], event_ttl: int,
                           offsets: Mapping[int, tuple[int, int]]) -> bool: ...

    async def top_popular(self, k: int) -> list[tuple[str, float]]: ...


@dataclass(frozen=True)
class Ask:
    """One recall request of a batch: the request, its partition (= its user's) and
    when it was produced (seconds, None if unknown)."""

    request: Request
    partition: int
    produced_at: float | None = None


@dataclass(frozen=True)
class Answer:
    """One response record: key (the request id), value (JSON), status."""

    key: bytes
    value: bytes
    status: str
    produced_at: float | None = None


@dataclass(frozen=True)
class ClickAt:
    """One parsed click with where it came from."""

    partition: int
    offset: int
    click: Click


class RecallService:
    """Answers requests and applies clicks from the in-memory index, user states and
    popular items, with Redis (``store``) as the durable copy."""

    def __init__(self, settings: Settings, store: ServiceStore, slot: IndexSlot,
                 metrics: Metrics | None = None, watch: Watch | None = None,
                 explicit: frozenset[str] | None = None) -> None:
        """``watch``: sees a sample of LSH answers; ``explicit``: settings given in the
        environment (:func:`recall.config.set_in_env`; they win over the version's)."""
        self.settings = settings
        self.store = store
        self.slot = slot
        self.metrics = metrics or Metrics()
        self.watch = watch
        self.users = UserCache(limit=settings.user_cache_users)
        #: click batches between their first step and their Redis write (users are not
        #: dropped from memory then: :meth:`_trim_users`)
        self._applying = 0
        self.popular = PopularCache()
        self._explicit = set_in_env() if explicit is None else explicit
        self._policy = RollingUserVectors(settings.dim, settings.user_window,
                                          settings.user_decay_half_life)
        self._policy_for: object = _UNSET  # the slot's ``user`` the policy was made for
        #: clicks partition -> next offset applied to Redis, for the partitions owned
        self.applied: dict[int, int] = {}

    @property
    def policy(self) -> RollingUserVectors:
        """User vectors as the live index version's training chose (``recall load``),
        unless RECALL_USER_WINDOW / RECALL_USER_DECAY_HALF_LIFE are set. A change applies
        from each user's next click (a longer stored window is cut then)."""
        stored = self.slot.user
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

    # --- requests ---------------------------------------------------------------

    async def answer(self, asks: Sequence[Ask]) -> list[tuple[Ask, Answer]]:
        """One response per request: :meth:`answer_from_memory`, then
        :meth:`answer_after_load` (a caller that can send in between should)."""
        ready, waiting = self.answer_from_memory(asks)
        return ready + await self.answer_after_load(waiting)

    def answer_from_memory(self, asks: Sequence[Ask]
                           ) -> tuple[list[tuple[Ask, Answer]], list[Ask]]:
        """(request, answer) of the requests whose users are in memory (no Redis: they
        never wait for it), and the requests whose users must be read first."""
        ready = [a for a in asks if a.request.user_id in self.users]
        waiting = [a for a in asks if a.request.user_id not in self.users]
        return list(zip(ready, self._from_memory(ready), strict=True)), waiting

    async def answer_after_load(self, asks: Sequence[Ask]) -> list[tuple[Ask, Answer]]:
        """Read these requests' users from Redis in one MGET, by the deadline of the
        oldest (:mod:`stream.deadline`), then answer them; if Redis does not answer in
        time, each gets an ``error`` response saying so."""
        if not asks:
            return []
        partition_of = {a.request.user_id: a.partition for a in asks}
        why = await deadline.by_deadline(
            self._load_users(partition_of),
            deadline.budget(self.settings.request_deadline_ms, (a.produced_at for a in asks)))
        answers = list(zip(asks, self._from_memory(asks, unavailable=why), strict=True))
        self._trim_users()
        return answers

    def _from_memory(self, asks: Sequence[Ask], unavailable: str | None = None
                     ) -> list[Answer]:
        """Answer from memory, in the order of ``asks``; a request whose user is not
        there gets ``unavailable``."""
        out: list[Answer | None] = [None] * len(asks)
        queries, kept = [], []
        for j, a in enumerate(asks):
            state = self.users.get(a.request.user_id)
            if state is None:  # not in memory, and Redis did not answer in time
                out[j] = self._answer(a.request.request_id, a.request.user_id, "error", [],
                                      "none", a.produced_at,
                                      unavailable or "user state unavailable")
                continue
            seen = state.seen() if a.request.exclude_seen else set()
            queries.append((a.request.k, seen, self.policy.queries(state, self.slot.lookup)))
            kept.append(j)
        results = self._search(queries)
        for j, (k, seen, vecs), res in zip(kept, queries, results, strict=True):
            a = asks[j]
            req = a.request
            try:
                items, source, n_cand = self._recall(k, seen, vecs, res)
            except Exception as exc:
                log.exception("request %r failed", req.request_id)
                out[j] = self._answer(req.request_id, req.user_id, "error", [], "none",
                                      a.produced_at, f"internal error: {type(exc).__name__}")
                continue
            if n_cand is not None:
                self.metrics.candidates.observe(n_cand)
            out[j] = self._answer(req.request_id, req.user_id, "ok", items, source,
                                  a.produced_at)
        return [a for a in out if a is not None]

    def invalid(self, exc: Invalid, produced_at: float | None = None) -> Answer | None:
        """The ``invalid`` response of a request that could not be parsed, when its
        request_id could be read (else None: there is nobody to answer)."""
        if exc.request_id is None:
            return None
        return self._answer(exc.request_id, exc.user_id, "invalid", [], "none", produced_at,
                            f"{exc.reason}: {exc.message}")

    def _answer(self, rid: str, uid: str | None, status: str, items: list[tuple[str, float]],
                source: str, produced_at: float | None, error: str | None = None) -> Answer:
        value = response_record(rid, uid, status, items, source, error)
        return Answer(rid.encode(), value, status, produced_at)

    def _search(self, queries: Sequence[tuple[int, set[str], list[np.ndarray]]]
                ) -> list[list[QueryResult] | Exception]:
        """Each query's index results, one per vector ([]: no usable vector, answered
        from popularity), every vector of the batch searched together; if the batch
        fails (a bad vector), request by request, so only the bad one fails."""
        index = self.slot.index
        out: list[list[QueryResult] | Exception] = [[] for _ in queries]
        rows = [(j, v) for j, (_, _, vecs) in enumerate(queries) for v in vecs]
        if not rows or not len(index):
            return out
        exact = len(index) <= EXACT_MAX_ITEMS
        try:
            found = index.search(np.stack([v for _, v in rows]),
                                 [queries[j][0] for j, _ in rows],
                                 [queries[j][1] for j, _ in rows], exact=exact)
            for (j, _), res in zip(rows, found, strict=True):
                out[j].append(res)  # type: ignore[union-attr]
        except ValueError:
            for j, (k, seen, vecs) in enumerate(queries):
                if vecs:
                    try:
                        out[j] = index.search(np.stack(vecs), k, [seen] * len(vecs),
                                              exact=exact)
                    except ValueError as exc:
                        out[j] = exc
        return out

    def _recall(self, k: int, seen: set[str], vecs: Sequence[np.ndarray],
                found: list[QueryResult] | Exception
                ) -> tuple[list[tuple[str, float]], str, int | None]:
        """(items best first, source, candidates re-ranked or None); several interest
        vectors' results are merged by each item's best score."""
        if isinstance(found, Exception):
            raise found
        if found:
            index = self.slot.index
            source = "exact" if len(index) <= EXACT_MAX_ITEMS else "lsh"
            items, each = merge_results([(r.ids, r.scores) for r in found], seen, k)
            if source == "lsh" and self.watch is not None:  # sampled: recall vs exact
                for q, got in zip(vecs, each, strict=True):
                    self.watch.offer(q, k, seen, got, index)
            if items:
                return items, source, sum(r.candidates for r in found)
        return self.popular.top(k, seen, self.slot.index), "popular", None

    # --- users -------------------------------------------------------------------

    def _decode_user(self, uid: str, raw: bytes | None) -> UserState:
        if raw is None:
            return self.policy.new_state()
        try:
            return UserState.from_bytes(raw, self.settings.dim)
        except ValueError:
            log.warning("user %r: stored state unreadable; starting empty", uid)
            return self.policy.new_state()

    def _keep_users(self, raws: Mapping[str, bytes | None], partition_of: Mapping[str, int]
                    ) -> None:
        for uid, raw in raws.items():
            if self.users.get(uid) is None:  # another batch may have loaded it meanwhile
                self.users.put(uid, self._decode_user(uid, raw), partition_of[uid])

    def _trim_users(self) -> None:
        """Keep at most ``RECALL_USER_CACHE_USERS`` states in memory, least recently used
        dropped, but only while no click batch is between applying clicks in memory and
        writing them: a state dropped then, and read back from Redis by a request before
        the write landed, would lose those clicks (memory is authoritative)."""
        if self._applying:
            return
        dropped = self.users.trim()
        if dropped:
            self.metrics.users_evicted.inc(dropped)
            self.metrics.users_cached.set(len(self.users))

    async def _load_users(self, partition_of: Mapping[str, int]) -> None:
        """Read the users not in memory from Redis in one MGET and keep them."""
        missing = self.users.missing(partition_of)
        if missing:
            t0 = time.perf_counter()
            raws = await self.store.get_users(missing)
            self.metrics.redis_duration.labels("users_load").observe(time.perf_counter() - t0)
            self._keep_users(raws, partition_of)

    # --- clicks --------------------------------------------------------------------

    async def take_partitions(self, partitions: Iterable[int]) -> dict[int, int]:
        """Clicks partitions now owned: their next offsets applied to Redis (0 = none),
        which is where their consumer must start."""
        parts = sorted(set(partitions))
        stored = await self.store.click_offsets(parts)
        for p in parts:
            self.applied[p] = stored.get(p, 0)
        return {p: self.applied[p] for p in parts}

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the users and offsets of partitions this worker no longer owns."""
        gone = set(partitions)
        for p in gone:
            self.applied.pop(p, None)
        dropped = self.users.drop_partitions(gone)
        log.info("partitions %s revoked: %d users dropped", sorted(gone), dropped)
        self.metrics.users_cached.set(len(self.users))

    async def apply(self, clicks: Sequence[ClickAt], through: Mapping[int, int]) -> None:
        """Apply a batch of clicks of owned partitions; ``through``: partition -> next
        offset after the batch (counting records that were not clicks, e.g. dead-
        lettered ones), stored with the batch. Raises if Redis fails: nothing of the
        batch is then in Redis, and the caller retries it from :meth:`take_partitions`."""
        self._applying += 1
        try:
            await self._apply(clicks, through)
        finally:
            self._applying -= 1
            self._trim_users()

    async def _apply(self, clicks: Sequence[ClickAt], through: Mapping[int, int]) -> None:
        s, m = self.settings, self.metrics
        m.batch_size.labels("clicks").observe(len(clicks))
        # per partition (the offset applied so far, the batch's next): a partition whose
        # records all lie below it was read again before a seek took effect: skipped
        offsets = {p: (self.applied.get(p, 0), o) for p, o in through.items()
                   if o > self.applied.get(p, 0)}
        clicks = [c for c in clicks if c.partition in offsets]
        if not offsets:
            return
        # one read round trip: users not cached, event ids
        missing = self.users.missing(c.click.user_id for c in clicks)
        eids = list(dict.fromkeys(c.click.event_id for c in clicks if c.click.event_id))
        claimed: set[str] = set()
        if missing or eids:
            t0 = time.perf_counter()
            raws, claimed = await self.store.get_users_and_events(missing, eids)
            m.redis_duration.labels("clicks_read").observe(time.perf_counter() - t0)
            self._keep_users(raws, {c.click.user_id: c.partition for c in clicks})
        changed: dict[str, UserState] = {}
        popular: Counter[str] = Counter()
        new_events: list[str] = []
        applied = dupes = 0
        pending: set[str] = set()  # event ids of this batch already passed on
        touched: list[str] = []  # users whose memory may have changed
        policy = self.policy
        try:
            for start in range(0, len(clicks), CLICK_CHUNK):
                if start:
                    await turn()  # waiting requests go first (module docstring)
                todo: list[tuple[UserState, str, float, float, str | None]] = []
                todo_clicks: list[Click] = []
                for c in clicks[start:start + CLICK_CHUNK]:
                    click = c.click
                    eid = click.event_id
                    if (c.offset < self.applied.get(c.partition, 0)
                            or (eid and (eid in claimed or eid in pending))):
                        dupes += 1
                        continue
                    state = self.users.get(click.user_id)
                    if state is None:  # revoked meanwhile: load again next time
                        continue
                    todo.append((state, click.item_id, click.ts, click.weight, eid))
                    todo_clicks.append(click)
                    if eid:
                        pending.add(eid)
                touched += [c.user_id for c in todo_clicks]
                # the chunk's arithmetic in compiled calls (recall.userbatch: why)
                done = apply_batch(policy, todo, self.slot.lookup) if todo else []
                for (state, *_), click, ok in zip(todo, todo_clicks, done, strict=True):
                    if not ok:
                        dupes += 1
                        continue
                    applied += 1
                    changed[click.user_id] = state
                    popular[click.item_id] += 1
                    if click.event_id:
                        claimed.add(click.event_id)
                        new_events.append(click.event_id)
        except BaseException:
            self.users.drop(touched)  # half-applied: read again
            raise
        # one write round trip, atomic and safe to repeat (Store.write_clicks)
        try:
            blobs: dict[str, bytes] = {}
            fmt = FORMATS[s.user_state_format]
            for j, (u, st) in enumerate(changed.items()):
                if j and not j % CLICK_CHUNK:
                    await turn()
                blobs[u] = st.to_bytes(fmt)
            t0 = time.perf_counter()
            written = await self.store.write_clicks(
                blobs, popular, new_events, int(s.event_id_ttl_seconds), offsets)
        except ClickOffsetsConflict:  # Redis holds other offsets: take them, reload users
            self.users.drop_partitions(offsets)
            await self.take_partitions(offsets)
            log.warning("clicks partitions %s out of step with Redis: users reloaded, "
                        "reading again from offsets %s", sorted(offsets),
                        {p: self.applied[p] for p in offsets})
            raise
        except BaseException:
            self.users.drop(changed)  # their memory ran ahead of Redis: read them again
            raise
        m.redis_duration.labels("clicks").observe(time.perf_counter() - t0)
        if not written:
            log.warning("click batch %s was already written (a retried call ran twice); "
                        "not counted again", dict(through))
        for p, (_, o) in offsets.items():
            self.applied[p] = max(self.applied.get(p, 0), o)
        m.clicks.inc(applied)
        if dupes:
            m.click_duplicates.inc(dupes)

    # --- popular items -------------------------------------------------------------

    async def refresh_popular(self) -> None:
        t0 = time.perf_counter()
        self.popular.set(await self.store.top_popular(POPULAR_KEEP))
        self.metrics.redis_duration.labels("popular").observe(time.perf_counter() - t0)

