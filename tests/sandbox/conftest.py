"""Fixtures for the sandbox conformance tests: one real sandbox process per session.

Every test that uses the sandbox gets it back with faults off, no clock skew and the start
token lifetime. Tests create their own uniquely named queues, so they never see each
other's messages.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mns.account import Account
from mns.queue import Queue

from alicom_sandbox.testing import SandboxHandle, running_sandbox


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


@pytest.fixture(autouse=True)
def _sandbox_reset_after_test(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sandbox" in request.fixturenames:
        handle: SandboxHandle = request.getfixturevalue("sandbox")
        handle.reset()


@pytest.fixture
def account(sandbox: SandboxHandle) -> Account:
    """The root AccessKey's SDK account (plays the platform: may do everything)."""
    return sandbox.account()


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_queue(sandbox: SandboxHandle, account: Account) -> Iterator[Callable[..., Queue]]:
    """Creates uniquely named queues (SDK `Queue` objects); deletes them after the test."""
    created: list[str] = []

    def make(prefix: str = "t", **attrs: Any) -> Queue:
        name = unique_name(prefix)
        sandbox.create_queue(name, **attrs)
        created.append(name)
        return account.get_queue(name)

    yield make
    cleanup = sandbox.account()
    for name in created:
        # a test may have deleted its queue itself
        with contextlib.suppress(Exception):
            cleanup.get_queue(name).delete()


@pytest.fixture
def queue(make_queue: Callable[..., Queue]) -> Queue:
    """A fresh queue with a 2 s visibility timeout, so in-flight messages return quickly."""
    return make_queue(visibility_timeout_s=2)
