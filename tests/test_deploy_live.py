"""The monitoring files against a real worker: Prometheus scrapes it, every query answers.

One module fixture starts ``recall worker`` on the local stack (Tansu + redis-server),
drives load through the worker's topics (items, clicks with some duplicates, recall
requests, and bad messages so the DLQ metrics exist), and starts Debian's ``prometheus``
with a config derived from deploy/prometheus.yml (target rewritten to the worker's local
metrics port, deploy/alerts.yml loaded, 1 s scrapes). Then every query of every Grafana
panel (with ``$__rate_interval`` and friends substituted as Grafana would) and the query
part of every alert rule must parse and return data, and the rules must be loaded and
evaluate without error.

Skipped only when the ``prometheus`` binary is missing (scripts/install-system.sh
installs it; scripts/test.sh runs that first).

Also makes the picture of the dashboard in the README::

    RECALL_DASHBOARD_PNG=docs/dashboard.png RECALL_DASHBOARD_SECONDS=180 \\
        python -m pytest -q tests/test_deploy_live.py

runs the load for that long, with phases (ramping request rate, a burst of bad messages, a
batch of new items), and draws the dashboard over it with deploy/render_dashboard.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from devtools.localstack import (
    LocalStack,
    LocalStackError,
    Service,
    create_topics,
    free_port,
    start_worker,
    wait_for_port,
)
from recall.config import Settings
from tests.support import isolated_settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="the prometheus binary is missing: run scripts/install-system.sh "
                              "(apt-get install prometheus)"),
]

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_FILES = sorted((ROOT / "grafana/dashboards").glob("*.json"))
ALERTS_FILE = ROOT / "deploy/alerts.yml"
DIM = 64
N_ITEMS = 2000
N_USERS = 400
SCRAPE = "1s"
#: Grafana's $__rate_interval for a 1 s scrape interval would be 4 s; 8 s is steadier
RATE_INTERVAL = "8s"
#: scrapes of the loaded worker before querying (enough for every [8s] rate window)
MIN_SCRAPES = 12
#: longest the fixture waits for the recall monitor's queries to have data (s)
MONITOR_WAIT = 90
#: "<query> <op> <threshold>" (checked by test_deploy.py for every rule)
ALERT_EXPR = re.compile(r"(?s)(?P<query>.+?)\s*(>|<|>=|<=|==|!=)\s*[\d.e+-]+\s*")
PNG_OUT = os.environ.get("RECALL_DASHBOARD_PNG", "")
PNG_SECONDS = float(os.environ.get("RECALL_DASHBOARD_SECONDS", "180"))


def _load_render_dashboard() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_dashboard",
                                                  ROOT / "deploy/render_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rd = _load_render_dashboard()


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every panel query."""
    out = []
    for path in DASHBOARD_FILES:
        dash = json.loads(path.read_text())
        out += [(path.name, t.panel["title"], t.expr) for t in rd.targets(dash)]
    return out


def alert_queries() -> list[tuple[str, str]]:
    """(alert name, query part of its expression) of every alert rule."""
    rules = yaml.safe_load(ALERTS_FILE.read_text())
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                m = ALERT_EXPR.fullmatch(rule["expr"])
                assert m, rule["expr"]
                out.append((rule["alert"], m.group("query")))
    return out


# --- load ------------------------------------------------------------------------------------

@dataclass
class Phase:
    """``seconds`` of traffic at these rates (per second)."""

    seconds: float
    requests: float
    clicks: float
    bad: float = 0.5
    new_items: float = 0.0


#: the test's load: steady, every kind of message, a little bad input (gentle: the machine
#: that runs the tests may be busy with other work)
TEST_LOAD = [Phase(3600, requests=30, clicks=80, bad=1.0)]


def picture_load(seconds: float) -> list[Phase]:
    """Phases that make a dashboard worth looking at, scaled to ``seconds``: traffic
    rising, new items arriving, a click burst that builds lag which then drains, a
    producer sending bad messages for a while."""
    shares = [
        Phase(0.2, requests=15, clicks=40),
        Phase(0.2, requests=30, clicks=70, new_items=10),
        Phase(0.15, requests=45, clicks=250),
        Phase(0.15, requests=30, clicks=50, bad=6.0),
        Phase(0.3, requests=20, clicks=50),
    ]
    return [replace(p, seconds=p.seconds * seconds) for p in shares] + [TEST_LOAD[0]]


