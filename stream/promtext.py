"""Reading a worker's ``/metrics``: scraping, histogram quantiles, sums of samples.

Used by ``recall demo`` and ``recall bench e2e`` (worker-side figures next to the client's)
and by the integration tests.
"""

from __future__ import annotations

import urllib.request


def scrape(url: str) -> str:
    """The exposition text at ``url`` ("" when it cannot be read)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def metrics_url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}/metrics"


def parse_histogram(text: str, name: str) -> tuple[list[float], list[float], float, float]:
    """(bucket bounds, cumulative counts, sum, count) of an unlabelled histogram."""
    bounds: list[float] = []
    counts: list[float] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bounds.append(float("inf") if le == "+Inf" else float(le))
            counts.append(float(line.rsplit(" ", 1)[1]))
        elif line.startswith(f"{name}_sum "):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count "):
            count = float(line.rsplit(" ", 1)[1])
    return bounds, counts, total, count


def quantile_from_buckets(bounds: list[float], counts: list[float], q: float) -> float | None:
    """PromQL's histogram_quantile: linear within the bucket holding rank q * count."""
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 1)
        prev_bound, prev_count = bound, count
    return prev_bound


def histogram_delta(before: str, after: str, name: str) -> dict[str, float | None]:
    """p50/p95/p99 and mean of what a histogram observed between two scrapes."""
    b0, c0, s0, n0 = parse_histogram(before, name)
    b1, c1, s1, n1 = parse_histogram(after, name)
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


def metric_value(text: str, name: str) -> float:
    """Sum of the samples of ``name`` (all label sets)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def histogram_quantile(text: str, name: str, q: float) -> float | None:
    """The q-quantile of everything an unlabelled histogram in ``text`` observed."""
    bounds, counts, _, _ = parse_histogram(text, name)
    return quantile_from_buckets(bounds, counts, q)
