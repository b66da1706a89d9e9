"""Long polling (`waitseconds`) through the official SDK.

A poll runs in a thread with its own `Account` (the SDK is not thread-safe); the test waits
until the sandbox reports the poll as waiting (admin API), then acts. No assertion is about
speed: a poll must come back with the message within its wait instead of empty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from mns.mns_exception import MNSServerException
from mns.queue import Message, Queue

from alicom_sandbox.testing import SandboxHandle


class Poll(threading.Thread):
    """Runs one receive call in the background and keeps its result or exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:  # handed to the test thread
            self.error = exc


def wait_for_waiters(sandbox: SandboxHandle, queue_name: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while sandbox.queue_state(queue_name)["waiters"] < count:
        assert time.monotonic() < deadline, "the long polls never reached the sandbox"
        time.sleep(0.01)


def own_queue(sandbox: SandboxHandle, queue: Queue) -> Queue:
    return sandbox.account().get_queue(queue.queue_name)


def test_a_long_poll_returns_the_message_that_arrives_while_it_waits(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    poll = Poll(lambda: own_queue(sandbox, queue).receive_message(30))
    poll.start()
    wait_for_waiters(sandbox, queue.queue_name, 1)

    queue.send_message(Message("arrived during the poll"))
    poll.join(30)

    assert not poll.is_alive()
    assert poll.error is None
    assert poll.result.message_body == b"arrived during the poll"


def test_a_batch_long_poll_returns_what_arrived_without_waiting_for_a_full_batch(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    poll = Poll(lambda: own_queue(sandbox, queue).batch_receive_message(16, 30))
    poll.start()
    wait_for_waiters(sandbox, queue.queue_name, 1)

    queue.batch_send_message([Message("a"), Message("b")])
    poll.join(30)

    assert poll.error is None
    assert [m.message_body for m in poll.result] == [b"a", b"b"]


def test_concurrent_long_polls_each_get_a_different_message(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    polls = [Poll(lambda: own_queue(sandbox, queue).receive_message(30)) for _ in range(3)]
    for poll in polls:
        poll.start()
    wait_for_waiters(sandbox, queue.queue_name, 3)

    queue.batch_send_message([Message(f"m{i}") for i in range(3)])
    for poll in polls:
        poll.join(30)

    assert all(poll.error is None for poll in polls)
    assert sorted(poll.result.message_body for poll in polls) == [b"m0", b"m1", b"m2"]


def test_an_empty_long_poll_ends_with_message_not_exist(queue: Queue) -> None:
    with pytest.raises(MNSServerException) as caught:
        queue.receive_message(1)
    assert caught.value.type == "MessageNotExist"


def test_the_queues_polling_wait_applies_when_the_request_names_none(
    make_queue: Callable[..., Queue], sandbox: SandboxHandle
) -> None:
    queue = make_queue(polling_wait_s=30)
    poll = Poll(lambda: own_queue(sandbox, queue).receive_message())
    poll.start()
    wait_for_waiters(sandbox, queue.queue_name, 1)  # it waits although no waitseconds was sent

    queue.send_message(Message("x"))
    poll.join(30)

    assert poll.error is None
    assert poll.result.message_body == b"x"


def test_deleting_the_queue_ends_its_long_polls_with_queue_not_exist(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    poll = Poll(lambda: own_queue(sandbox, queue).receive_message(30))
    poll.start()
    wait_for_waiters(sandbox, queue.queue_name, 1)

    queue.delete()
    poll.join(30)

    assert isinstance(poll.error, MNSServerException)
    assert poll.error.type == "QueueNotExist"


@pytest.mark.parametrize("wait_s", [31, 100])
def test_waiting_longer_than_thirty_seconds_is_invalid(queue: Queue, wait_s: int) -> None:
    with pytest.raises(MNSServerException) as caught:
        queue.receive_message(wait_s)
    assert caught.value.type == "InvalidArgument"