def bad_messages(settings: Settings, n: int) -> list[tuple[str, bytes]]:
    """The n-th kind of unusable message (cycling through the DLQ reasons)."""
    kinds = [
        (settings.topic_clicks, b"not json"),
        (settings.topic_clicks, orjson.dumps({"user_id": "u"})),
        (settings.topic_items, orjson.dumps({"item_id": f"bad-{n}", "vector": [1.0, 2.0]})),
        (settings.topic_items, orjson.dumps({"item_id": f"zero-{n}", "vector": [0.0] * DIM})),
        (settings.topic_requests, b"\xff\xfe"),
        (settings.topic_requests,
         orjson.dumps({"request_id": f"bad-k-{n}", "user_id": "u", "k": 0})),
    ]
    return [kinds[n % len(kinds)]]


@dataclass
class Load:
    """Traffic through the worker's topics, in a thread with its own event loop."""

    settings: Settings
    phases: list[Phase]
    seed: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    started: float = 0.0  # wall clock (time.time()) when the catalogue was in
    phases_done: float = 0.0  # wall clock when the last finite phase ended
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("items", "clicks", "requests", "bad", "responses"), 0))
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="recall-load", daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the fixture
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        from devtools.client import RecallClient
        from offline.generate import cluster_vectors

        rng = np.random.default_rng(self.seed)
        clusters = rng.integers(0, 40, size=N_ITEMS)
        ids = [f"item-{i}" for i in range(N_ITEMS)]
        by_cluster = [np.flatnonzero(clusters == c) for c in range(40)]
        taste = rng.integers(0, 40, size=N_USERS)
        client = RecallClient(self.settings)
        await client.start()
        try:
            await client.wait_ready(60)
            self.sent["items"] += await client.upsert_items(
                ids, cluster_vectors(clusters, DIM, seed=self.seed))
            self.started = time.time()
            self.ready.set()
            next_item = N_ITEMS
            for n, phase in enumerate(self.phases):
                if n == len(self.phases) - 1:
                    self.phases_done = time.time()
                t0 = time.monotonic()
                done = dict.fromkeys(("requests", "clicks", "bad", "new_items"), 0)
                while not self.stop.is_set() and time.monotonic() - t0 < phase.seconds:
                    elapsed = time.monotonic() - t0
                    due = {k: int(getattr(phase, k) * elapsed) - done[k] for k in done}
                    users = rng.integers(0, N_USERS, size=due["clicks"])
                    clicks = []
                    for u in users:
                        item = int(rng.choice(by_cluster[taste[u]]))
                        # every 20th click is sent twice with its event id: a duplicate
                        event = uuid.uuid4().hex
                        clicks.append({"user_id": f"user-{u}", "item_id": ids[item],
                                       "event_id": event})
                        if rng.random() < 0.05:
                            clicks.append(dict(clicks[-1]))
                    self.sent["clicks"] += await client.clicks(clicks)
                    for u in rng.integers(0, N_USERS + 50, size=due["requests"]):
                        await client.send_request(f"user-{u}", k=10)  # >= N_USERS: cold
                    self.sent["requests"] += due["requests"]
                    for i in range(due["bad"]):
                        for topic, value in bad_messages(self.settings, done["bad"] + i):
                            await client.send_raw(topic, b"bad", value)
                    self.sent["bad"] += due["bad"]
                    if due["new_items"]:
                        new = [f"item-{next_item + i}" for i in range(due["new_items"])]
                        vecs = cluster_vectors(rng.integers(0, 40, size=len(new)), DIM,
                                               seed=self.seed)
                        self.sent["items"] += await client.upsert_items(new, vecs)
                        next_item += len(new)
                    for k in done:
                        done[k] += due[k]
                    self.sent["responses"] += len(client.unclaimed)
                    client.unclaimed.clear()
                    await asyncio.sleep(0.05)
                if self.stop.is_set():
                    break
        finally:
            await client.stop()


