"""Shared fixtures: a real local broker (Tansu) and redis-server for integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devtools.localstack import LocalStack, Service, start_redis, start_tansu


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_redis(workdir=tmp_path_factory.mktemp("redis"))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: Service) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture
def redis_prefix() -> str:
    """A fresh key prefix per test, so tests share one server without seeing each other."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def stack(redis_server: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Tansu broker + the session's redis-server."""
    workdir = tmp_path_factory.mktemp("stack")
    kafka = start_tansu(workdir=workdir)
    yield LocalStack(kafka=kafka, redis=redis_server, workdir=workdir)
    kafka.stop()
