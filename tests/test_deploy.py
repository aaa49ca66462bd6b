"""Consistency of the Docker deployment: compose file, Dockerfile, Prometheus and Grafana files.

Pure and fast (no Docker engine here): every file a service mounts exists, ports and hosts
agree between the compose file, the scrape config and the Grafana datasource, every dashboard
panel uses the provisioned datasource uid, images are pinned, the alert rules pass
``promtool`` (check + unit tests) and the topic-init script creates what the worker needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from recall.config import ENV_NAMES, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROMETHEUS_CFG = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
ALERTS = yaml.safe_load((ROOT / "deploy/alerts.yml").read_text())
DATASOURCES = yaml.safe_load(
    (ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
PROVIDERS = yaml.safe_load(
    (ROOT / "grafana/provisioning/dashboards/recall.yml").read_text())["providers"]
DASHBOARDS = {
    p.name: json.loads(p.read_text()) for p in sorted((ROOT / "grafana/dashboards").glob("*.json"))
}
#: services that run once and exit; every other service needs a healthcheck
ONE_SHOT = {"topics", "demo"}
#: metrics the dashboards must show (CONTRACT.md and the worker's metric list)
WORKER_METRICS = [
    "recall_requests_total", "recall_request_duration_seconds", "recall_end_to_end_seconds",
    "recall_candidates", "recall_clicks_total", "recall_items_total", "recall_index_items",
    "recall_invalid_messages_total", "recall_click_duplicates_total", "recall_consumer_lag",
    "recall_redis_duration_seconds", "recall_batch_size", "recall_index_version",
    "recall_index_rebuild_seconds", "recall_users_cached", "recall_users_evicted_total",
    "recall_event_loop_lag_seconds", "recall_gc_pause_seconds",
    "recall_lsh_recall", "recall_lsh_recall_low", "recall_lsh_recall_found_total",
    "recall_lsh_recall_queries_total", "recall_lsh_recall_target", "recall_lsh_probes",
    "recall_lsh_recall_below",
    "recall_lsh_retunes_total",
    "recall_lsh_cost_tune_seconds_total", "recall_lsh_retunes_postponed_total",
]


def mounts(service: str) -> dict[str, Path]:
    """Container path -> repo path of the service's bind mounts (named volumes left out)."""
    out = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith("."):
            out[target] = (ROOT / source).resolve()
    return out


def container_to_repo(service: str, container_path: str) -> Path:
    """The repo file a container path of ``service`` shows (through a file or dir mount)."""
    for target, source in mounts(service).items():
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1:]
    raise AssertionError(f"{service}: {container_path} is not mounted from the repo")


def env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


def resolve_default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def published_ports(service: str) -> dict[int, int]:
    """Container port -> host port (the first of a host port range)."""
    out = {}
    for spec in SERVICES[service].get("ports", []):
        host, container = str(spec).rsplit(":", 1)
        out[int(container)] = int(host.rsplit(":", 1)[-1].split("-")[0])
    return out


def all_targets() -> list[tuple[str, str, dict[str, Any]]]:
    return [(name, panel["title"], t) for name, dash in DASHBOARDS.items()
            for panel in dash["panels"] for t in panel.get("targets", [])]


# --- compose -----------------------------------------------------------------------------

def test_compose_has_the_system() -> None:
    assert {"kafka", "topics", "redis", "worker", "prometheus", "grafana", "demo"} <= set(SERVICES)


def test_images_are_pinned() -> None:
    for name, svc in SERVICES.items():
        image = svc.get("image")
        assert image, f"{name}: no image (give built images a name and version too)"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image}"
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")


def test_the_projects_image_is_built_not_pulled() -> None:
    """Services running the project's image build it: it is on no registry, and compose
    pulls a missing image of a service without ``build`` even if another one builds it."""
    image = SERVICES["worker"]["image"]
    users = [name for name, svc in SERVICES.items() if svc["image"] == image]
    assert {"worker", "demo"} <= set(users)
    for name in users:
        assert SERVICES[name].get("build") == ".", name


def test_dockerfile_base_is_pinned_and_runs_recall() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for base in re.findall(r"^FROM\s+(\S+)", text, re.M):
        assert re.match(r"python:3\.\d+\.\d+-slim", base), base
    assert 'ENTRYPOINT ["recall"]' in text
    assert re.search(rf"^EXPOSE {Settings().metrics_port}$", text, re.M)
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
    assert not {"recall", "stream", "offline", "pyproject.toml"} & set(ignored)


def test_every_mounted_file_exists() -> None:
    for name in SERVICES:
        for target, source in mounts(name).items():
            assert source.exists(), f"{name}: mounts missing {source} at {target}"
            assert ROOT in source.parents, f"{name}: {source} is outside the repo"


