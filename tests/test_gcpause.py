"""The worker's GC pause histogram (stream.gcpause): every collection is timed, by
generation, and the GC callback itself touches no metric (it can run inside any
allocation, also one made while a metric's lock is held)."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Histogram

from stream.gcpause import GCPauses


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("t_gc_pause_seconds", "test", ["generation"],
                               registry=registry)


def _count(registry: CollectorRegistry, generation: str) -> float:
    return registry.get_sample_value("t_gc_pause_seconds_count",
                                     {"generation": generation}) or 0.0


def test_each_collection_is_timed_by_generation() -> None:
    registry, hist = _histogram()
    pauses = GCPauses(hist)
    pauses.install()
    try:
        gc.collect()
        gc.collect(0)
    finally:
        pauses.remove()
    assert pauses.publish() >= 2
    assert _count(registry, "2") >= 1 and _count(registry, "0") >= 1
    total = registry.get_sample_value("t_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None and total > 0


def test_the_callback_leaves_the_metric_to_publish() -> None:
    """Collections are queued, not observed, until the event loop publishes them."""

    touched = []

    class Untouchable:  # (an exception in a GC callback is only printed: record it)
        def labels(self, *args: str) -> None:
            touched.append(args)

    pauses = GCPauses(Untouchable())
    pauses.install()
    try:
        gc.collect()
    finally:
        pauses.remove()
    assert not touched
    registry, hist = _histogram()
    pauses.histogram = hist
    assert pauses.publish() >= 1 and _count(registry, "2") >= 1


def test_removed_it_times_nothing_more() -> None:
    registry, hist = _histogram()
    pauses = GCPauses(hist)
    pauses.install()
    pauses.install()  # once only
    gc.collect()
    pauses.remove()
    pauses.publish()
    gc.collect()
    assert pauses.publish() == 0 and _count(registry, "2") == 1
