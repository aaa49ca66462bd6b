"""Faults, on a real broker (Tansu) and real redis-servers: what a caller sees, and that
nothing is lost or counted twice.

Each test starts its own redis-server (password-protected, so the worker's
authenticated path is exercised everywhere) and its own worker process on topics of
its own, drives it only through the contract's topics as a back end would, injects
one kind of fault, and checks against a replay of what it sent:

- a user's window and vector in Redis equal an exactly-once replay of their clicks
  (RollingUserVectors over the clicks in order, each once);
- popularity equals the number of clicks per item: ``lost`` = counts missing,
  ``doubled`` = counts over (both must be 0);
- every request whose id is readable is answered (after a worker crash possibly twice:
  at-least-once, see the README), within RECALL_REQUEST_DEADLINE_MS plus Kafka's round
  trip while Redis is away.

Every test is bounded (outages of a few seconds, ``eventually`` timeouts) and prints its
figures (``pytest -s tests/test_faults.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from devtools.client import RecallClient, ResponseReader
from devtools.localstack import (
    LocalStack,
    Service,
    create_topics,
    free_port,
    redis_server_binary,
    start_tansu,
    start_worker,
    wait_for_port,
)
from offline.generate import cluster_vectors
from recall.config import Settings
from recall.lsh.params import VECTOR_ATOL
from recall.users import RollingUserVectors
from tests.support import eventually, isolated_settings, metric, stored_user

pytestmark = pytest.mark.integration

DIM = 16
N_ITEMS = 400
WINDOW = 5
PASSWORD = "s3cret-for-tests"
#: what a response may take beyond the request deadline: Kafka both ways on a loaded
#: machine (the suite shares two cores with other work)
SLACK = 1.5
DEADLINE_MS = 1000


# --- a redis-server of the test's own ------------------------------------------


def start_own_redis(workdir: Path, port: int, password: str | None = PASSWORD) -> Service:
    """redis-server on ``port`` with an append-only file in ``workdir`` (a restart on the
    same port and directory finds its data) and ``--requirepass`` when given."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(workdir), "--save", "", "--appendonly", "yes",
            "--daemonize", "no"]
    if password:
        args += ["--requirepass", password]
    log_path = workdir / "redis.log"
    proc = subprocess.Popen(args, stdout=open(log_path, "ab"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, proc=proc)
    return Service("redis", proc, port, log_path)


def redis_url(port: int, password: str | None = PASSWORD) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0"


# --- what the worker answered ----------------------------------------------------


@dataclass
class Sent:
    rid: str
    user_id: str
    at: float  # time.monotonic() when produced
    cold: bool  # a user never seen: the answer needs Redis


class Responses:
    """Every response on the responses topic since :meth:`start`: rid -> [(value, when)]
    (read by :class:`devtools.client.ResponseReader`, the client's own reader)."""

    def __init__(self, settings: Settings) -> None:
        self.seen: dict[str, list[tuple[dict[str, Any], float]]] = defaultdict(list)
        self._reader = ResponseReader(settings, [settings.topic_responses], self._on_records)

    async def start(self) -> None:
        await self._reader.start()

    async def stop(self) -> None:
        await self._reader.stop()

    def _on_records(self, records: list[Any]) -> None:
        now = time.monotonic()
        for rec in records:
            value = orjson.loads(rec.value)
            self.seen[value["request_id"]].append((value, now))

    def first(self, rid: str) -> tuple[dict[str, Any], float] | None:
        got = self.seen.get(rid)
        return got[0] if got else None


# --- the world of one test --------------------------------------------------------


@dataclass
class World:
    settings: Settings
    redis: Service
    redis_dir: Path
    worker: Service
    worker_log: Path
    client: RecallClient
    responses: Responses
    r: redis.Redis
    ids: list[str]
    vectors: np.ndarray
    clicks: list[dict[str, Any]] = field(default_factory=list)  # every click acknowledged
    requests: list[Sent] = field(default_factory=list)
    _seq: int = 0

    def restart_worker(self) -> None:
        self.worker = start_worker(self.settings.environ(), self.worker_log,
                                   self.settings.metrics_port)

    def kill_worker(self) -> None:
        self.worker.proc.kill()  # SIGKILL: no commit, no goodbye
        self.worker.proc.wait(10)

    async def click(self, user_id: str, n: int = 1, event_ids: bool = True) -> None:
        """``n`` clicks of ``user_id``, each newer than all before, with unique event ids
        or none (then only the partition offsets stored with the state deduplicate)."""
        batch = []
        for _ in range(n):
            self._seq += 1
            item = self.ids[(self._seq * 7919) % len(self.ids)]
            click = {"user_id": user_id, "item_id": item, "ts": 1000.0 + self._seq * 0.001}
            if event_ids:
                click["event_id"] = f"ev-{self._seq}"
            batch.append(click)
        await self.client.clicks(batch)
        self.clicks.extend(batch)

    async def request(self, user_id: str, cold: bool = False) -> Sent:
        sent = Sent("", user_id, time.monotonic(), cold)
        sent.rid = await self.client.send_request(user_id, k=5)
        self.requests.append(sent)
        return sent

    # --- the checks --------------------------------------------------------------

    def popularity(self) -> dict[str, float]:
        rows = self.r.zrange(f"{self.settings.redis_prefix}:popular", 0, -1, withscores=True)
        return {m.decode(): s for m, s in rows}

    def lost_and_doubled(self) -> tuple[int, int]:
        want = Counter(c["item_id"] for c in self.clicks)
        got = self.popularity()
        lost = sum(max(0, n - int(got.get(i, 0))) for i, n in want.items())
        doubled = sum(max(0, int(s) - want.get(i, 0)) for i, s in got.items())
        return lost, doubled

    async def all_clicks_applied(self, timeout: float = 40.0) -> None:
        total = len(self.clicks)
        await eventually(lambda: sum(self.popularity().values()) >= total, timeout, 0.2)

    def check_users_exactly_once(self) -> int:
        """Every user's stored window and vector = an exactly-once replay; returns the
        number of users checked."""
        table = {i: v for i, v in zip(self.ids, self.vectors, strict=True)}

        def lookup(items: Any) -> tuple[np.ndarray, np.ndarray]:
            mat = np.stack([table[i] for i in items]) if items else np.zeros((0, DIM))
            return mat, np.ones(len(items), dtype=bool)

        policy = RollingUserVectors(DIM, WINDOW, lookup=lookup)
        by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for c in self.clicks:
            by_user[c["user_id"]].append(c)
        for uid, clicks in by_user.items():
            want = policy.new_state()
            for c in clicks:
                policy.apply(want, c["item_id"], c["ts"], 1.0, table[c["item_id"]],
                             c.get("event_id"))
            got = stored_user(self.r, self.settings, uid)
            assert got is not None, f"user {uid}: no state stored"
            assert [(c.item_id, c.event_id) for c in got.window] == [
                (c.item_id, c.event_id) for c in want.window], uid
            # the worker's item vectors are half precision (VECTOR_DTYPE)
            np.testing.assert_allclose(got.vector(), want.vector(), rtol=1e-5,
                                       atol=VECTOR_ATOL)
        return len(by_user)

    async def all_answered(self, timeout: float = 30.0) -> None:
        await eventually(lambda: all(s.rid in self.responses.seen for s in self.requests),
                         timeout, 0.2)

    def duplicates(self) -> int:
        return sum(len(self.responses.seen[s.rid]) - 1 for s in self.requests)


def _catalogue() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(11)
    vectors = cluster_vectors(rng.integers(0, 20, size=N_ITEMS), DIM, seed=11)
    return [f"item-{i}" for i in range(N_ITEMS)], vectors


@contextlib.asynccontextmanager
async def world(stack: LocalStack, tmp_path: Path, name: str,
                **overrides: Any) -> AsyncIterator[World]:
    """Own password-protected redis-server, own topics, a worker and a client on them,
    the catalogue loaded; everything stopped by process id afterwards."""
    redis_dir = tmp_path / "redis"
    redis_svc = start_own_redis(redis_dir, free_port())
    settings = isolated_settings(stack, name, dim=DIM, topic_partitions=2,
                                 user_window=WINDOW, redis_url=redis_url(redis_svc.port),
                                 **overrides)
    await create_topics(settings.kafka_bootstrap, settings.topics.values(), 2)
    worker_log = tmp_path / "worker.log"
    worker = start_worker(settings.environ(), worker_log, settings.metrics_port)
    client = RecallClient(settings)
    responses = Responses(settings)
    r = redis.Redis.from_url(settings.redis_url)
    w = None
    try:
        await client.start(read_dlq=True)
        await responses.start()
        await client.wait_ready(60)
        ids, vectors = _catalogue()
        await client.upsert_items(ids, vectors)
        await eventually(lambda: metric(settings.metrics_port, "recall_index_items")
                         >= N_ITEMS, 30)
        w = World(settings, redis_svc, redis_dir, worker, worker_log, client, responses,
                  r, ids, vectors)
        yield w
    finally:
        await responses.stop()
        await client.stop()
        (w.worker if w is not None else worker).stop(timeout=10)
        r.close()
        if redis_svc.proc.poll() is None:
            os.kill(redis_svc.proc.pid, signal.SIGCONT)
        (w.redis if w is not None else redis_svc).stop()
        print(worker_log.read_text()[-3000:])


async def traffic(w: World, seconds: float, warm: list[str], every: float = 0.1,
                  clicks_per_tick: int = 2, event_ids: bool = True) -> None:
    """For ``seconds``: each tick, clicks of warm users, one request of a warm user (in
    the worker's memory) and one of a user never seen (the answer needs Redis)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        await w.click(warm[n % len(warm)], clicks_per_tick, event_ids)
        await w.request(warm[(n + 1) % len(warm)])
        await w.request(f"cold-{uuid.uuid4().hex[:12]}", cold=True)
        await asyncio.sleep(every)


async def warm_up(w: World, users: int = 8) -> list[str]:
    warm = [f"warm-{u}" for u in range(users)]
    for uid in warm:
        await w.click(uid, 3)
    await w.all_clicks_applied()
    for uid in warm:  # answered once: the worker holds them in memory
        assert (await w.client.recall(uid, k=5)).value["status"] == "ok"
    return warm


def answers_during(w: World, t0: float, t1: float) -> list[tuple[Sent, dict, float]]:
    """(request, first response, seconds to it) of the requests sent in [t0, t1)."""
    out = []
    for s in w.requests:
        if t0 <= s.at < t1:
            first = w.responses.first(s.rid)
            assert first is not None, f"request {s.rid} sent during the fault: no response"
            out.append((s, first[0], first[1] - s.at))
    return out


# --- malformed input ------------------------------------------------------------


async def test_malformed_and_oversized_messages_on_every_topic_block_nothing(
        stack: LocalStack, tmp_path: Path) -> None:
    """Bad messages of every kind on each input topic, each followed by valid ones of the
    same key (so the same partition): every bad one reaches the DLQ with its reason,
    every readable request is answered (invalid), and every valid message behind them is
    applied or answered."""
    async with world(stack, tmp_path, "fmal") as w:
        s = w.settings
        big = b"this is not json " + b"y" * 600_000  # over the DLQ record limit if copied
        over = orjson.dumps({"user_id": "u", "item_id": "x", "pad": "z" * 1_000_100})
        long_rid = "r" * 300
        bad_any = [(b"", "not_json"), (b"\xff\xfe", "not_json"), (big, "not_json"),
                   (over, "oversized"), (b"[1, 2]", "not_object"), (b"null", "not_object")]
        bad = {
            s.topic_clicks: [
                *bad_any,
                (b'{"user_id": "u", "item_id": "i", "weight": NaN}', "not_finite"),
                (b'{"user_id": "u", "item_id": "i", "ts": -Infinity}', "not_finite"),
                (orjson.dumps({"user_id": "u", "item_id": 7}), "wrong_type"),
                (orjson.dumps({"user_id": "u", "item_id": "i", "weight": 0}), "out_of_range"),
                (orjson.dumps({"user_id": "u" * 300, "item_id": "i"}), "out_of_range")],
            s.topic_items: [
                *bad_any,
                (b'{"item_id": "n", "vector": [' + b"NaN," * (DIM - 1) + b"1]}", "not_finite"),
                (orjson.dumps({"item_id": "n", "vector": [1.0]}), "bad_dimension"),
                (orjson.dumps({"item_id": "n", "vector": [0.0] * DIM}), "zero_vector"),
                (orjson.dumps({"item_id": "n"}), "missing_field")],
            s.topic_requests: [
                *bad_any,
                (orjson.dumps({"request_id": "q-k", "user_id": "u", "k": 0}), "out_of_range"),
                (orjson.dumps({"request_id": long_rid, "user_id": "u"}), "out_of_range"),
                (b'{"request_id": "q-nan", "user_id": "u", "k": NaN}', "not_finite"),
                (orjson.dumps({"user_id": "u"}), "missing_field")],
        }
        readable = {"q-k", long_rid}  # request ids the worker can read: owed an answer
        futures = {rid: w.client.expect(rid) for rid in readable}
        n_bad = 0
        for topic, values in bad.items():
            for value, _ in values:
                await w.client.send_raw(topic, b"user-fault", value)
                n_bad += 1
                # and a valid message behind each bad one, on the same partition
                if topic == s.topic_clicks:
                    await w.click("user-fault")
                elif topic == s.topic_items:
                    item = f"after-{n_bad}"
                    await w.client.send_raw(topic, b"user-fault", orjson.dumps(
                        {"item_id": item, "vector": w.vectors[n_bad].tolist()}))
                else:
                    await w.request("user-fault")
        # the invalid requests whose ids are readable get status invalid
        for rid, fut in futures.items():
            resp = await asyncio.wait_for(fut, 20)
            assert resp.value["status"] == "invalid", rid
        # every bad message in the DLQ once, with its reason
        await eventually(lambda: len(w.client.dlq) >= n_bad, 30)
        got = Counter((d["topic"], d["reason"]) for d in w.client.dlq)
        want = Counter((t, reason) for t, values in bad.items() for _, reason in values)
        assert got == want
        # every valid one behind them applied or answered
        await w.all_clicks_applied()
        assert w.check_users_exactly_once() == 1
        live = int(w.r.get(f"{s.redis_prefix}:index:live"))
        first = len(bad[s.topic_clicks]) + 1
        items = [f"after-{n}" for n in range(first, first + len(bad[s.topic_items]))]
        await eventually(lambda: all(w.r.hexists(f"{s.redis_prefix}:index:{live}:vectors", i)
                                     for i in items), 20)
        await w.all_answered()
        assert {v["status"] for s_ in w.requests for v, _ in w.responses.seen[s_.rid]} == {"ok"}
        print(f"\nmalformed: {n_bad} bad messages on 3 topics, {len(w.clicks)} clicks, "
              f"{len(items)} items, {len(w.requests)} requests behind them: all applied/"
              f"answered; lost/doubled = {w.lost_and_doubled()}")
        assert w.lost_and_doubled() == (0, 0)


# --- worker crashes ---------------------------------------------------------------


async def test_kill_9_of_the_worker_mid_stream_loses_and_doubles_nothing(
        stack: LocalStack, tmp_path: Path) -> None:
    """Three kill -9s of the worker while clicks and requests flow, each followed by a
    restart: user state and popularity equal an exactly-once replay; every request is
    answered, some twice (at-least-once)."""
    async with world(stack, tmp_path, "fkill") as w:
        warm = await warm_up(w)
        recoveries = []
        for _ in range(3):
            run = asyncio.create_task(traffic(w, 6.0, warm))
            await asyncio.sleep(1.2)
            t_kill = time.monotonic()
            w.kill_worker()
            await asyncio.to_thread(w.restart_worker)  # traffic flows meanwhile
            await run
            await w.request(warm[0])  # one more, surely after the restart
            await w.all_answered(40)
            recoveries.append(min(f[1] for s in w.requests
                                  if s.at > t_kill and (f := w.responses.first(s.rid))
                                  ) - t_kill)
        await w.all_answered(40)
        await w.all_clicks_applied()
        lost, doubled = w.lost_and_doubled()
        users = w.check_users_exactly_once()
        print(f"\nkill -9 x3: {len(w.clicks)} clicks of {users} users, {len(w.requests)} "
              f"requests ({w.duplicates()} answered twice); kill -> first answer "
              f"{', '.join(f'{x:.1f}' for x in recoveries)} s; lost={lost} doubled={doubled}")
        assert (lost, doubled) == (0, 0)


# --- Redis away -------------------------------------------------------------------


async def _redis_outage(w: World, outage: float, stop: Any, resume: Any) -> dict[str, Any]:
    warm = await warm_up(w)
    # clicks of users in memory without event ids: a batch is then ONE Redis call, the
    # write, so the outage catches a write in flight (a call that timed out, whose
    # command still runs when Redis resumes, and that redis-py sends again)
    run = asyncio.create_task(traffic(w, outage + 4.0, warm, event_ids=False))
    await asyncio.sleep(1.5)
    t0 = time.monotonic()
    stop()
    await asyncio.sleep(outage)
    resume()
    t1 = time.monotonic()
    await run
    await w.all_answered(40)
    during = answers_during(w, t0 + 0.3, t1 - 0.3)
    worst = max(lat for _, _, lat in during)
    warm_status = Counter(v["status"] for s, v, _ in during if not s.cold)
    # a user never seen needs Redis: an honest error -- unless Redis was back by the time
    # the request was read (it waited behind a batch that waited for Redis)
    cold_status = Counter("ok after" if v["status"] == "ok" and s.at + lat > t1
                          else v["status"] for s, v, lat in during if s.cold)
    # then recovery: a user never seen is answered ok again (popular)
    t_back = time.monotonic()

    async def serves_cold() -> bool:
        resp = await w.client.recall(f"cold-{uuid.uuid4().hex}", k=3, timeout=5)
        return resp.value["status"] == "ok"

    await eventually(serves_cold, 30, 0.2)
    recovery = time.monotonic() - t_back
    await w.all_clicks_applied()
    lost, doubled = w.lost_and_doubled()
    figures = {"outage_s": outage, "requests_during": len(during), "warm_ok": warm_status["ok"],
               "cold_error": cold_status["error"],
               "cold_ok_after_resume": cold_status["ok after"],
               "worst_answer_s": round(worst, 2), "clicks": len(w.clicks),
               "recovery_s": round(recovery, 2), "lost": lost, "doubled": doubled,
               "duplicates": w.duplicates()}
    print(f"\nfigures: {figures}")
    assert (lost, doubled) == (0, 0), figures  # popularity: each click counted once
    figures["users"] = w.check_users_exactly_once()
    # nothing silent, nothing late: within the deadline (+ Kafka both ways)
    assert worst <= DEADLINE_MS / 1000 + SLACK, f"an answer took {worst:.1f}s"
    assert set(warm_status) == {"ok"}, warm_status  # from memory, Redis not needed
    assert set(cold_status) <= {"error", "ok after"} and cold_status["error"], cold_status
    assert all("redis" in v["error"] for s, v, _ in during if v["status"] == "error")
    return figures


async def test_redis_stalled_sigstop_answers_within_the_deadline_then_recovers(
        stack: LocalStack, tmp_path: Path) -> None:
    """Redis SIGSTOPped for 7 s (longer than redis-py's 5 s default timeout) during
    traffic: users in memory answered ok, the others error within the deadline; after
    SIGCONT nothing lost, and the click batch whose call timed out and was sent again is
    not counted twice."""
    async with world(stack, tmp_path, "fstop") as w:
        pid = w.redis.proc.pid
        figures = await _redis_outage(w, 7.0, lambda: os.kill(pid, signal.SIGSTOP),
                                      lambda: os.kill(pid, signal.SIGCONT))
        print(f"\nredis SIGSTOP: {figures}")


async def test_redis_killed_and_restarted_answers_within_the_deadline_then_recovers(
        stack: LocalStack, tmp_path: Path) -> None:
    """Redis kill -9, restarted 5 s later on its port and append-only file, during
    traffic: the same promises as a stall."""
    async with world(stack, tmp_path, "frestart") as w:
        port = w.redis.port

        def restart() -> None:
            w.redis = start_own_redis(w.redis_dir, port)

        def kill() -> None:
            w.redis.proc.kill()
            w.redis.proc.wait(5)

        figures = await _redis_outage(w, 5.0, kill, restart)
        print(f"\nredis kill -9 + restart: {figures}")


async def test_redis_restarted_without_its_last_writes_replays_them_from_kafka(
        stack: LocalStack, tmp_path: Path) -> None:
    """Redis comes back with older data than the worker wrote (a restore, a failover to a
    lagging replica, a host crash with fsync once a second): the click batch's offsets no
    longer match, so the worker reloads those users and applies the lost clicks again
    from Kafka -- nothing lost (the old code kept writing on top: lost > 0), nothing
    doubled."""
    async with world(stack, tmp_path, "flost") as w:
        warm = await warm_up(w)
        await traffic(w, 1.5, warm, event_ids=False)
        await w.all_clicks_applied()
        aof = w.redis_dir / "appendonly.aof"
        await asyncio.sleep(1.5)  # the append-only file is written once a second
        older = aof.read_bytes()
        await traffic(w, 1.5, warm, event_ids=False)  # applied, then lost below
        await w.all_clicks_applied()
        lost_clicks = len(w.clicks)
        w.redis.proc.kill()
        w.redis.proc.wait(5)
        aof.write_bytes(older)
        w.redis = start_own_redis(w.redis_dir, w.redis.port)
        assert sum(w.popularity().values()) < lost_clicks  # Redis did lose writes
        await traffic(w, 2.0, warm, event_ids=False)
        await w.all_clicks_applied()
        lost, doubled = w.lost_and_doubled()
        users = w.check_users_exactly_once()
        log = w.worker_log.read_text()
        print(f"\nredis restored to older data: {len(w.clicks)} clicks of {users} users, "
              f"lost={lost} doubled={doubled}, resynced: {'out of step with Redis' in log}")
        assert (lost, doubled) == (0, 0)


# --- the broker away --------------------------------------------------------------


async def test_broker_stall_loses_nothing(tmp_path: Path, redis_server: Service) -> None:
    """The broker (its own Tansu) SIGSTOPped for 4 s during traffic: afterwards every
    request is answered and every click applied once."""
    kafka = start_tansu(workdir=tmp_path)
    own = LocalStack(kafka=kafka, redis=redis_server, workdir=tmp_path)
    try:
        async with world(own, tmp_path, "fbroker") as w:
            warm = await warm_up(w)
            run = asyncio.create_task(traffic(w, 7.0, warm))
            await asyncio.sleep(1.5)
            os.kill(kafka.proc.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                await asyncio.sleep(4.0)
            finally:
                os.kill(kafka.proc.pid, signal.SIGCONT)
            await run
            await w.all_answered(60)
            back = max(f[1] for s in w.requests if (f := w.responses.first(s.rid))) - t0
            await w.all_clicks_applied(60)
            lost, doubled = w.lost_and_doubled()
            users = w.check_users_exactly_once()
            print(f"\nbroker SIGSTOP 4 s: {len(w.clicks)} clicks of {users} users, "
                  f"{len(w.requests)} requests all answered ({w.duplicates()} twice), last "
                  f"answer {back:.1f} s after the stall began; lost={lost} doubled={doubled}")
            assert (lost, doubled) == (0, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(kafka.proc.pid, signal.SIGCONT)
        kafka.stop()


# --- a worker that cannot work says so -----------------------------------------------


def _run_worker_expecting_exit(settings: Settings, log: Path, timeout: float,
                               **env_extra: str) -> tuple[int | None, str]:
    env = {**os.environ, **settings.environ(), "PYTHONUNBUFFERED": "1", **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "recall.cli", "worker"], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = None
        proc.kill()
        proc.wait(10)
    return rc, log.read_text()


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[Service]:
    svc = start_own_redis(tmp_path / "locked", free_port())
    yield svc
    svc.stop()


@pytest.mark.parametrize("password", ["wrong-password", None])
def test_a_wrong_or_missing_redis_password_fails_fast(
        stack: LocalStack, tmp_path: Path, locked_redis: Service,
        password: str | None) -> None:
    """The worker exits non-zero within seconds, naming Redis and REDIS_URL, and never
    logs Ready (it used to log Ready, serve /metrics and answer nothing)."""
    settings = isolated_settings(stack, "fpass", redis_url=redis_url(locked_redis.port,
                                                                     password))
    asyncio.run(create_topics(settings.kafka_bootstrap, settings.topics.values(), 4))
    t0 = time.monotonic()
    rc, out = _run_worker_expecting_exit(settings, tmp_path / "w.log", 30)
    took = time.monotonic() - t0
    print(f"\npassword {password!r}: exit {rc} after {took:.1f}s: {out.strip()[-300:]}")
    assert rc not in (None, 0), out[-2000:]
    assert "REDIS_URL" in out and "credentials" in out and "Ready" not in out
    assert PASSWORD not in out and (password is None or password not in out)


def test_an_unreachable_redis_or_broker_fails_fast(stack: LocalStack, tmp_path: Path) -> None:
    nobody = free_port()  # nothing listens there
    for name, override, names in (
            ("redis", {"redis_url": f"redis://127.0.0.1:{nobody}/0"}, "REDIS_URL"),
            ("kafka", {"kafka_bootstrap": f"127.0.0.1:{nobody}"}, "KAFKA_BOOTSTRAP")):
        settings = isolated_settings(stack, "funreach", **override)
        if name == "redis":
            asyncio.run(create_topics(settings.kafka_bootstrap, settings.topics.values(), 4))
        rc, out = _run_worker_expecting_exit(settings, tmp_path / f"{name}.log", 40,
                                             RECALL_STARTUP_TIMEOUT="2")
        print(f"\nunreachable {name}: exit {rc}: {out.strip()[-300:]}")
        assert rc not in (None, 0), out[-2000:]
        assert names in out and "Ready" not in out


async def test_a_missing_topic_fails_the_startup_check(stack: LocalStack) -> None:
    from stream.preflight import StartupError, check_kafka

    settings = isolated_settings(stack, "ftopic")
    await create_topics(settings.kafka_bootstrap, [settings.topic_clicks,
                                                   settings.topic_requests], 2)
    with pytest.raises(StartupError) as info:
        await check_kafka(settings)
    message = str(info.value)
    assert settings.topic_items in message and "RECALL_TOPIC_ITEMS" in message
    assert settings.topic_clicks not in message


def test_the_redis_budget_counts_from_the_request_and_never_drops_below_the_floor() -> None:
    """A request read late (queued behind a batch that waited for Redis) gets only what
    is left of its deadline; one read past it still gets REDIS_MIN_WAIT, so a worker
    running late does not answer errors while Redis is healthy."""
    from stream.deadline import ANSWER_MARGIN, REDIS_MIN_WAIT, budget

    now = 1000.0
    assert budget(1000, [now], now) == pytest.approx(1.0 - ANSWER_MARGIN)
    assert budget(1000, [now - 0.6, now - 0.1, None], now) == pytest.approx(0.4 - ANSWER_MARGIN)
    assert budget(1000, [now - 30.0], now) == REDIS_MIN_WAIT
    assert budget(1000, [None], now) == pytest.approx(1.0 - ANSWER_MARGIN)
    # a producer clock ahead of ours does not stretch the wait past the deadline
    assert budget(1000, [now + 5.0], now) == pytest.approx(1.0 - ANSWER_MARGIN)
