"""Reading a worker's ``/metrics``: scraping, sums of samples, histogram quantiles.

Parsing is ``prometheus_client.parser``'s; what it lacks is PromQL's
``histogram_quantile`` (linear interpolation within the bucket holding the rank), done
here over the parsed buckets. Used by ``recall demo``, ``recall bench e2e`` and the
integration tests.
"""

from __future__ import annotations

import math
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> str:
    """The exposition text at ``url`` ("" when it cannot be read)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def metrics_url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}/metrics"


def _samples(text: str, name: str, where: dict[str, str] | None = None
             ) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of every sample of ``name`` (a family name, or a
    counter's ``_total`` sample name) whose labels include ``where``."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            named = s.name == name or (family.name == name
                                       and s.name in (name, f"{name}_total"))
            if named and (not where or all(s.labels.get(k) == v for k, v in where.items())):
                out.append((s.name, s.labels, s.value))
    return out


def metric_value(text: str, name: str, where: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` over all label sets (those including ``where``), 0
    when absent."""
    return sum(value for _, _, value in _samples(text, name, where))


def parse_histogram(text: str, name: str, where: dict[str, str] | None = None
                    ) -> tuple[list[float], list[float], float, float]:
    """(bucket bounds, cumulative counts, sum, count) of a histogram, summed over its
    label sets (those including ``where``)."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for sample, labels, value in _samples(text, f"{name}_bucket", where):
        del sample
        bound = float(labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    total = metric_value(text, f"{name}_sum", where)
    count = metric_value(text, f"{name}_count", where)
    bounds = sorted(buckets)
    return bounds, [buckets[b] for b in bounds], total, count


def quantile_from_buckets(bounds: list[float], counts: list[float], q: float) -> float | None:
    """PromQL's histogram_quantile: linear within the bucket holding rank q * count."""
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 1)
        prev_bound, prev_count = bound, count
    return prev_bound


def histogram_delta(before: str, after: str, name: str, where: dict[str, str] | None = None
                    ) -> dict[str, float | None]:
    """p50/p95/p99 and mean of what a histogram (its label sets including ``where``)
    observed between two scrapes."""
    b0, c0, s0, n0 = parse_histogram(before, name, where)
    b1, c1, s1, n1 = parse_histogram(after, name, where)
    if not b1:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "count": 0}
    if b0 != b1:
        c0 = [0.0] * len(c1)
        s0 = n0 = 0.0
    counts = [a - b for a, b in zip(c1, c0, strict=True)]
    n = n1 - n0
    return {"p50": quantile_from_buckets(b1, counts, 0.5),
            "p95": quantile_from_buckets(b1, counts, 0.95),
            "p99": quantile_from_buckets(b1, counts, 0.99),
            "mean": (s1 - s0) / n if n > 0 else None, "count": n}


def histogram_quantile(text: str, name: str, q: float) -> float | None:
    """The q-quantile of everything a histogram in ``text`` observed."""
    bounds, counts, _, _ = parse_histogram(text, name)
    return quantile_from_buckets(bounds, counts, q)
