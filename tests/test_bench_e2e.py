"""Smoke test of ``recall bench e2e``: a tiny run on the local stack, in-process.

No timed assertions (the machine may be busy): only that the run completes, ends with one
JSON line of the documented figures, and that every request got its response.
"""

from __future__ import annotations

import json

import pytest

from recall.cli import main

pytestmark = pytest.mark.integration

KEYS = {
    "requests_sent", "responses", "lost", "errors", "timeouts", "throughput",
    "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms", "e2e_max_ms",
    "worker_request_p50_ms", "worker_request_p99_ms", "worker_e2e_p50_ms",
    "worker_e2e_p99_ms", "candidates_mean", "clicks_sent", "clicks_applied",
    "freshness_p50_ms", "freshness_p99_ms", "freshness_missed", "worker_rss_peak_mb",
    "broker_rtt_p50_ms", "broker_rtt_p99_ms",
    "e2e_to_worker_p50_ms", "e2e_to_worker_p99_ms", "e2e_from_worker_p50_ms",
    "e2e_from_worker_p99_ms", "worker_kafka_p50_ms", "worker_kafka_p99_ms",
    "worker_queued_p50_ms", "worker_queued_p99_ms", "worker_delivery_p50_ms",
    "worker_delivery_p99_ms", "broker_floor_p50_ms", "broker_floor_p99_ms",
    "broker_floor_first_p50_ms", "broker_floor_last_p50_ms", "broker_floor_cpu",
    "worker_gc_full_collections", "worker_gc_full_mean_ms", "worker_gc_gen1_collections",
}