def test_healthchecks_and_start_order() -> None:
    for name, svc in SERVICES.items():
        if name not in ONE_SHOT:
            assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    needs = SERVICES["worker"]["depends_on"]
    assert needs["kafka"]["condition"] == "service_healthy"
    assert needs["redis"]["condition"] == "service_healthy"
    assert needs["topics"]["condition"] == "service_completed_successfully"
    assert SERVICES["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert SERVICES["demo"]["depends_on"]["worker"]["condition"] == "service_healthy"
    assert SERVICES["demo"]["profiles"] == ["demo"]
    for name, svc in SERVICES.items():
        if name != "demo":
            assert "profiles" not in svc, f"{name} must start with a plain `docker compose up`"


def test_kafka_is_kraft_and_reachable_as_configured() -> None:
    kafka = env("kafka")
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]
    assert "KAFKA_ZOOKEEPER_CONNECT" not in kafka
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    advertised = dict(
        reversed(item.split("://")) for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    for name in ("worker", "topics", "demo"):
        assert env(name)["KAFKA_BOOTSTRAP"] in advertised, name
    # the host listener is published on the same port it advertises
    host = [a for a in advertised if a.startswith("localhost:")]
    assert host and int(host[0].split(":")[1]) in published_ports("kafka").values()
    # log dir is the image's prepared (appuser-writable) volume path
    assert kafka["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert any(v.endswith(":/var/lib/kafka/data") for v in SERVICES["kafka"]["volumes"])


def test_redis_is_append_only_and_persistent() -> None:
    cmd = SERVICES["redis"]["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in SERVICES["redis"]["volumes"])
    host = env("worker")["REDIS_URL"].split("//")[1].split(":")[0]
    assert host == "redis"


def test_worker_env_uses_only_known_settings() -> None:
    known = set(ENV_NAMES.values())
    for name in ("worker", "topics", "demo"):
        unknown = set(env(name)) - known
        assert not unknown, f"{name}: not settings of recall/config.py: {unknown}"
    settings = Settings.from_env({k: resolve_default(v) for k, v in env("worker").items()})
    assert settings.metrics_port in published_ports("worker")


def test_worker_and_demo_commands_parse() -> None:
    from recall.cli import build_parser

    parser = build_parser()
    for name in ("worker", "demo"):
        args = parser.parse_args(SERVICES[name]["command"])
        assert callable(args.func), name


# --- topics --------------------------------------------------------------------------------

FAKE_TOPICS_SH = """#!/usr/bin/env bash
# stand-in for kafka-topics.sh: records --create calls, answers --describe from the log
log="$FAKE_LOG"
topic=""; partitions=""; mode=""
while [ $# -gt 0 ]; do
  case "$1" in
    --topic) topic="$2"; shift;;
    --partitions) partitions="$2"; shift;;
    --create) mode=create;;
    --describe) mode=describe;;
  esac
  shift
done
if [ "$mode" = create ]; then
  grep -q "^$topic " "$log" 2>/dev/null || echo "$topic $partitions" >> "$log"
else
  n=$(grep "^$topic " "$log" | cut -d' ' -f2)
  printf 'Topic: %s\\tTopicId: x\\tPartitionCount: %s\\tReplicationFactor: 1\\n' "$topic" "$n"
fi
"""


def run_create_topics(tmp_path: Path, extra_env: dict[str, str],
                      existing: str = "") -> tuple[subprocess.CompletedProcess, dict[str, int]]:
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(FAKE_TOPICS_SH)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "topics.log"
    log.write_text(existing)
    environ = {"PATH": os.environ["PATH"], "KAFKA_TOPICS_SH": str(fake), "FAKE_LOG": str(log)}
    environ.update({k: resolve_default(v) for k, v in env("topics").items()})
    environ.update(extra_env)
    proc = subprocess.run(["bash", str(ROOT / "deploy/create-topics.sh")], env=environ,
                          capture_output=True, text=True, timeout=30)
    created = dict(line.split() for line in log.read_text().splitlines())
    return proc, {k: int(v) for k, v in created.items()}


def test_topics_script_creates_the_workers_topics(tmp_path: Path) -> None:
    proc, created = run_create_topics(tmp_path, {"RECALL_TOPIC_PARTITIONS": "6"})
    assert proc.returncode == 0, proc.stderr
    assert set(created) == set(Settings().topics.values())
    assert set(created.values()) == {6}
    # run again: nothing changes (--if-not-exists), still fine
    proc, again = run_create_topics(tmp_path, {"RECALL_TOPIC_PARTITIONS": "6"},
                                    existing="".join(f"{t} {n}\n" for t, n in created.items()))
    assert proc.returncode == 0, proc.stderr
    assert again == created


def test_topics_default_partitions_are_the_workers(tmp_path: Path) -> None:
    proc, created = run_create_topics(tmp_path, {})
    assert proc.returncode == 0, proc.stderr
    assert set(created.values()) == {Settings().topic_partitions}


def test_topics_script_refuses_unequal_co_partitioned_topics(tmp_path: Path) -> None:
    proc, _ = run_create_topics(tmp_path, {}, existing="clicks 8\n")
    assert proc.returncode == 1
    assert "must be equal" in proc.stderr


def test_topics_service_runs_the_script() -> None:
    svc = SERVICES["topics"]
    script = svc["entrypoint"][-1]
    assert container_to_repo("topics", script) == ROOT / "deploy/create-topics.sh"
    assert svc["image"] == SERVICES["kafka"]["image"]  # has kafka-topics.sh


# --- prometheus ----------------------------------------------------------------------------

def test_prometheus_scrapes_every_worker_replica() -> None:
    jobs = {j["job_name"]: j for j in PROMETHEUS_CFG["scrape_configs"]}
    job = jobs["recall-worker"]
    port = Settings.from_env(
        {k: resolve_default(v) for k, v in env("worker").items()}).metrics_port
    # found through Docker's DNS (one A record per replica), not a fixed host:port
    assert "static_configs" not in job
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["names"][0] in SERVICES
    assert sd["type"] == "A" and sd["port"] == port
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_the_worker_can_be_scaled() -> None:
    """`docker compose up --scale worker=N`: no fixed name, a host port range."""
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    (spec,) = worker["ports"]
    host, container = str(spec).rsplit(":", 1)
    first, _, last = host.rsplit(":", 1)[-1].partition("-")
    assert int(container) == Settings().metrics_port == int(first)
    assert last and int(last) > int(first), "a single host port allows one replica only"


def test_prometheus_files_are_mounted() -> None:
    cmd = SERVICES["prometheus"]["command"]
    config = next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.file="))
    assert container_to_repo("prometheus", config) == ROOT / "deploy/prometheus.yml"
    config_dir = str(Path(config).parent)
    for rule_file in PROMETHEUS_CFG["rule_files"]:
        path = rule_file if rule_file.startswith("/") else f"{config_dir}/{rule_file}"
        assert container_to_repo("prometheus", path).exists(), rule_file


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in ALERTS["groups"] for r in g["rules"] if "alert" in r]


def test_alerts_cover_latency_dlq_and_lag() -> None:
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    assert any("histogram_quantile(0.99" in e and "end_to_end" in e for e in exprs.values())
    assert any("recall_invalid_messages_total" in e for e in exprs.values())
    assert any("recall_consumer_lag" in e for e in exprs.values())
    assert any("recall_lsh_recall" in e for e in exprs.values())
    for rule in alert_rules():
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        # "<query> <op> <threshold>": the live test runs the query part
        assert re.fullmatch(r"(?s).+\s(>|<|>=|<=|==|!=)\s*[\d.e+-]+\s*", rule["expr"]), rule


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: run scripts/install-system.sh")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for args in (["check", "rules", "deploy/alerts.yml"],
                 ["test", "rules", "deploy/alerts.test.yml"]):
        proc = subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing: run scripts/install-system.sh")
def test_promtool_checks_the_scrape_config(tmp_path: Path) -> None:
    """deploy/prometheus.yml as the container sees it (rule file at its mounted path)."""
    cfg = dict(PROMETHEUS_CFG)
    cfg["rule_files"] = [str(container_to_repo("prometheus", f)) for f in cfg["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- grafana -------------------------------------------------------------------------------

def test_grafana_datasource_points_at_prometheus() -> None:
    (ds,) = DATASOURCES
    assert ds["type"] == "prometheus"
    host, port = ds["url"].split("//")[1].split(":")
    assert host == "prometheus" and int(port) in published_ports("prometheus")
    scrape = PROMETHEUS_CFG["global"]["scrape_interval"]
    assert ds["jsonData"]["timeInterval"] == scrape  # so $__rate_interval covers 4 scrapes
    assert (container_to_repo("grafana", "/etc/grafana/provisioning/datasources")
            == ROOT / "grafana/provisioning/datasources")


def test_dashboards_are_provisioned_from_the_repo() -> None:
    (provider,) = PROVIDERS
    assert container_to_repo("grafana", provider["options"]["path"]) == ROOT / "grafana/dashboards"
    assert (container_to_repo("grafana", "/etc/grafana/provisioning/dashboards")
            == ROOT / "grafana/provisioning/dashboards")
    home = env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert container_to_repo("grafana", home).exists()
    assert DASHBOARDS


def test_every_panel_uses_the_provisioned_datasource() -> None:
    uid = DATASOURCES[0]["uid"]
    for name, dash in DASHBOARDS.items():
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == uid, (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid, (name, panel["title"])


def test_panels_are_documented_and_laid_out() -> None:
    for name, dash in DASHBOARDS.items():
        assert dash["uid"] and dash["title"]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for panel in dash["panels"]:
            assert len(panel.get("description", "")) > 30, panel["title"]
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
            assert panel["targets"], panel["title"]
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, panel["title"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{panel['title']} overlaps another panel"
            cells |= mine


def test_dashboards_show_every_worker_metric() -> None:
    exprs = " ".join(t["expr"] for _, _, t in all_targets())
    missing = [m for m in WORKER_METRICS if m not in exprs]
    assert not missing, missing
    titles = " ".join(p["title"].lower() for d in DASHBOARDS.values() for p in d["panels"])
    for needed in ("end-to-end", "in-worker", "status", "clicks", "candidates", "index",
                   "dlq", "lag", "redis", "lsh recall", "probes"):
        assert needed in titles, needed
