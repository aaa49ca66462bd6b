"""The worker: builds its parts, starts and stops them, and owns the partitions they share.

Parts, each in its own module:

- :class:`stream.service.RecallService` answers requests and applies clicks (no Kafka);
- :class:`stream.requests.RequestsConsumer` reads ``recall-requests`` in the workers'
  group, sends responses through the producer and commits after their delivery;
- :class:`stream.clicks.ClicksConsumer` reads the ``clicks`` partitions with the numbers
  of the owned request partitions (a user's clicks and requests share a number);
- :class:`stream.items.ItemsFollower` applies every ``items`` partition to the in-memory
  index and writes the owned ones to Redis;
- :class:`recall.store.Store` is the only way to Redis; :class:`stream.policy.DeadLetters`
  the only way to the DLQ.

:meth:`Worker.start` returns a worker whose parts all exist. A small index (at most
``EARLY_JOIN_MAX_ITEMS``) loads while the group is joined: the broker takes about a second
to hand partitions over (its join wait), so a restarted worker serves that much sooner; a
big one loads first and the group is joined last, so the partitions stay with the other
workers (after the session timeout) while it loads, rather than waiting unserved on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from typing import Any

from numba.core import config as numba_config

from recall import exactkernels, jit, kernels, userkernels
from recall.config import Settings, kafka_client_kwargs
from recall.lsh import ids
from recall.store import Store
from stream.clicks import ClicksConsumer
from stream.gcpause import GCPauses
from stream.items import (
    ItemsFollower,
    ItemsWriter,
    ensure_live_version,
    load_index,
    release_free_heap,
)
from stream.metrics import Metrics
from stream.policy import DeadLetters, Send
from stream.requests import Membership, RequestsConsumer, group_consumer
from stream.service import EXACT_MAX_ITEMS, RecallService
from stream.state import IndexSlot
from stream.watch import RecallWatch

log = logging.getLogger(__name__)

#: seconds between checks of the live index version
VERSION_POLL = 1.0
#: seconds between event-loop lag samples
LOOP_LAG_EVERY = 0.1
#: seconds between two publishes of the GC pauses timed meanwhile
GC_PUBLISH_EVERY = 1.0
#: the largest index loaded while the group is joined (module docstring): about as long
#: to load as the broker's ~1 s join wait (200,000 items took 3-5 s on a shared 2-core
#: machine at load average ~4.5)
EARLY_JOIN_MAX_ITEMS = 50_000


#: glibc's M_MMAP_THRESHOLD, M_TRIM_THRESHOLD and M_ARENA_MAX options of mallopt()
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
_M_ARENA_MAX = -8
#: free heap kept at its top between batches (glibc's default, 128 kB, is below one batch)
TRIM_THRESHOLD = 4 << 20
#: malloc arenas the worker's threads share (glibc's default: 8 per core). The merge
#: threads, the recall monitor's and the event loop each got one, and what one thread
#: freed stayed in its arena, unused by the others: at the peak of a 1M catalogue
#: streaming in (its last merges) 31-38 MB of the arenas were free, 21-22 with 2
#: (`recall bench watch-live` at 1M, loaded, one run each: worker peaks 605.7-623.5 MB
#: with the default, 592.8-600.5 with 2)
MALLOC_ARENAS = 2


def _return_big_frees(threshold: int = 1 << 20, keep: int = TRIM_THRESHOLD,
                      arenas: int = MALLOC_ARENAS) -> None:
    """Allocations of at least ``threshold`` bytes (numpy arrays of a load, a merge, a
    click batch) mapped on their own and unmapped when freed. glibc raises its threshold
    after such frees (up to 32 MB), so later arrays came from the heap and their freed
    pages stayed resident: at 1M items ~400 MB of a load's temporaries stayed in RSS.

    Setting that threshold also stops glibc from raising its trim threshold, which then
    stays at 128 kB: each batch's temporaries below ``threshold`` (a 250-click batch's
    Redis command is ~300 kB) were given back to the OS when freed and faulted in again
    by the next batch, ~80 page faults a click batch at 500 requests/s + 5,000 clicks/s.
    Up to ``keep`` bytes of free heap top now stay for the next batch; a big load's
    temporaries are still given back (:func:`_release_load_memory`). At most ``arenas``
    malloc arenas (:data:`MALLOC_ARENAS`), set before the worker starts its threads."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, keep)
        libc.mallopt(_M_ARENA_MAX, arenas)


def _release_load_memory() -> None:
    """After a big index load: hand freed heap back to the OS (glibc keeps it otherwise,
    and the load's temporaries are hundreds of MB at 1M items) and move the long-lived
    objects out of the GC's generations (fewer objects traversed by full collections)."""
    import gc

    gc.collect()
    gc.freeze()
    release_free_heap()