# --- prometheus ------------------------------------------------------------------------------

def prometheus_config(metrics_port: int) -> dict[str, Any]:
    """deploy/prometheus.yml, pointed at the local worker and the repo's rule file."""
    cfg = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = SCRAPE
    cfg["global"]["evaluation_interval"] = SCRAPE
    assert [Path(f).name for f in cfg["rule_files"]] == [ALERTS_FILE.name]
    cfg["rule_files"] = [str(ALERTS_FILE)]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "recall-worker"]
    assert job.pop("dns_sd_configs")  # compose: the `worker` replicas by DNS
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    return cfg


def start_prometheus(cfg: dict[str, Any], workdir: Path) -> tuple[Service, str]:
    port = free_port()
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log_path = workdir / "prometheus.log"
    proc = subprocess.Popen(
        [shutil.which("prometheus") or "prometheus",
         f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        cwd=workdir, start_new_session=True)
    svc = Service("prometheus", proc, port, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 30, proc=proc)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LocalStackError("prometheus did not get ready:\n"
                                      + log_path.read_text()[-3000:])
            time.sleep(0.1)
    except BaseException:
        svc.stop()
        raise
    return svc, url


def wait_until(check: Any, what: str, timeout: float, load: Load) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if load.error is not None:
            raise RuntimeError(f"the load failed: {load.error!r}") from load.error
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.25)


@dataclass
class Live:
    prom: Any  # render_dashboard.Prometheus
    settings: Settings
    load: Load
    at: float  # query time: scraped MIN_SCRAPES times under load, the monitor measuring
    timings: dict[str, float]