def test_bench_e2e_smoke(capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch) -> None:
    # a metrics port of its own, whatever the environment says
    monkeypatch.delenv("RECALL_METRICS_PORT", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the worker's files go to the bench's own directory, not here
    plot = tmp_path / "latency.png"
    profile = tmp_path / "worker.speedscope.json"
    import os

    mine = sorted(os.sched_getaffinity(0))
    pin = ["--pin-worker", str(mine[-1])] if len(mine) >= 2 else []
    status = main(["bench", "e2e", "--items", "2000", "--users", "200", "--rate", "50",
                   "--click-rate", "100", "--seconds", "3", "--freshness", "5",
                   "--warm-clicks", "4",
                   "--plot", str(plot), "--py-spy", str(profile), "--broker-floor", *pin])
    assert status == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    figures = json.loads(lines[-1])
    assert set(figures) >= KEYS
    # --warm-clicks: each warm user's clicks, all applied before the phase
    assert figures["warm_clicks"] == 4
    assert any(ln.startswith("200 warm users: 800 clicks applied") for ln in lines)
    assert figures["requests_sent"] == 150
    assert figures["lost"] == 0
    assert figures["responses"] == figures["requests_sent"]
    assert figures["errors"] == 0
    assert figures["freshness_missed"] == 0
    # measured once the worker's recall monitor held its target (RECALL_TARGET_RECALL
    # 0.95), not while it was still raising the probes
    assert figures["settled"] is True
    assert figures["lsh_probes_start"] >= 1 and figures["lsh_probes"] >= 1
    assert figures["settle_requests"] > 0
    assert figures["e2e_p50_ms"] is not None and figures["e2e_p50_ms"] > 0
    # e2e split at the worker's send: both legs measured
    assert figures["e2e_to_worker_p50_ms"] > 0 and figures["e2e_from_worker_p50_ms"] > 0
    assert figures["e2e_to_worker_p50_ms"] < figures["e2e_p99_ms"]
    assert figures["worker_kafka_p50_ms"] is not None
    assert figures["worker_delivery_p50_ms"] is not None
    assert figures["worker_rss_peak_mb"] > 0
    # memory read while the worker lives (after it stops only the sampled maximum is left)
    assert figures["worker_rss_anon_mb"] > 0 and figures["worker_rss_file_mb"] > 0
    assert figures["worker_rss_peak_mb"] >= figures["worker_rss_anon_mb"]
    if pin:  # the worker alone on its CPU; this process (and the load) on the others
        assert figures["worker_cpus"] == [mine[-1]]
    assert sorted(os.sched_getaffinity(0)) == mine  # ours given back afterwards
    # the broker's own floor is measured on the local stack, and a recall costs more
    assert 0 < figures["broker_rtt_p50_ms"] < figures["e2e_p50_ms"]
    # --broker-floor: the broker alone under the same request traffic, every record read
    assert figures["broker_floor_lost"] == 0 and figures["broker_floor_p50_ms"] > 0
    assert figures["broker_floor_cpu"] > 0
    assert plot.stat().st_size > 0
    # e2e per progress window over the phase (the plot's third panel): every response
    # read in the phase's windows counted once, each window's p50 at most its p99
    windows = figures["e2e_windows"]
    assert windows and [w["t"] for w in windows] == sorted(w["t"] for w in windows)
    assert 0 < sum(w["responses"] for w in windows) <= figures["responses"]
    assert all(0 < w["p50_ms"] <= w["p99_ms"] for w in windows)
    # the worker was profiled during the measured phase: a speedscope file with samples
    assert figures["py_spy"] == str(profile)
    speedscope = json.loads(profile.read_text())
    assert sum(len(p["samples"]) for p in speedscope["profiles"]) > 0
    assert not list(cwd.iterdir())
    # CPU per process over the phase (fractions of a core) and per CPU
    share = figures["cpu_share"]
    assert set(share) >= {"worker", "broker", "redis", "bench", "load_requests", "load_clicks"}
    assert share["worker"] > 0 and share["load_requests"] > 0
    # the profiler runs beside the broker and the load: its own CPU is counted too
    assert share["py_spy"] > 0
    assert figures["worker_cpu_ms_per_request"] == pytest.approx(
        1000 * share["worker"] / figures["throughput"], rel=1e-3)
    assert len(figures["cpu_busy"]) == os.cpu_count()
    # the worker's CPU by thread: its event loop ("main") did the answering
    threads = figures["worker_threads"]
    assert threads["main"] > 0
    assert sum(threads.values()) <= share["worker"] + 0.05
    assert 0 <= figures["worker_system"] <= share["worker"] + 0.05
    assert figures["worker_minor_faults_per_s"] >= 0
    assert all(0 <= b <= 1.01 for b in figures["cpu_busy"])


def test_pin_worker_refuses_cpus_it_cannot_use() -> None:
    import os

    from devtools.e2e.run import pinning
    from devtools.errors import DevtoolsError

    mine = sorted(os.sched_getaffinity(0))
    assert pinning(None) is None
    with pytest.raises(DevtoolsError, match="not available"):
        pinning(max(mine) + 1000)
    with pytest.raises(DevtoolsError, match="no CPU"):
        pinning(mine[0], workers=len(mine))
    if len(mine) >= 2:
        workers, others = pinning(mine[0])
        assert workers == [{mine[0]}] and others == set(mine[1:])


async def test_the_bench_stops_waiting_for_a_worker_that_exited(stack) -> None:
    """A local worker that died at start (e.g. its port taken) ends the bench with an
    error at once, instead of a 600 s wait for an answer that cannot come."""
    import subprocess

    from devtools.e2e.run import wait_ready
    from devtools.errors import DevtoolsError
    from devtools.localstack import create_topics
    from tests.support import isolated_settings

    s = isolated_settings(stack, "wr", topic_partitions=1)
    await create_topics(s.kafka_bootstrap, s.topics.values(), 1)
    dead = subprocess.Popen(["false"])
    dead.wait()
    with pytest.raises(DevtoolsError, match="exited with status 1"):
        await wait_ready(s, 600, dead)  # (waiting out the 600 s would raise TimeoutError)


async def test_trace_lost_tells_requests_never_answered_from_responses_not_read(stack) -> None:
    import orjson

    from devtools.e2e.probes import trace_lost
    from devtools.e2e.traffic import producer
    from devtools.localstack import create_topics
    from tests.support import isolated_settings

    s = isolated_settings(stack, "tl", topic_partitions=2)
    await create_topics(s.kafka_bootstrap, s.topics.values(), 2)
    prod = producer(s.kafka_bootstrap, 0)
    await prod.start()
    try:
        for seq in range(5):  # requests 0-4 of run "r1", and of another run
            for run in ("r1", "r2"):
                await prod.send_and_wait(s.topic_requests, orjson.dumps(
                    {"request_id": f"{run}.{seq}.123", "user_id": "u"}), key=b"u")
        for seq in (1, 3):  # answered: 1 and 3
            await prod.send_and_wait(s.topic_responses, b"{}", key=f"r1.{seq}.123".encode())
    finally:
        await prod.stop()
    found = await trace_lost(s, "r1", [1, 2, 3, 7])
    assert found == {"requests_in_kafka": [1, 2, 3], "responses_in_kafka": [1, 3]}


def _step(**over):
    fig = {"lost": 0, "timeouts": 0, "errors": 0, "worker_request_p99_ms": 10.0,
           "e2e_p99_ms": 40.0, "throughput": 100.0, "offered_rate": 100.0,
           "clicks_applied": 1000.0, "clicks_sent": 1000}
    return {**fig, **over}


@pytest.mark.parametrize("over,why", [
    ({}, ""),
    ({"worker_request_p99_ms": 26.0}, "in-worker p99"),
    ({"worker_request_p99_ms": None}, "in-worker p99"),
    ({"lost": 1}, "lost"),
    ({"timeouts": 3}, "over 1 s"),
    ({"errors": 2}, "error"),
    ({"e2e_p99_ms": 400.0}, "e2e p99"),
    ({"throughput": 90.0}, "answered"),
    ({"clicks_applied": 900.0}, "clicks applied"),
    ({"clicks_applied": None}, "clicks applied"),
])
def test_capacity_step_is_sustainable_only_within_every_limit(over, why) -> None:
    from devtools.e2e.capacity import verdict

    got = verdict(_step(**over), p99_ms=25.0, lag_ms=250.0)
    assert (got == "") if not why else (why in got)


def test_bench_capacity_smoke(capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch) -> None:
    """One rate step with one worker: the command runs and reports a sustainable rate."""
    monkeypatch.delenv("RECALL_METRICS_PORT", raising=False)
    plot = tmp_path / "capacity.png"
    status = main(["bench", "capacity", "--items", "1000", "--users", "100", "--workers", "1",
                   "--start", "20", "--step", "20", "--max-rate", "20", "--step-seconds", "2",
                   "--refine", "0", "--plot", str(plot)])
    assert status == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["bench"] == "capacity"
    assert [s["rate"] for s in figures["steps"]] == [20.0]
    step = figures["steps"][0]
    assert step["ok"] == (step["why"] == "")
    assert figures["best_rate"] == {"1": 20.0 if step["ok"] else 0.0}
    assert step["clicks_sent"] == 400 and step["lost"] == 0
    # the worker's own CPU, measured per step, and the line fitted through it
    assert step["worker_cores"] > 0 and step["worker_cpu_ms_per_request"] > 0
    assert step["cpu_share"]["broker"] is not None
    assert figures["worker_cpu"]["1"]["ms_per_request"] > 0
    assert figures["worker_cpu"]["1"]["rate_per_core_estimate"] > 0
    assert plot.stat().st_size > 0


def _cpu_step(workers: int, answered: float, cores: float, shared: float | None = 0.5,
              ok: bool = True, rate: float | None = None) -> dict:
    return {"workers": workers, "rate": rate or answered, "ok": ok, "throughput": answered,
            "offered_rate": answered, "clicks_sent": 10, "clicks_applied": 10.0,
            "worker_cores": cores, "shared_busy": shared}


def test_worker_cpu_line_gives_cost_per_request_and_a_per_core_estimate() -> None:
    """Steps on the line cores = 0.1 + 0.002 x rate: 2 ms per request, 0.1 of a core
    fixed; one core estimated at 400 requests/s, the highest step's (200/s at 0.5 of a
    core) in proportion, not the line's 450, which counts on the fixed part staying fixed;
    two workers' figures are per worker."""
    from devtools.e2e.capacity import worker_cpu_fit

    one = [_cpu_step(1, r, 0.1 + 0.002 * r) for r in (100, 150, 200)]
    fit = worker_cpu_fit(one, 1)
    assert fit == {"ms_per_request": 2.0, "fixed_cores": 0.1, "rate_per_core_estimate": 400.0,
                   "steps": 3, "kept_up": True}
    # a step whose clicks fell behind did less work than its rate: not on the line
    behind = {**_cpu_step(1, 300, 0.3), "clicks_applied": 5.0}
    assert worker_cpu_fit([*one, behind], 1) == fit
    assert worker_cpu_fit([behind], 1)["kept_up"] is False
    two = [_cpu_step(2, 2 * r, 2 * (0.1 + 0.002 * r)) for r in (100, 200)]
    assert worker_cpu_fit(one + two, 2)["rate_per_core_estimate"] == 400.0
    # one rate only: proportional (no fixed part can be told apart)
    assert worker_cpu_fit([_cpu_step(1, 100, 0.25)], 1)["rate_per_core_estimate"] == 400.0
    assert worker_cpu_fit([_cpu_step(1, 100, None)], 1) is None
    # the worker's CPU flat or falling over the ramp (per fetch, not per request): no
    # line, but still the estimate from the highest step kept up with
    flat = worker_cpu_fit([_cpu_step(1, r, c) for r, c in ((100, 0.42), (250, 0.40))], 1)
    assert flat["ms_per_request"] is None and flat["fixed_cores"] is None
    assert flat["rate_per_core_estimate"] == 625.0


@pytest.mark.parametrize("cores,shared,side", [
    (0.5, 0.99, "shared CPUs"), (0.97, 0.99, "worker core"), (0.97, 0.4, "worker core"),
    (0.5, 0.6, None), (0.5, None, None),
])
def test_the_summary_says_which_side_was_saturated_at_the_limit(cores, shared, side) -> None:
    from devtools.e2e.capacity import cpu_summary

    steps = [_cpu_step(1, 100, 0.3), _cpu_step(1, 190, cores, shared, ok=False, rate=200)]
    got = cpu_summary(steps, {1: 100.0})
    assert got["saturated_at_limit"] == {"1": side}
    assert got["cpu_at_best"] == {"1": {"worker_cores": 0.3, "shared_busy": 0.5}}


def test_the_click_load_leaves_in_one_send_per_tick_and_requests_one_by_one() -> None:
    """Clicks: everything due goes out once per tick (at 5,000/s the next click is always
    due 0.2 ms later, so a pacer that sleeps until then sends them one by one); requests:
    on their own schedule, so the e2e figure is not one of batches. Counts, not times."""
    import asyncio

    from devtools.e2e.traffic import _paced

    def run(rate: float, every_tick: bool) -> list[int]:
        calls: list[int] = []

        async def emit(n: int) -> None:
            calls.append(n)

        sent, *_ = asyncio.run(_paced(rate, 0.3, 0.0, 0.05, emit, every_tick=every_tick))
        assert sent == int(rate * 0.3) == sum(calls)
        return calls

    assert len(run(5000, every_tick=True)) <= 0.3 / 0.05 + 2
    assert len(run(100, every_tick=False)) >= 15  # 30 requests, not a few batches


def test_the_local_stack_keeps_its_logs_and_drops_the_redis_data_on_exit() -> None:
    """A 1M-item bench leaves ~600 MB of Redis append-only log in its stack's directory;
    hundreds of runs filled this machine's disk. The logs stay for a look afterwards."""
    import redis

    from devtools.localstack import local_stack

    with local_stack() as stack:
        redis.Redis.from_url(stack.redis_url).set("k", "v" * 1000)
        workdir = stack.workdir
        persisted = [*workdir.glob("*.aof"), *workdir.glob("appendonlydir")]
        assert persisted  # redis-server writes its append-only log there
    assert not any(p.exists() for p in persisted)
    assert not list(workdir.glob("*.rdb"))
    assert (workdir / "redis.log").is_file() and (workdir / "tansu.log").is_file()