def _warm_up() -> None:
    """Load the compiled kernels from numba's cache; those not in it yet (a first start, new
    kernel sources, another checkout path) are first compiled by a child process into the
    cache. Compiled here, the worker kept LLVM's modules of the compile for its life: after
    the warm-up 178 MB of malloc in use and 375 MB of RSS, against 34 and 183 MB with the
    kernels loaded from the cache."""
    missing = jit.uncached()
    if missing:
        _compile_in_child(missing)
    _load_kernels()


def _compile_in_child(missing: list[str]) -> None:
    """Run :func:`_load_kernels` in a child process (same interpreter, sources and
    ``NUMBA_CACHE_DIR``) to fill numba's cache; a child that fails leaves the compile to
    this process, as before."""
    t0 = time.perf_counter()
    log.info("start-up: kernels of %s not in numba's cache %s: compiling them in a child "
             "process", ", ".join(missing), numba_config.CACHE_DIR)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", "from stream.worker import _load_kernels; _load_kernels()"],
        env=env, check=False, stdin=subprocess.DEVNULL)
    still = jit.uncached(missing)
    if done.returncode != 0 or still:
        log.warning("compiling the kernels in a child process failed (exit %d; not in numba's "
                    "cache: %s): compiling them here", done.returncode, ", ".join(still) or "-")
    else:
        log.info("start-up: kernels compiled in a child process in %.1fs",
                 time.perf_counter() - t0)


def _load_kernels() -> None:
    try:
        kernels.warm_up()
        userkernels.warm_up()  # click application's
        ids.warm_up()  # the index's id store
        exactkernels.warm_up()  # the recall monitor's exact search
    except Exception:  # the kernel's own call will raise it where it matters
        log.exception("loading the compiled kernels failed")
    else:
        log.info("start-up: kernels ready")


class Ownership:
    """What a worker owns follows its ``recall-requests`` partitions: the ``clicks``
    partitions of the same numbers, and the ``items`` partitions it writes to Redis."""

    def __init__(self, settings: Settings, clicks: ClicksConsumer,
                 follower: ItemsFollower) -> None:
        self.settings = settings
        self.clicks = clicks
        self.follower = follower
        self._request_partitions = 0  # partitions of recall-requests, once known

    async def own(self, partitions: set[int]) -> None:
        """The group's assignment changed: consume the clicks partitions of these numbers
        and write the items partitions that map to them."""
        await self.clicks.own(partitions)
        if not self._request_partitions:
            consumer = self.follower.consumer
            found = consumer.partitions_for_topic(self.settings.topic_requests)
            if not found:
                await consumer._client.force_metadata_update()
                found = consumer.partitions_for_topic(self.settings.topic_requests)
            self._request_partitions = len(found or ())
        await self.follower.own(self.items_partitions(partitions))

    def items_partitions(self, owned: set[int]) -> set[int]:
        """Items partitions whose Redis writes are this worker's: p such that
        p mod (requests partitions) is an owned request partition."""
        n = max(1, self._request_partitions or self.settings.topic_partitions)
        return {tp.partition for tp in self.follower.partitions if tp.partition % n in owned}