@pytest.fixture(scope="module")
def live(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    workdir = Path(tmp_path_factory.mktemp("deploy-live"))
    # the contract's topic names, so labels in the picture read as in production
    # few recall samples a second, so the probes seldom move within the test: right after
    # a probe change the recall_lsh_recall gauge is NaN (nothing measured at the new T)
    # for up to 4 s, which an instant query of the panel can hit
    settings = isolated_settings(stack, "dl", own_topics=False, dim=DIM, topic_partitions=4,
                                 recall_sample_per_s=2.0)
    asyncio.run(create_topics(settings.kafka_bootstrap, settings.topics.values(),
                              settings.topic_partitions))
    worker_log = workdir / "worker.log"
    worker = start_worker(settings.environ(), worker_log, settings.metrics_port)
    prometheus: Service | None = None
    load = Load(settings, picture_load(PNG_SECONDS) if PNG_OUT else TEST_LOAD)
    try:
        prometheus, url = start_prometheus(prometheus_config(settings.metrics_port), workdir)
        prom = rd.Prometheus(url)
        timings["processes started"] = time.monotonic() - t0
        load.start()
        load.ready.wait(90)
        if load.error is not None:
            raise RuntimeError(f"the load failed: {load.error!r}") from load.error
        assert load.started, "the worker did not answer within 90s"
        timings["worker ready, catalogue sent"] = time.monotonic() - t0

        def scraped_under_load() -> bool:
            since = max(1, int(time.time() - load.started))
            got = prom.query(f'count_over_time(up{{job="recall-worker"}}[{since}s])')
            return bool(got) and float(got[0]["value"][1]) >= MIN_SCRAPES

        wait_until(scraped_under_load, f"{MIN_SCRAPES} scrapes under load", 60, load)
        if PNG_OUT:
            wait_until(lambda: load.phases_done, "the picture's load phases",
                       PNG_SECONDS * 3 + 60, load)
        timings["scraped under load"] = time.monotonic() - t0
        at = time.time()
        # the recall monitor's queries have data only once it measured samples (one batch
        # every few seconds at 2 samples/s; slower on a loaded machine, where instant
        # queries right after the scrapes above read NaN): a query time where they all
        # do. Past the deadline the tests query anyway and name what is missing.
        try:
            at = wait_until(lambda: monitor_measured(prom, load.started),
                            "the recall monitor's first measurements", MONITOR_WAIT, load)
        except TimeoutError as exc:
            print(f"\n{exc}: the tests query at {at:.0f}")
        timings["recall monitor measured"] = time.monotonic() - t0
        yield Live(prom, settings, load, at, timings)
    finally:
        load.join()
        for svc in (prometheus, worker):
            if svc is not None:
                svc.stop()
        print(f"\nload sent: {load.sent}; timings: "
              + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        print("worker log tail:\n" + worker_log.read_text()[-3000:])


def panel_expr(expr: str, at: float, started: float) -> str:
    """A panel's query as Grafana sends it for the time since the load started."""
    return rd.promql(expr, rate_interval=RATE_INTERVAL, interval=SCRAPE,
                     range_=f"{max(1, int(at - started))}s")


def monitor_measured(prom: Any, started: float) -> float | None:
    """A query time (now) at which every panel and alert query on the recall monitor's
    metrics has a finite value; None if some has not yet."""
    at = time.time()
    exprs = ([panel_expr(e, at, started) for _, _, e in dashboard_targets()
              if "lsh_recall" in e]
             + [e for _, e in alert_queries() if "lsh_recall" in e])
    return at if all(finite(prom.query(e, at=at)) for e in exprs) else None


def query(live: Live, expr: str) -> list[dict[str, Any]]:
    """Run ``expr`` at the fixture's query time; a parse error fails inside ``get``."""
    return live.prom.query(expr, at=live.at)


def finite(result: list[dict[str, Any]]) -> list[float]:
    values = [float(s["value"][1]) for s in result]
    return [v for v in values if np.isfinite(v)]


# --- tests -----------------------------------------------------------------------------------

def test_prometheus_scrapes_the_worker(live: Live) -> None:
    active = live.prom.get("/api/v1/targets")["activeTargets"]
    (target,) = [t for t in active if t["labels"]["job"] == "recall-worker"]
    assert target["health"] == "up", target
    assert target["scrapeUrl"] == f"http://127.0.0.1:{live.settings.metrics_port}/metrics"
    assert live.load.error is None
    assert live.load.sent["responses"] > 0, live.load.sent


def test_the_alert_rules_are_loaded_and_evaluate(live: Live) -> None:
    groups = live.prom.get("/api/v1/rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert set(rules) == {name for name, _ in alert_queries()}
    assert {g["file"] for g in groups} == {str(ALERTS_FILE)}
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))


@pytest.mark.parametrize(("dashboard", "panel", "expr"), dashboard_targets(),
                         ids=[f"{p}: {e[:60]}" for _, p, e in dashboard_targets()])
def test_every_dashboard_query_returns_data(live: Live, dashboard: str, panel: str,
                                            expr: str) -> None:
    result = query(live, panel_expr(expr, live.at, live.load.started))
    assert result, f"{dashboard} / {panel}: no data for {expr}"
    assert finite(result), f"{dashboard} / {panel}: only NaN/Inf for {expr}: {result}"


@pytest.mark.parametrize(("alert", "expr"), alert_queries(),
                         ids=[name for name, _ in alert_queries()])
def test_every_alert_query_returns_data(live: Live, alert: str, expr: str) -> None:
    result = query(live, expr)
    assert result, f"alert {alert}: no data for {expr}"
    assert finite(result), f"alert {alert}: only NaN/Inf for {expr}: {result}"


def test_the_dashboard_renders_from_prometheus(live: Live, tmp_path: Path) -> None:
    """deploy/render_dashboard.py draws every panel with data (and, when asked, writes the
    README's picture)."""
    out = Path(PNG_OUT) if PNG_OUT else tmp_path / "dashboard.png"
    if not out.is_absolute():
        out = ROOT / out
    start = live.load.started
    for path in DASHBOARD_FILES:
        dash = json.loads(path.read_text())
        drawn = rd.render(dash, live.prom, start, live.at, out, step=1.0 if not PNG_OUT else 2.0,
                          rate_interval="10s" if PNG_OUT else RATE_INTERVAL)
        empty = [title for title, n in drawn.items() if n == 0]
        assert not empty, f"{path.name}: panels without data: {empty}"
        assert out.stat().st_size > 10_000
