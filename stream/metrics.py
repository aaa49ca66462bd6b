"""Prometheus metrics of the worker (names fixed by CONTRACT.md and the Grafana dashboards).

All metrics live in one :class:`Metrics` object with its own registry, so tests can build
several workers in one process; :meth:`Metrics.serve` exposes them on ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: latency buckets, seconds: fine enough to read p50/p99 between 0.5 ms and 1 s
LATENCY_BUCKETS = (
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015,
    0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
)
CANDIDATE_BUCKETS = (0, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000, 300000, 1e6)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    """The worker's metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter("recall_requests", "responses sent", ["status"], registry=r)
        self.request_duration = Histogram(
            "recall_request_duration_seconds",
            "request read to response sent, inside the worker",
            buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end = Histogram(
            "recall_end_to_end_seconds",
            "the request record's Kafka timestamp to response sent",
            buckets=LATENCY_BUCKETS, registry=r)
        self.request_stage = Histogram(
            "recall_request_stage_seconds",
            "where a request's time goes outside the worker's own work: kafka = its Kafka "
            "timestamp to the worker's fetch returning it (producer, broker, fetch wait, and "
            "the client's prefetch buffer while the event loop was busy), "
            "queued = fetch returned to its handling begun (the consumer's lock: a commit "
            "settling, a revocation), delivery "
            "= its response handed to the producer to the broker's acknowledgement",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.candidates = Histogram(
            "recall_candidates", "candidates re-ranked per request",
            buckets=CANDIDATE_BUCKETS, registry=r)
        self.clicks = Counter("recall_clicks", "clicks applied", registry=r)
        self.click_duplicates = Counter(
            "recall_click_duplicates", "clicks not applied again (event_id or offset seen)",
            registry=r)
        self.items = Counter("recall_items", "item upserts and deletes applied", ["op"],
                             registry=r)
        self.index_items = Gauge("recall_index_items", "items in the index", registry=r)
        self.invalid = Counter("recall_invalid_messages", "messages sent to the DLQ",
                               ["topic", "reason"], registry=r)
        self.consumer_lag = Gauge(
            "recall_consumer_lag", "messages behind the end offset", ["topic", "partition"],
            registry=r)
        self.redis_duration = Histogram(
            "recall_redis_duration_seconds", "Redis pipeline round trips", ["op"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("recall_batch_size", "messages handled together",
                                    ["topic"], buckets=BATCH_BUCKETS, registry=r)
        self.index_version = Gauge("recall_index_version", "index version served", registry=r)
        self.index_rebuild = Gauge("recall_index_rebuild_seconds",
                                   "duration of the last index rebuild from Redis", registry=r)
        self.loop_lag = Histogram(
            "recall_event_loop_lag_seconds",
            "how late the worker's event loop ran a timer (sampled 10 times a second); "
            "high = the worker is saturated and requests queue",
            buckets=LATENCY_BUCKETS, registry=r)
        self.gc_pause = Histogram(
            "recall_gc_pause_seconds",
            "how long each collection of Python's cyclic GC held the thread that ran it, "
            "mostly the event loop's (stream.gcpause)", ["generation"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.users_cached = Gauge("recall_users_cached", "user states held in memory",
                                  registry=r)
        self.users_evicted = Counter(
            "recall_users_evicted", "user states dropped from memory to keep within "
            "RECALL_USER_CACHE_USERS (read from Redis again when next used)", registry=r)
        # live recall monitor (stream/watch.py): sampled LSH answers against exact search
        self.lsh_recall = Gauge(
            "recall_lsh_recall", "recall@k of sampled LSH answers against exact search: "
            "mean of the last samples at the probes now served (NaN until there are any)",
            registry=r)
        self.lsh_recall_low = Gauge(
            "recall_lsh_recall_low", "lower end of recall_lsh_recall's 95% interval",
            registry=r)
        self.lsh_recall_high = Gauge(
            "recall_lsh_recall_high", "upper end of recall_lsh_recall's 95% interval",
            registry=r)
        self.lsh_recall_samples = Gauge(
            "recall_lsh_recall_samples", "samples behind recall_lsh_recall (its interval "
            "narrows as 1/sqrt of this)", registry=r)
        self.lsh_probes_below = Gauge(
            "recall_lsh_probes_below", "the next lower probes per table the monitor also "
            "answers its samples with (0: none)", registry=r)
        self.lsh_recall_below = Gauge(
            "recall_lsh_recall_below", "recall@k the same samples get at "
            "recall_lsh_probes_below (NaN until there are any)", registry=r)
        self.lsh_recall_below_low = Gauge(
            "recall_lsh_recall_below_low", "lower end of recall_lsh_recall_below's 95% "
            "interval: above the target, the monitor steps down to those probes", registry=r)
        self.lsh_recall_below_samples = Gauge(
            "recall_lsh_recall_below_samples", "samples behind recall_lsh_recall_below",
            registry=r)
        self.lsh_sample_rate = Gauge(
            "recall_lsh_recall_sample_rate", "LSH answers a second the monitor compares: "
            "RECALL_RECALL_SAMPLE_PER_S, lowered to fit RECALL_RECALL_SAMPLE_CPU",
            registry=r)
        self.lsh_exact_seconds = Counter(
            "recall_lsh_recall_exact_seconds", "CPU seconds of the monitor's exact searches "
            "(in a thread; its rate is the fraction of a core they use)", registry=r)
        self.lsh_recall_queries = Counter(
            "recall_lsh_recall_queries", "LSH answers compared with exact search", registry=r)
        self.lsh_recall_found = Counter(
            "recall_lsh_recall_found", "sum over compared answers of the fraction of the "
            "exact top-k found (rate / queries rate = recall)", registry=r)
        self.lsh_target = Gauge("recall_lsh_recall_target", "RECALL_TARGET_RECALL",
                                registry=r)
        self.lsh_probes = Gauge("recall_lsh_probes", "LSH probes per table served",
                                registry=r)
        self.lsh_retunes = Counter(
            "recall_lsh_retunes", "in-memory index rebuilds with new LSH parameters",
            ["reason"], registry=r)
        self.lsh_retunes_postponed = Counter(
            "recall_lsh_retunes_postponed", "new LSH parameters not moved to because the "
            "new table would not fit the memory budget (RECALL_MEMORY_LIMIT_MB)",
            ["reason"], registry=r)
        self.lsh_cost_tune_seconds = Counter(
            "recall_lsh_cost_tune_seconds", "CPU seconds of background re-tunes looking "
            "for a cheaper layout (RECALL_RETUNE_COST_CPU)", registry=r)
        self.lsh_recall.set(float("nan"))
        self.lsh_recall_low.set(float("nan"))
        self.lsh_recall_high.set(float("nan"))
        self.lsh_recall_below.set(float("nan"))
        self.lsh_recall_below_low.set(float("nan"))
        for reason in ("size", "recall", "cost"):
            self.lsh_retunes.labels(reason)
            self.lsh_retunes_postponed.labels(reason)
        for status in ("ok", "invalid", "error"):
            self.requests.labels(status)
        for op in ("upsert", "delete"):
            self.items.labels(op)
        for generation in ("0", "1", "2"):
            self.gc_pause.labels(generation)
        for stage in ("kafka", "queued", "delivery"):
            self.request_stage.labels(stage)

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[str, int]:
        """Serve ``/metrics`` over HTTP in a background thread; the address bound."""
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        host, bound = server.server_address[:2]
        return str(host), int(bound)
