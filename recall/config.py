"""All settings, read from environment variables in one place.

Every other module takes a :class:`Settings` (or reads ``Settings.from_env()``);
nothing else reads ``os.environ``. Names and defaults follow ../shared/CONTRACT.md;
the README lists every variable.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    # --- contract settings -------------------------------------------------
    kafka_bootstrap: str = "localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    dim: int = 64
    metrics_port: int = 9108
    topic_clicks: str = "clicks"
    topic_items: str = "items"
    topic_requests: str = "recall-requests"
    topic_responses: str = "recall-responses"
    topic_dlq: str = "recall-dlq"
    user_window: int = 50
    # --- extra settings ----------------------------------------------------
    #: prefix of every Redis key this project writes
    redis_prefix: str = "recall"
    #: half-life of the time-decayed user mean, seconds; 0 = plain window mean
    user_decay_half_life: float = 0.0
    #: LSH parameters; 0 / "" = use the tuned ones stored with the index, else defaults
    lsh_family: str = "pstable"
    lsh_tables: int = 0
    lsh_hashes: int = 0
    lsh_width: float = 0.0
    lsh_probes: int = 0
    lsh_seed: int = 42
    #: partitions used when the worker creates its topics
    topic_partitions: int = 4
    #: largest message accepted, bytes (bigger ones go to the DLQ)
    max_message_bytes: int = 1_000_000
    #: faust application id = Kafka consumer group of the workers
    app_id: str = "recall-worker"
    #: host:port of faust's own web server (it binds 0.0.0.0:6066 unless told)
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: recall-requests consumer fetch wait, ms (faust hardcodes 1500; we lower it for
    #: latency: Tansu holds an empty fetch about half of this even when a record arrives,
    #: so a request can wait that; each idle fetch costs the broker and the worker CPU:
    #: 5 ms cost ~0.03 of a core more in each than 10: docs/benchmarks.md, "How the request
    #: path was tuned")
    fetch_max_wait_ms: int = 10
    #: a recall-requests partition is fetched at most once per this many ms (paused after
    #: a fetch, stream.requests); 0: off. Each fetch costs the broker CPU (on Tansu's
    #: memory engine more the more batches a partition holds): fewer, bigger fetches
    #: cost it and the worker less, but a request waits up to this much longer. Off by
    #: default: at 20 ms the capacity ramp's latency rose at every rate (README "Capacity")
    fetch_interval_ms: int = 0
    #: clicks consumer fetch wait, ms (bounds how late a click shows; each idle fetch
    #: costs the broker CPU, so not as short as the requests')
    clicks_fetch_wait_ms: int = 50
    #: items consumer fetch wait, ms (items need order, not milliseconds)
    items_fetch_wait_ms: int = 100
    #: how long an applied click's event_id is remembered, seconds
    event_id_ttl_seconds: int = 7 * 24 * 3600
    #: Kafka security (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL) and SASL credentials
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    #: consumer-group session timeout, seconds (short in tests for fast readiness)
    kafka_session_timeout: float = 10.0
    log_level: str = "INFO"
    #: address the /metrics endpoint binds: all interfaces (what a scraper in another
    #: container needs); the local stack uses loopback
    metrics_host: str = "0.0.0.0"
    #: interest vectors per user (1 = the plain window mean; M > 1: one per recent session,
    #: each queried through the index and the results merged by score; recall.users)
    user_interests: int = 1
    #: a gap longer than this (seconds) between a user's clicks starts a new session
    user_session_gap: float = 1800.0
    # --- live recall monitor (stream/watch.py) ------------------------------
    #: recall@k the worker holds by adjusting probes (and re-tuning when they cannot)
    target_recall: float = 0.95
    #: most LSH answers compared with exact search per second (0 = monitor off); high
    #: enough that the CPU budget below sets the rate on large catalogues (~8/s at 1M)
    recall_sample_per_s: float = 20.0
    #: fraction of one core the monitor's exact searches may take: the sampling rate is
    #: lowered to fit it at the measured cost per sample (0 = monitor off)
    recall_sample_cpu: float = 0.05
    #: most probes per table the controller may use
    lsh_max_probes: int = 64
    #: items sampled to re-tune LSH parameters (0 = never re-tune or re-pick parameters)
    retune_items: int = 20_000
    #: fraction of one core the background re-tunes looking for a cheaper layout may
    #: take on average (each waits for the last one's CPU time over it; 0 = none)
    retune_cost_cpu: float = 0.01
    #: the largest catalogue a cost re-tune runs on beyond RETUNE_ITEMS: it is written to
    #: a temporary file and tuned whole in the child process (~1 GB there at 1M x 64,
    #: none in the worker's own memory); 0 = only catalogues the sample holds whole
    retune_cost_max_items: int = 2_000_000
    #: seconds a served layout is left alone before a cost re-tune looks for a cheaper
    #: one (from the worker's start or the layout's swap): its probes settle first, and a
    #: catalogue still streaming in is re-picked for size every 4x anyway (a layout tuned
    #: in between would be replaced within minutes, and each move re-hashes every item).
    #: Shorter only to see a move sooner (a benchmark)
    retune_cost_settle: float = 600.0
    #: MiB the worker's RSS may reach when it moves to a new hash layout (its new bucket
    #: table is built beside the one served): a move that would exceed it waits
    #: (stream.memory); -1 = the cgroup's memory limit if there is one, 0 = no limit
    memory_limit_mb: int = -1
    #: a request is answered within this many ms of being read: from memory, or, when
    #: its user must be read from Redis and Redis does not answer in time, with an error
    request_deadline_ms: int = 1000
    #: seconds one Redis command may take before its connection is given up (redis-py
    #: retries it with backoff; the stream's writes retry until Redis is back)
    redis_timeout: float = 2.0
    #: seconds the worker's start-up check waits for Redis and the broker to answer
    #: before it exits with a message naming what is missing
    startup_timeout: float = 15.0
    #: most user states a worker keeps in memory (least recently used ones are dropped
    #: between click batches and read from Redis again on their next click or request;
    #: 0 = no limit). A state takes ~57 bytes per click in its window with ids like
    #: "i123456" (`recall bench clicks`), ~3 KB full
    user_cache_users: int = 50_000
    #: how user states are written to Redis: "packed" (format 4, binary columns and
    #: packed ids: the cheapest), "columns" (format 3, which workers before format 4
    #: read) or "json" (formats 1-2, which workers before format 3 read): set an older
    #: one while a rolling upgrade from such a version runs. Every format is read
    user_state_format: str = "packed"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` (default ``os.environ``); unknown values raise."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            var = ENV_NAMES[f.name]
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            default = getattr(cls, f.name)
            try:
                values[f.name] = type(default)(raw)
            except ValueError as exc:
                raise SettingsError(
                    f"{var}={raw!r}: expected {type(default).__name__}"
                ) from exc
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        checks = [
            (self.dim >= 1, "dim", "must be >= 1"),
            (self.user_window >= 1, "user_window", "must be >= 1"),
            (0 < self.metrics_port < 65536, "metrics_port", "must be a TCP port"),
            (self.user_decay_half_life >= 0, "user_decay_half_life", "must be >= 0"),
            (self.lsh_family in ("pstable", "simhash"), "lsh_family", "pstable or simhash"),
            (self.topic_partitions >= 1, "topic_partitions", "must be >= 1"),
            (self.max_message_bytes >= 1024, "max_message_bytes", "must be >= 1024"),
            (1 <= self.user_interests <= 16, "user_interests", "must be 1..16"),
            (self.user_session_gap >= 0, "user_session_gap", "must be >= 0"),
            (0 < self.target_recall <= 1, "target_recall", "must be in (0, 1]"),
            (self.recall_sample_per_s >= 0, "recall_sample_per_s", "must be >= 0"),
            (0 <= self.recall_sample_cpu <= 1, "recall_sample_cpu", "must be in [0, 1]"),
            (self.lsh_max_probes >= 1, "lsh_max_probes", "must be >= 1"),
            (self.retune_items >= 0, "retune_items", "must be >= 0"),
            (0 <= self.retune_cost_cpu <= 1, "retune_cost_cpu", "must be in [0, 1]"),
            (self.retune_cost_max_items >= 0, "retune_cost_max_items", "must be >= 0"),
            (self.retune_cost_settle >= 0, "retune_cost_settle", "must be >= 0"),
            (self.memory_limit_mb >= -1, "memory_limit_mb", "must be >= -1"),
            (self.request_deadline_ms >= 10, "request_deadline_ms", "must be >= 10"),
            (0 <= self.fetch_interval_ms <= 1000, "fetch_interval_ms", "must be 0..1000"),
            (self.redis_timeout > 0, "redis_timeout", "must be > 0"),
            (self.startup_timeout > 0, "startup_timeout", "must be > 0"),
            (self.user_cache_users >= 0, "user_cache_users", "must be >= 0"),
            (self.user_state_format in ("packed", "columns", "json"), "user_state_format",
             "must be packed, columns or json"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise SettingsError(f"{ENV_NAMES[name]}={getattr(self, name)!r}: {why}")

    @property
    def topics(self) -> dict[str, str]:
        return {
            "clicks": self.topic_clicks,
            "items": self.topic_items,
            "requests": self.topic_requests,
            "responses": self.topic_responses,
            "dlq": self.topic_dlq,
        }

    def environ(self) -> dict[str, str]:
        """These settings as environment variables (for starting a worker process)."""
        return {ENV_NAMES[f.name]: str(getattr(self, f.name)) for f in fields(self)}


#: field name -> environment variable
ENV_NAMES: dict[str, str] = {
    "kafka_bootstrap": "KAFKA_BOOTSTRAP",
    "redis_url": "REDIS_URL",
    "dim": "RECALL_DIM",
    "metrics_port": "RECALL_METRICS_PORT",
    "topic_clicks": "RECALL_TOPIC_CLICKS",
    "topic_items": "RECALL_TOPIC_ITEMS",
    "topic_requests": "RECALL_TOPIC_REQUESTS",
    "topic_responses": "RECALL_TOPIC_RESPONSES",
    "topic_dlq": "RECALL_TOPIC_DLQ",
    "user_window": "RECALL_USER_WINDOW",
    "redis_prefix": "RECALL_REDIS_PREFIX",
    "user_decay_half_life": "RECALL_USER_DECAY_HALF_LIFE",
    "lsh_family": "RECALL_LSH_FAMILY",
    "lsh_tables": "RECALL_LSH_TABLES",
    "lsh_hashes": "RECALL_LSH_HASHES",
    "lsh_width": "RECALL_LSH_WIDTH",
    "lsh_probes": "RECALL_LSH_PROBES",
    "lsh_seed": "RECALL_LSH_SEED",
    "topic_partitions": "RECALL_TOPIC_PARTITIONS",
    "max_message_bytes": "RECALL_MAX_MESSAGE_BYTES",
    "app_id": "RECALL_APP_ID",
    "web_host": "RECALL_WEB_HOST",
    "web_port": "RECALL_WEB_PORT",
    "fetch_max_wait_ms": "RECALL_FETCH_MAX_WAIT_MS",
    "fetch_interval_ms": "RECALL_FETCH_INTERVAL_MS",
    "clicks_fetch_wait_ms": "RECALL_CLICKS_FETCH_WAIT_MS",
    "items_fetch_wait_ms": "RECALL_ITEMS_FETCH_WAIT_MS",
    "event_id_ttl_seconds": "RECALL_EVENT_ID_TTL_SECONDS",
    "kafka_security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "kafka_sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "kafka_sasl_username": "KAFKA_SASL_USERNAME",
    "kafka_sasl_password": "KAFKA_SASL_PASSWORD",
    "kafka_session_timeout": "RECALL_KAFKA_SESSION_TIMEOUT",
    "log_level": "RECALL_LOG_LEVEL",
    "metrics_host": "RECALL_METRICS_HOST",
    "user_interests": "RECALL_USER_INTERESTS",
    "user_session_gap": "RECALL_USER_SESSION_GAP",
    "target_recall": "RECALL_TARGET_RECALL",
    "recall_sample_per_s": "RECALL_RECALL_SAMPLE_PER_S",
    "recall_sample_cpu": "RECALL_RECALL_SAMPLE_CPU",
    "lsh_max_probes": "RECALL_LSH_MAX_PROBES",
    "retune_items": "RECALL_RETUNE_ITEMS",
    "retune_cost_cpu": "RECALL_RETUNE_COST_CPU",
    "retune_cost_max_items": "RECALL_RETUNE_COST_MAX_ITEMS",
    "retune_cost_settle": "RECALL_RETUNE_COST_SETTLE",
    "memory_limit_mb": "RECALL_MEMORY_LIMIT_MB",
    "request_deadline_ms": "RECALL_REQUEST_DEADLINE_MS",
    "redis_timeout": "RECALL_REDIS_TIMEOUT",
    "startup_timeout": "RECALL_STARTUP_TIMEOUT",
    "user_cache_users": "RECALL_USER_CACHE_USERS",
    "user_state_format": "RECALL_USER_STATE_FORMAT",
}


def set_in_env(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """Names of the settings given explicitly (non-empty) in ``env`` (default
    ``os.environ``). The user-vector settings can also come from the index version
    (chosen offline by ``recall train --search``); an explicit variable wins over those."""
    env = os.environ if env is None else env
    return frozenset(name for name, var in ENV_NAMES.items() if env.get(var))


#: user-vector settings an index version may carry (its metadata's ``user`` keys, as
#: ``recall train`` writes them) -> the Settings field that overrides each when set
USER_VECTOR_KEYS: dict[str, str] = {
    "window": "user_window",
    "half_life": "user_decay_half_life",
    "interests": "user_interests",
    "session_gap": "user_session_gap",
}


def user_vector_settings(settings: Settings, stored: Mapping[str, object] | None,
                         explicit: frozenset[str]) -> tuple[dict[str, float], str]:
    """({window, half_life, interests, session_gap}, where from) of the user vectors a
    worker keeps: each from its variable when set in the environment (``explicit``, from
    :func:`set_in_env`), else from ``stored`` (the settings chosen offline, kept in the
    live index version's metadata by ``recall load``), else the setting's default."""
    values: dict[str, float] = {}
    for key, name in USER_VECTOR_KEYS.items():
        value = getattr(settings, name)
        if stored and key in stored and name not in explicit:
            value = type(value)(stored[key])
        values[key] = value
    source = "index version" if stored else "defaults"
    if explicit & set(USER_VECTOR_KEYS.values()):
        source = "environment over index version" if stored else "environment"
    return values, source


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments of an aiokafka client (producer, consumer or admin),
    from KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_*: the one builder, so the worker, the
    offline loader and the dev tools' clients all get the same TLS context and SASL
    credentials (no client connects differently, e.g. without a TLS context)."""
    proto = settings.kafka_security_protocol.upper()
    if proto == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": proto}
    if "SSL" in proto:
        kwargs["ssl_context"] = ssl.create_default_context()
    if proto.startswith("SASL"):
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism or "PLAIN",
                      sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    return kwargs


def redacted_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))
