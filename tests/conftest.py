"""Shared fixtures: real servers on free ports, started by the tests themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from alicom_sandbox.postgres_server import PostgresServer, running_postgres
from alicom_sandbox.redis_server import RedisServer, running_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on a freshly flushed database of the session's real Redis server."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL cluster for the session (Debian's package; .ci/ensure-postgres)."""
    with running_postgres() as server:
        yield server
