"""The worker's start-up check: Redis and the broker answer, and the topics exist.

Run before the worker starts (``recall worker``), so that a worker that cannot work says
so and exits non-zero instead of logging Ready, serving /metrics and answering nothing
(a wrong Redis password would otherwise show only as the error of a task retrying it).

- a refused password (wrong, or missing where Redis requires one) fails at once: waiting
  cannot fix it;
- an unreachable Redis or broker is retried for ``RECALL_STARTUP_TIMEOUT`` seconds (a
  container started with its dependencies may be a little early), then fails;
- a missing topic fails (after ``recall worker`` tried to create them), as do ``clicks``
  and ``recall-requests`` with different partition counts (the worker pairs their
  partitions by number).

Every failure is a :class:`StartupError` whose message names the setting to look at.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from recall.config import ENV_NAMES, Settings, redacted_url

log = logging.getLogger(__name__)

#: seconds between attempts while a service is unreachable
RETRY_EVERY = 0.5

T = TypeVar("T")


class StartupError(RuntimeError):
    """The worker cannot start; the message says what is wrong and which setting."""


async def _until_up(service: str, setting: str, settings: Settings,
                    attempt: Callable[[], Awaitable[T]],
                    transient: tuple[type[BaseException], ...]) -> T:
    """``attempt()`` until it succeeds; a ``transient`` error (unreachable, timed out) is
    retried every :data:`RETRY_EVERY` s for ``RECALL_STARTUP_TIMEOUT``, then becomes a
    StartupError naming ``setting``. Other errors pass through at once."""
    deadline = time.monotonic() + settings.startup_timeout
    while True:
        try:
            return await attempt()
        except transient as exc:
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"{service} ({ENV_NAMES[setting]}) did not answer within "
                    f"{settings.startup_timeout:g}s ({ENV_NAMES['startup_timeout']}): "
                    f"{type(exc).__name__}: {exc}") from None
            log.info("waiting for %s (%s)", service, type(exc).__name__)
        await asyncio.sleep(RETRY_EVERY)


async def check_redis(settings: Settings) -> None:
    """PING Redis with the configured URL; StartupError when it refuses or never answers."""
    from redis.exceptions import AuthenticationError, RedisError, ResponseError

    from recall.store import Store

    where = redacted_url(settings.redis_url)
    per_try = min(settings.redis_timeout, settings.startup_timeout)

    async def ping() -> None:
        store = Store.from_url(settings.redis_url, settings.redis_prefix, timeout=per_try)
        try:
            await store.ping()
        except (AuthenticationError, ResponseError) as exc:  # waiting cannot fix these
            text = str(exc)
            if isinstance(exc, AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
                raise StartupError(
                    f"Redis at {where} refused the credentials of {ENV_NAMES['redis_url']} "
                    f"({type(exc).__name__}: {text}); set the right password in the URL, "
                    "e.g. redis://:PASSWORD@host:6379/0") from None
            raise StartupError(f"Redis at {where} answered PING with an error: {text}"
                               ) from None
        finally:
            await store.close()

    await _until_up(f"Redis at {where}", "redis_url", settings, ping, (RedisError, OSError))


async def check_kafka(settings: Settings, client_kwargs: dict[str, Any] | None = None) -> None:
    """The broker answers and every topic exists (clicks and requests equally
    partitioned); StartupError otherwise."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    async def metadata() -> tuple[set[str], dict[str, Any]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=None,
            request_timeout_ms=max(1000, int(settings.startup_timeout * 1000)),
            **(client_kwargs or {}))
        try:
            await consumer.start()
            found = await consumer.topics()
            return found, {t: consumer.partitions_for_topic(t) for t in settings.topics.values()}
        finally:
            await consumer.stop()

    found, partitions = await _until_up(f"the Kafka broker {settings.kafka_bootstrap}",
                                        "kafka_bootstrap", settings, metadata,
                                        (KafkaError, OSError))
    missing = [(role, name) for role, name in settings.topics.items() if name not in found]
    if missing:
        names = ", ".join(f"{name!r} ({ENV_NAMES['topic_' + role]})" for role, name in missing)
        raise StartupError(
            f"topic(s) {names} missing on {settings.kafka_bootstrap}: create them with "
            f"{settings.topic_partitions} partitions, or let the worker create them (it "
            "needs the CreateTopics permission)")
    n_clicks = len(partitions[settings.topic_clicks] or ())
    n_requests = len(partitions[settings.topic_requests] or ())
    if n_clicks != n_requests:
        raise StartupError(
            f"{settings.topic_clicks!r} has {n_clicks} partitions and "
            f"{settings.topic_requests!r} {n_requests}: they must be equal (a user's clicks "
            "and requests are paired by partition number)")


async def preflight(settings: Settings, client_kwargs: dict[str, Any] | None = None) -> None:
    """Both checks, at once; the first failure raises :class:`StartupError`."""
    await asyncio.gather(check_redis(settings), check_kafka(settings, client_kwargs))
