"""Reading Prometheus text: the figures the demo and the e2e benchmark print."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from devtools.scrape import histogram_delta, histogram_quantile, metric_value


def exposition(values: list[float]) -> tuple[str, CollectorRegistry, Histogram]:
    reg = CollectorRegistry()
    h = Histogram("lat_seconds", "x", buckets=(0.001, 0.002, 0.004, 0.008), registry=reg)
    c = Counter("req", "x", ["status"], registry=reg)
    for v in values:
        h.observe(v)
    c.labels("ok").inc(3)
    c.labels("invalid").inc(2)
    return generate_latest(reg).decode(), reg, h


def test_quantiles_interpolate_within_buckets_like_promql() -> None:
    text, _, _ = exposition([0.0015] * 50 + [0.003] * 50)
    # rank 50 of 100 is the top of the (0.001, 0.002] bucket; rank 99 is in (0.002, 0.004]
    assert histogram_quantile(text, "lat_seconds", 0.5) == pytest.approx(0.002)
    assert histogram_quantile(text, "lat_seconds", 0.99) == pytest.approx(0.002 + 0.002 * 49 / 50)
    assert histogram_quantile(text, "missing", 0.5) is None


def test_sums_over_label_sets_and_deltas_between_scrapes() -> None:
    before, reg, h = exposition([0.0015] * 10)
    assert metric_value(before, "req_total") == 5
    for _ in range(10):
        h.observe(0.006)
    after = generate_latest(reg).decode()
    delta = histogram_delta(before, after, "lat_seconds")
    assert delta["count"] == 10
    assert delta["mean"] == pytest.approx(0.006)
    assert 0.004 < delta["p50"] <= 0.008


def test_one_label_set_of_a_histogram_is_read_apart() -> None:
    reg = CollectorRegistry()
    h = Histogram("stage_seconds", "x", ["stage"], buckets=(0.001, 0.01, 0.1), registry=reg)
    before = generate_latest(reg).decode()
    for _ in range(10):
        h.labels("kafka").observe(0.05)
        h.labels("queued").observe(0.0005)
    after = generate_latest(reg).decode()
    kafka = histogram_delta(before, after, "stage_seconds", {"stage": "kafka"})
    assert kafka["count"] == 10 and kafka["mean"] == pytest.approx(0.05)
    assert histogram_delta(before, after, "stage_seconds", {"stage": "queued"})["p99"] < 0.001
    assert histogram_delta(before, after, "stage_seconds")["count"] == 20  # all label sets
