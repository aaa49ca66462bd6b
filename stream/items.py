"""Items: the Redis writer, the in-memory follower, and index (re)builds from Redis.

How item changes reach every worker (several workers share one consumer group):

- **follower** (:class:`ItemsFollower`, a plain aiokafka consumer with *no* group,
  assigned every items partition): applies every change to this worker's in-memory index
  in partition order.
- **writer** (:class:`ItemsWriter`, called by the follower for the items partitions this
  worker owns -- by the numbers of its request partitions, so each has one writer): sends
  unusable messages to the DLQ and writes vectors + LSH bucket membership of the *live*
  version to Redis, with ``{p}:index:{v}:offsets`` (partition -> next offset) in the same
  atomic script. Redis thus always holds every change before the recorded offsets: the
  script refuses a partition's batch when the version's offset is behind the batch's
  start (a gap: changes that went to a version live before, e.g. during a re-pick's
  copy, or that nobody wrote while the partition changed hands), and the follower then
  rewinds that partition to the recorded offset and applies it again. A new owner
  rewinds the partition to the live version's offset at once (:meth:`ItemsFollower.own`).
- **rebuild** (:func:`load_index`): reads a version's offsets first, then its items
  (HSCAN), builds a new index aside, then the follower seeks to those offsets and the
  index is swapped in one assignment. Replaying from offsets that are older than the
  snapshot is harmless: each item ends with the state of its last message.
- **re-layout** (:meth:`ItemsFollower._relayout`): a version that is a re-pick's copy of
  the version served (its meta's ``relayout_of``) holds the same items, so it is not
  read back: the served index's items are re-hashed with the new layout in memory (no
  second vector matrix; a slice at a time, :mod:`recall.lsh.move`), the follower held
  back meanwhile and going on from where it stood.

A version without recorded offsets for a partition (e.g. one loaded by ``recall load``)
starts that partition where the follower stood (at start-up: at the end of the topic); a
version the worker creates itself starts every partition at 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from recall.config import Settings
from recall.lsh import Hasher, LSHIndex, LSHParams
from recall.lsh.move import move_off_loop
from recall.messages import Invalid, ItemDelete, ItemUpsert, parse_items
from recall.store import PartitionWrite, Store, VersionGone
from stream.metrics import Metrics
from stream.policy import DeadLetters, batch_starts, fetch, rewind
from stream.state import IndexSlot

log = logging.getLogger(__name__)


def release_free_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim: every arena,
    free chunks in the middle too). A merge or a re-layout frees the old parts of the
    bucket table, allocated across the heap and the merge thread's arena between other
    allocations, so without a trim their pages could stay resident. In a thread: a trim
    of a fragmented 1 GB heap took 63 ms (8 ms with nothing to give back); the event
    loop's own small objects come from Python's allocator, not glibc's."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)

#: longest a rebuilt version's replay may make no progress before the version is served
#: anyway (s): a replay that keeps moving is waited for (at 1M items it takes minutes)
STAGE_TIMEOUT = 10.0
#: items read per HSCAN batch when rebuilding
LOAD_BATCH = 20_000


def default_params(settings: Settings) -> LSHParams:
    """LSH parameters from RECALL_LSH_* (0 = the library default, good for D=64)."""
    base = LSHParams(dim=settings.dim)
    return LSHParams(
        family=settings.lsh_family, dim=settings.dim,
        k=settings.lsh_hashes or base.k, L=settings.lsh_tables or base.L,
        w=settings.lsh_width or base.w, T=settings.lsh_probes or base.T,
        seed=settings.lsh_seed)


async def ensure_live_version(store: Store, settings: Settings, partitions: int,
                              timeout: float = 30.0) -> int:
    """The live version; when there is none, one worker creates an empty one."""
    deadline = time.monotonic() + timeout
    while True:
        live = await store.live_version()
        if live is not None:
            return live
        params = default_params(settings)
        v = await store.create_first_version(params.to_dict(), settings.dim, partitions)
        if v is not None:
            log.info("created index version %d (%s)", v, params.describe())
            return v
        if time.monotonic() > deadline:
            raise RuntimeError("no live index version appeared in Redis")
        await asyncio.sleep(0.2)


async def load_index(store: Store, version: int, dim: int) -> tuple[LSHIndex, dict[int, int]]:
    """A new index with every item of ``version`` and the offsets it is complete up to."""
    meta = await store.get_meta(version)
    if meta is None:
        raise ValueError(f"index version {version} has no metadata")
    params = LSHParams.from_dict(meta["params"])
    if params.dim != dim or int(meta["dim"]) != dim:
        raise ValueError(f"index version {version} has dimension {meta['dim']}, "
                         f"RECALL_DIM is {dim}")
    offsets = await store.item_offsets(version)  # before the items: see module docstring
    index = LSHIndex(params, merge="deferred")
    # a bulk load: the vectors straight into a matrix of the catalogue's size, then one
    # pass builds the bucket table (LSHIndex.stage/build: at 1M items the peak RSS of
    # the load was twice the index's, from batch merges and growth copies)
    # in a thread too: it sizes the id store's table, a numba kernel that waits for
    # numba's lock while the start-up warm-up holds it; on the event loop that stalled the
    # group join begun meanwhile (~1.5-2 s at start-up, load ~10)
    await asyncio.to_thread(index.reserve, await store.items_count(version))
    # each batch staged in a thread (normalising is numpy work that releases the GIL:
    # the event loop keeps serving) while the next one is read from Redis; one at a
    # time, in order (an id read twice by HSCAN keeps its last vector)
    staging: asyncio.Future | None = None
    async for ids, mat in store.iter_items(version, LOAD_BATCH, dim=dim):
        if staging is not None:
            await staging
        staging = asyncio.ensure_future(asyncio.to_thread(index.stage, ids, mat))
    if staging is not None:
        await staging
    await asyncio.to_thread(index.build)
    return index, offsets


@dataclass
class ItemBatch:
    """The net effect of a batch of item messages: last operation per item id."""

    upserts: dict[str, np.ndarray] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)

    def add(self, op: ItemUpsert | ItemDelete) -> None:
        if isinstance(op, ItemUpsert):
            self.deletes.discard(op.item_id)
            self.upserts[op.item_id] = op.vector
        else:
            self.upserts.pop(op.item_id, None)
            self.deletes.add(op.item_id)

    def apply_to(self, index: LSHIndex) -> tuple[int, int]:
        """Apply to an in-memory index; returns (upserts, deletes)."""
        if self.upserts:
            index.add(list(self.upserts), np.stack(list(self.upserts.values())))
        if self.deletes:
            index.remove(list(self.deletes))
        return len(self.upserts), len(self.deletes)


class ItemsWriter:
    """Writes item batches to the live version in Redis (see module docstring)."""

    def __init__(self, store: Store, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self._hashers: dict[int, Hasher] = {}

    async def _hasher(self, version: int) -> Hasher:
        h = self._hashers.get(version)
        if h is None:
            meta = await self.store.get_meta(version)
            if meta is None:
                raise RuntimeError(f"live index version {version} has no metadata")
            h = self._hashers[version] = Hasher(LSHParams.from_dict(meta["params"]))
        return h

    async def write(self, batches: dict[int, ItemBatch],
                    spans: dict[int, tuple[int, int]]) -> dict[int, int]:
        """Each owned partition's net change of a fetch (``spans``: partition -> its
        offsets before and after it) into the live version: two round trips whatever the
        batch (the live version, then one script). Returns the partitions the version
        refused, partition -> its recorded offset (:meth:`Store.write_items`)."""
        store = self.store
        t0 = time.perf_counter()
        for attempt in range(3):
            version = await store.live_version()
            if version is None:
                raise RuntimeError("no live index version in Redis")
            hasher = await self._hasher(version)
            writes = []
            for p, (start, nxt) in spans.items():
                b = batches.get(p) or ItemBatch()
                ids = list(b.upserts)
                vecs = keys = None
                if ids:
                    vecs = np.stack(list(b.upserts.values())).astype(np.float32)
                    keys = hasher.keys(vecs)
                writes.append(PartitionWrite(p, start, nxt, ids, vecs, keys, sorted(b.deletes)))
            try:
                refused = await store.write_items(version, writes)
            except VersionGone:  # switched and deleted since we read it: the new one
                if attempt == 2:
                    raise
                continue
            self.metrics.redis_duration.labels("items").observe(time.perf_counter() - t0)
            return refused
        raise AssertionError("unreachable")


#: most item messages applied together: the event loop is held while a batch goes into
#: the index, so requests wait behind it (5,000 held it ~200 ms while a catalogue arrived)
ITEM_BATCH = 1000


class ItemsFollower:
    """Applies every items partition to the served in-memory index (no consumer group),
    and writes the partitions this worker owns to Redis (:meth:`own`, with ``writer``)."""

    def __init__(self, settings: Settings, slot: IndexSlot, metrics: Metrics,
                 consumer_kwargs: dict | None = None, writer: ItemsWriter | None = None,
                 dead_letters: DeadLetters | None = None) -> None:
        self.settings = settings
        self.slot = slot
        self.metrics = metrics
        self.writer = writer
        self.dead_letters = dead_letters
        self.owned: set[int] = set()  # items partitions this worker writes to Redis
        self.lock = asyncio.Lock()  # held while applying a batch and while swapping
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=max(1, settings.items_fetch_wait_ms),
            max_poll_records=ITEM_BATCH,
            **(consumer_kwargs or {}))
        self.partitions: list[TopicPartition] = []
        #: partition -> the offset its next fetched batch starts from (what the writer
        #: tells Redis), and how often it was sought (records fetched before are stale)
        self.cursor: dict[int, int] = {}
        self._seeks: dict[int, int] = {}
        self._task: asyncio.Task | None = None
        self.applied = 0  # messages handled (tests / readiness)
        #: a rebuilt version catching up aside: (index, version, user, partition ->
        #: position it must reach, monotonic deadline); the served one stays until then
        self.staged: tuple[LSHIndex, int, dict | None, dict[int, int], float] | None = None
        #: messages the staged version still had to replay at its last progress
        self._stage_left = math.inf

    async def start(self, offsets: dict[int, int]) -> None:
        await self.consumer.start()
        topic = self.settings.topic_items
        for _ in range(100):
            parts = self.consumer.partitions_for_topic(topic)
            if parts:
                break
            await self.consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"topic {topic!r} not found")
        self.partitions = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(self.partitions)
        ends = await self.consumer.end_offsets(self.partitions)
        self.seek({tp.partition: offsets.get(tp.partition, ends[tp]) for tp in self.partitions})
        self._task = asyncio.create_task(self._run(), name="items-follower")

    async def own(self, partitions: set[int]) -> None:
        """Write these items partitions to Redis from now on. A newly owned partition is
        first rewound to the offset the live version records for it, so messages this
        worker applied while another owned it are written too (re-applying them to the
        index is harmless: the last message per item still wins)."""
        if self.writer is None:
            return
        async with self.lock:
            new = set(partitions) - self.owned
            live = await self.writer.store.live_version() if new else None
            if self.partitions and live is not None:
                # the version the writer writes to (the one served may be an older one)
                stored = await self.writer.store.item_offsets(live)
                self.seek({p: o for p, o in stored.items()
                           if p in new and o < self.cursor.get(p, o + 1)})
            self.owned = set(partitions)

    async def positions(self) -> dict[int, int]:
        return {tp.partition: await self.consumer.position(tp) for tp in self.partitions}

    def seek(self, offsets: dict[int, int]) -> None:
        for tp in self.partitions:
            if tp.partition in offsets:
                self.consumer.seek(tp, offsets[tp.partition])
                self.cursor[tp.partition] = offsets[tp.partition]
                self._seeks[tp.partition] = self._seeks.get(tp.partition, 0) + 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()

    async def _run(self) -> None:
        while True:
            records = await fetch(self.consumer, "items", timeout_ms=1000)
            seeks = dict(self._seeks)
            async with self.lock:
                if not records:
                    self._swap_if_caught_up()
                    continue
                # a partition sought meanwhile (a new owner's rewind, a rebuild) is read
                # again from there: what was fetched before is not this batch
                records = {tp: ms for tp, ms in records.items()
                           if self._seeks.get(tp.partition) == seeks.get(tp.partition)}
                try:
                    await self._apply(records)
                except Exception:  # Redis down, a bug: apply and write the batch again
                    await rewind(self.consumer, batch_starts(records), "items",
                                 sum(len(rs) for rs in records.values()))
                    continue
                self._swap_if_caught_up()

    async def _apply(self, records: dict[TopicPartition, list[Any]]) -> None:
        """One fetch: every message into the in-memory index (the last per item wins),
        the owned partitions' net change into Redis with their next offsets."""
        dim, limit = self.settings.dim, self.settings.max_message_bytes
        batch, mine = ItemBatch(), {}
        spans: dict[int, tuple[int, int]] = {}
        n = 0
        for tp, msgs in records.items():
            if not msgs:
                continue
            p = tp.partition
            owned = p in self.owned
            if owned:
                mine[p] = ItemBatch()
                spans[p] = (self.cursor.get(p, msgs[0].offset), msgs[-1].offset + 1)
            n += len(msgs)
            # parsed together: the vectors checked and normalised as one matrix
            for m, op in zip(msgs, parse_items([m.value for m in msgs], dim, limit),
                             strict=True):
                if isinstance(op, Invalid):
                    if owned and self.dead_letters is not None:  # the owner reports it, once
                        await self.dead_letters.send(m, op)
                    continue
                batch.add(op)
                if owned:
                    mine[p].add(op)
            hw = self.consumer.highwater(tp)
            if hw is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, hw - msgs[-1].offset - 1))
        index = self.staged[0] if self.staged is not None else self.slot.index
        ups, dels = batch.apply_to(index)
        # ~0.45 s at 1M items in place: in a thread, requests keep being answered
        t0 = time.perf_counter()
        if await index.merge_off_loop():
            await asyncio.to_thread(release_free_heap)
            log.info("index merge off the event loop: %.0f ms", (time.perf_counter() - t0) * 1e3)
        refused: dict[int, int] = {}
        if spans and self.writer is not None:
            refused = await self.writer.write(mine, spans)
        for tp, msgs in records.items():
            if msgs:
                self.cursor[tp.partition] = msgs[-1].offset + 1
        behind = {p: o for p, o in refused.items() if o < spans[p][0]}
        if behind:  # the live version misses changes before this batch: write them again
            log.warning("items partitions %s: the live version is complete only up to %s; "
                        "applying them again from there", sorted(behind), behind)
            self.seek(behind)
        self.metrics.batch_size.labels("items").observe(n)
        self.applied += n
        self.metrics.items.labels("upsert").inc(ups)
        self.metrics.items.labels("delete").inc(dels)
        self.metrics.index_items.set(len(self.slot.index))

    def _swap_if_caught_up(self) -> None:
        """Serve the staged version once every partition reached the position the
        served index had when the rebuild began, or, should that never come (e.g. the
        last records before it were compacted away), once its replay made no progress for
        STAGE_TIMEOUT. A replay still moving is waited for: a 1M-item re-pick served
        after a fixed 10 s, before it caught up, left out items users had just added (the
        served index went back in time)."""
        if self.staged is None:
            return
        index, version, user, target, deadline = self.staged
        behind = {p: o for p, o in target.items() if self.cursor.get(p, o) < o}
        left = sum(o - self.cursor.get(p, o) for p, o in behind.items())
        now = time.monotonic()
        if behind and left < self._stage_left:  # progress: the deadline moves on
            self._stage_left = left
            self.staged = (index, version, user, target, now + STAGE_TIMEOUT)
            return
        if behind and now < deadline:
            return
        if behind:
            log.warning("index version %d served before catching up: its replay made no "
                        "progress for %.0f s, still behind on %s", version, STAGE_TIMEOUT,
                        behind)
        self.staged = None
        self._stage_left = math.inf
        self.slot.swap(index, version, user)
        self.metrics.index_version.set(version)
        self.metrics.index_items.set(len(index))
        log.info("index version %d served: %d items", version, len(index))

    async def rebuild(self, store: Store, version: int) -> None:
        """Build ``version`` from Redis aside, replay the items topic into it from the
        version's offsets, and serve it once it has caught up with the served index: a
        version read from Redis lacks the changes after its offsets (a re-pick's copy
        does, by design), and served at once it answers, and looks up clicked items,
        without them until the replay arrives (seen: a click's item missing, the user's
        vector off). A version already staged is left to catch up: the worker polls the
        live version every second and, loading it again each time, restarted the replay
        (4 loads of one re-picked version while a catalogue streamed in)."""
        if self.staged is not None and self.staged[1] == version:
            return
        meta = await store.get_meta(version)
        if meta is not None and await self._relayout(version, meta):
            return
        t0 = time.perf_counter()
        index, offsets = await load_index(store, version, self.settings.dim)
        user = (meta or {}).get("user")
        async with self.lock:
            before = await self.positions()
            target = {p: o for p, o in before.items() if offsets.get(p, o) < o}
            self.seek({**before, **offsets})
            self.staged = (index, version, user, target, time.monotonic() + STAGE_TIMEOUT)
            self._stage_left = math.inf
            self._swap_if_caught_up()
        self.metrics.index_rebuild.set(time.perf_counter() - t0)
        log.info("index version %d loaded: %d items in %.1fs%s", version, len(index),
                 time.perf_counter() - t0, f"; catching up on {target}" if target else "")

    async def _relayout(self, version: int, meta: dict[str, Any]) -> bool:
        """Serve ``version`` when it is a re-layout of the version served (a re-pick's
        copy: the same items, a new hash layout) by re-hashing the served index's own
        items (:func:`recall.lsh.move.move_off_loop`: the vectors and ids go to the new
        index, not copied, not read back from Redis; its table is built a slice of the
        items at a time as the old table drops them); False when it is not (a version loaded by
        ``recall load``, a re-layout of another version, a rebuild still catching up):
        the caller reads it from Redis.

        Nothing is lost or replayed: the served index holds every change up to the
        follower's positions, whatever offsets the copy recorded, and the lock holds the
        items partitions back while the items move (merges in a thread; searches go on
        against both layouts), so each change fetched after it goes into the new index.
        At 1M items the move takes seconds; a read from Redis took tens."""
        source = meta.get("relayout_of")
        params = LSHParams.from_dict(meta["params"])
        if source is None or params.dim != self.settings.dim:
            return False
        t0 = time.perf_counter()
        async with self.lock:
            if self.staged is not None or self.slot.version != source:
                return False
            # the served layout's pending items folded into its table first (a merge,
            # searches going on): their buckets (~500 bytes an item, up to ~30 MB at 1M)
            # are not held beside the new table while it is built
            if await self.slot.index.merge_off_loop(force=True):
                await asyncio.to_thread(release_free_heap)
            index = await move_off_loop(self.slot.index, params)
            self.slot.swap(index, version, meta.get("user"))
        await asyncio.to_thread(release_free_heap)
        self.metrics.index_rebuild.set(time.perf_counter() - t0)
        self.metrics.index_version.set(version)
        self.metrics.index_items.set(len(index))
        log.info("index version %d served: %d items re-hashed in memory (%s) in %.1fs",
                 version, len(index), params.describe(), time.perf_counter() - t0)
        return True
