"""faust's view of the broker's security, and topic creation.

Every Kafka client of the worker (its aiokafka consumers, faust's producer, the topic
admin client) is built with :func:`recall.config.kafka_client_kwargs`, so TLS and SASL
are configured once and the same way for all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from recall.config import Settings, kafka_client_kwargs


def faust_credentials(settings: Settings) -> Any:
    """The same security as :func:`~recall.config.kafka_client_kwargs`, as faust's
    ``broker_credentials``."""
    import faust

    kwargs = kafka_client_kwargs(settings)
    if not kwargs:
        return None
    ctx = kwargs.get("ssl_context")
    if "sasl_mechanism" in kwargs:
        return faust.SASLCredentials(
            username=kwargs["sasl_plain_username"], password=kwargs["sasl_plain_password"],
            mechanism=kwargs["sasl_mechanism"], ssl_context=ctx)
    return faust.SSLCredentials(ctx)


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int,
                        **kwargs: Any) -> None:
    """Create the topics that do not exist yet (Tansu would auto-create them with 4
    partitions); ``kwargs``: client settings such as
    :func:`~recall.config.kafka_client_kwargs`."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kwargs)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()
