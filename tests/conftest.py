"""Shared fixtures: real servers on free ports, started by the tests themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from alicom_sandbox.postgres_server import PostgresServer, running_postgres
from alicom_sandbox.redis_server import RedisServer, running_redis
from consumer.pipeline.dispatch import Dispatcher

#: The modules that take longest (each 30 s to 3 min of real processes, measured under
#: pytest-xdist), in that order. `make test` hands whole modules to its xdist processes in
#: collection order (--dist loadfile), so these go first: one of them started last would run
#: on alone at the end while the other processes idle. Only the order changes; a module not
#: listed keeps its place after them.
LONGEST_FIRST = (
    "tests/e2e/test_stops_that_end.py",
    "tests/e2e/test_worker_delivery.py",
    "tests/e2e/test_many_hosts.py",
    "tests/e2e/test_redis_topologies.py",
    "tests/test_release.py",
    "tests/e2e/test_health_http.py",
    "tests/e2e/test_bulk_e2e.py",
    "tests/e2e/test_soak_short.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


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


@pytest.fixture
def dispatchers() -> Iterator[list[Dispatcher]]:
    """The dispatchers a test makes (appended to this list), closed after it."""
    made: list[Dispatcher] = []
    yield made
    for dispatcher in made:
        dispatcher.close()
