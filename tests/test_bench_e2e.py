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
}


def test_bench_e2e_smoke(capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch) -> None:
    # a metrics port of its own, whatever the environment says
    monkeypatch.delenv("RECALL_METRICS_PORT", raising=False)
    plot = tmp_path / "latency.png"
    status = main(["bench", "e2e", "--items", "2000", "--users", "200", "--rate", "50",
                   "--click-rate", "100", "--seconds", "3", "--freshness", "5",
                   "--plot", str(plot)])
    assert status == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    figures = json.loads(lines[-1])
    assert set(figures) >= KEYS
    assert figures["requests_sent"] == 150
    assert figures["lost"] == 0
    assert figures["responses"] == figures["requests_sent"]
    assert figures["errors"] == 0
    assert figures["freshness_missed"] == 0
    assert figures["e2e_p50_ms"] is not None and figures["e2e_p50_ms"] > 0
    assert figures["worker_rss_peak_mb"] > 0
    # the broker's own floor is measured on the local stack, and a recall costs more
    assert 0 < figures["broker_rtt_p50_ms"] < figures["e2e_p50_ms"]
    assert plot.stat().st_size > 0