class Worker:
    """A running worker (see the module docstring); made by :meth:`start`."""

    def __init__(self, settings: Settings, metrics: Metrics, store: Store,
                 service: RecallService, follower: ItemsFollower, clicks: ClicksConsumer,
                 requests: RequestsConsumer, watch: RecallWatch) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.service = service
        self.follower = follower
        self.clicks = clicks
        self.requests = requests
        self.watch = watch
        self._tasks: list[asyncio.Task] = []

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics, send: Send,
                    store: Store | None = None) -> Worker:
        """Load the live index, start the items follower and the clicks consumer, and
        join the group (during the load when the index is small: module docstring).
        ``send``: the producer's (responses and DLQ records)."""
        s = settings
        store = store or Store.from_settings(s)
        kwargs = kafka_client_kwargs(s)
        version = await ensure_live_version(store, s, s.topic_partitions)
        n_items = await store.items_count(version)
        membership = None
        if n_items <= EARLY_JOIN_MAX_ITEMS:
            membership = Membership(group_consumer(s, kwargs), s.topic_requests)
            await membership.join()
            log.info("start-up: joining the group while the index (%d items) loads", n_items)
        try:
            return await cls._start(s, metrics, send, store, version, membership)
        except BaseException:  # failed or cancelled: leave the group we joined
            if membership is not None:
                await membership.consumer.stop()
            raise

    @classmethod
    async def _start(cls, s: Settings, metrics: Metrics, send: Send, store: Store,
                     version: int, membership: Membership | None) -> Worker:
        _return_big_frees()
        t0 = time.perf_counter()
        # the compiled kernels, from numba's cache (compiled on a first run), in a thread
        # while the index is read (the build waits for its own on numba's lock). Most of
        # it is numba's first-use set-up (~0.4 s on an idle host, 1.5-3 s on a loaded
        # one). Awaited before any consumer starts: a click batch or a search waiting on
        # the lock would hold up the event loop
        warming = asyncio.create_task(asyncio.to_thread(_warm_up), name="kernels-warm-up")
        index, offsets = await load_index(store, version, s.dim)
        _release_load_memory()
        metrics.index_rebuild.set(time.perf_counter() - t0)
        metrics.index_version.set(version)
        metrics.index_items.set(len(index))
        log.info("index version %d: %d items loaded in %.1fs", version, len(index),
                 time.perf_counter() - t0)
        slot = IndexSlot(index, version, (await store.get_meta(version) or {}).get("user"))
        dead_letters = DeadLetters(s, metrics, send)
        kwargs = kafka_client_kwargs(s)
        follower = ItemsFollower(s, slot, metrics, kwargs, writer=ItemsWriter(store, s, metrics),
                                 dead_letters=dead_letters)
        watch = start_watch(s, slot, metrics, store, follower.positions)
        service = RecallService(s, store, slot, metrics, watch)
        _ = service.policy  # logs the user-vector settings in use
        clicks = ClicksConsumer(s, service, dead_letters, metrics, kwargs)
        ownership = Ownership(s, clicks, follower)
        requests = RequestsConsumer(s, service, dead_letters, send, metrics, ownership.own,
                                    kwargs, membership=membership)
        worker = cls(s, metrics, store, service, follower, clicks, requests, watch)
        await warming
        await follower.start(offsets)
        await service.refresh_popular()
        await clicks.start()
        worker._tasks = [asyncio.create_task(worker._watch(), name="recall-watch"),
                         asyncio.create_task(worker._loop_lag(), name="recall-loop-lag"),
                         asyncio.create_task(worker._gc_pauses(), name="recall-gc-pauses")]
        # last, once requests can be answered: take the assignment (joining now if the
        # group was not joined yet) and fetch
        await requests.start()
        return worker

    async def stop(self) -> None:
        await self.requests.stop()  # first: commit answered requests, leave the group
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.watch.stop()
        await self.clicks.stop()
        await self.follower.stop()
        await self.store.close()

    async def _gc_pauses(self) -> None:
        """recall_gc_pause_seconds (stream.gcpause), published once a second."""
        pauses = GCPauses(self.metrics.gc_pause)
        pauses.install()
        try:
            while True:
                await asyncio.sleep(GC_PUBLISH_EVERY)
                pauses.publish()
        finally:
            pauses.remove()
            pauses.publish()

    async def _watch(self) -> None:
        """Poll the live version (rebuild on change) and refresh popular items."""
        service = self.service
        while True:
            await asyncio.sleep(VERSION_POLL)
            try:
                live = await self.store.live_version()
                if live is not None and live != service.slot.version:
                    log.info("live index version changed %d -> %d: rebuilding",
                             service.slot.version, live)
                    await self.follower.rebuild(self.store, live)
                if service.popular.stale():
                    await service.refresh_popular()
                self.metrics.users_cached.set(len(service.users))
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


def start_watch(settings: Settings, slot: IndexSlot, metrics: Metrics, store: Store,
                positions: Any) -> RecallWatch:
    """The live recall monitor (stream.watch), running. A version with the default hash
    layout (one a worker created empty) counts as chosen for 0 items: re-picked once the
    catalogue passes the exact-search size."""
    from dataclasses import replace

    from stream.items import default_params

    s = settings
    explicit = bool(s.lsh_tables or s.lsh_hashes or s.lsh_width or s.lsh_probes)
    default = default_params(s)
    untuned = not explicit and replace(slot.index.params, T=default.T) == default
    watch = RecallWatch(s, slot, metrics, store, positions, EXACT_MAX_ITEMS,
                        explicit_params=explicit, chosen_for=0 if untuned else None)
    watch.start()
    return watch


def build_worker(settings: Settings, metrics: Metrics | None = None) -> tuple[Any, Metrics]:
    """The faust app running a :class:`Worker` as a service (started after faust's
    producer, stopped before it); responses and DLQ records go through that producer."""
    import mode

    from stream.app import build_app

    app = build_app(settings)
    metrics = metrics or Metrics()

    async def send(topic: str, key: bytes | None, value: bytes) -> asyncio.Future:
        """Hand a record to the producer; returns its delivery (acknowledged) future."""
        return await app.producer.send(topic, key, value, None, None, None)

    @app.service
    class WorkerService(mode.Service):
        """Starts the :class:`Worker` in a task (loading 1M items takes seconds, faust's
        own start must not wait) and stops it."""

        _starting: asyncio.Task | None = None

        async def on_started(self) -> None:
            self._starting = asyncio.create_task(Worker.start(settings, metrics, send),
                                                 name="worker-start")

        async def on_stop(self) -> None:
            if self._starting is None:
                return
            if not self._starting.done():
                self._starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._starting
                return
            if self._starting.exception() is None:
                await self._starting.result().stop()

    return app, metrics
