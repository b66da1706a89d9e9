"""Visibility timeouts, DequeueCount, receipt-handle expiry and retention, through the SDK.

Where time must pass, the tests either long-poll (the sandbox wakes the poll the moment a
message becomes visible again) or move the sandbox clock forward with the admin API; no test
sleeps.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mns.mns_exception import MNSServerException
from mns.queue import Message, Queue, QueueMeta

from alicom_sandbox.testing import SandboxHandle


@pytest.fixture
def short_queue(make_queue: Callable[..., Queue]) -> Queue:
    """Visibility timeout 1 s: an unacknowledged message is back within a second."""
    return make_queue(visibility_timeout_s=1)


def test_an_unacknowledged_message_comes_back_with_a_higher_dequeue_count(
    short_queue: Queue,
) -> None:
    short_queue.send_message(Message("retry me"))
    first = short_queue.receive_message()
    second = short_queue.receive_message(10)  # returns once the visibility timeout is over
    third = short_queue.receive_message(10)

    assert first.message_id == second.message_id == third.message_id
    assert [first.dequeue_count, second.dequeue_count, third.dequeue_count] == [1, 2, 3]
    assert first.first_dequeue_time == second.first_dequeue_time == third.first_dequeue_time
    assert first.next_visible_time <= second.next_visible_time - 1000
    assert len({first.receipt_handle, second.receipt_handle, third.receipt_handle}) == 3


def test_an_old_receipt_handle_is_refused_after_the_message_was_received_again(
    short_queue: Queue,
) -> None:
    short_queue.send_message(Message("x"))
    first = short_queue.receive_message()
    second = short_queue.receive_message(10)

    with pytest.raises(MNSServerException) as caught:
        short_queue.delete_message(first.receipt_handle)
    assert caught.value.type == "MessageNotExist"
    short_queue.delete_message(second.receipt_handle)


def test_a_receipt_handle_expires_at_next_visible_time(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    queue.send_message(Message("x"))
    received = queue.receive_message()
    sandbox.set_clock_skew(3)  # the queue's visibility timeout is 2 s

    with pytest.raises(MNSServerException) as caught:
        queue.delete_message(received.receipt_handle)
    assert caught.value.type == "MessageNotExist"
    assert sandbox.queue_state(queue.queue_name)["active"] == 1


def test_changing_visibility_issues_a_new_handle_and_kills_the_old_one(queue: Queue) -> None:
    queue.send_message(Message("x"))
    received = queue.receive_message()

    changed = queue.change_message_visibility(received.receipt_handle, 60)

    assert changed.receipt_handle != received.receipt_handle
    # the SDK hands NextVisibleTime of ChangeVisibility back as text
    assert int(changed.next_visible_time) >= received.next_visible_time + 55_000
    with pytest.raises(MNSServerException) as caught:
        queue.delete_message(received.receipt_handle)
    assert caught.value.type == "MessageNotExist"
    queue.delete_message(changed.receipt_handle)


def test_extending_visibility_keeps_a_message_hidden_past_the_queue_timeout(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    queue.send_message(Message("slow handler"))
    received = queue.receive_message()
    queue.change_message_visibility(received.receipt_handle, 600)
    sandbox.set_clock_skew(30)

    with pytest.raises(MNSServerException) as caught:
        queue.receive_message(0)
    assert caught.value.type == "MessageNotExist"
    assert sandbox.queue_state(queue.queue_name)["inactive"] == 1


def test_shortening_visibility_hands_a_message_back_early(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(visibility_timeout_s=600)
    queue.send_message(Message("give back"))
    received = queue.receive_message()
    queue.change_message_visibility(received.receipt_handle, 1)

    again = queue.receive_message(10)

    assert again.message_id == received.message_id
    assert again.dequeue_count == 2


def test_visibility_zero_is_out_of_range_as_on_mns(queue: Queue) -> None:
    queue.send_message(Message("x"))
    received = queue.receive_message()
    with pytest.raises(MNSServerException) as caught:
        queue.change_message_visibility(received.receipt_handle, 0)
    assert caught.value.type == "InvalidArgument"


def test_changing_visibility_with_a_stale_handle_is_message_not_exist(queue: Queue) -> None:
    queue.send_message(Message("x"))
    received = queue.receive_message()
    queue.delete_message(received.receipt_handle)
    with pytest.raises(MNSServerException) as caught:
        queue.change_message_visibility(received.receipt_handle, 10)
    assert caught.value.type == "MessageNotExist"


def test_messages_older_than_the_retention_period_vanish(
    make_queue: Callable[..., Queue], sandbox: SandboxHandle
) -> None:
    queue = make_queue(message_retention_s=60, visibility_timeout_s=1)
    queue.send_message(Message("old, visible"))
    queue.send_message(Message("old, in flight"))
    queue.receive_message()
    sandbox.set_clock_skew(61)
    queue.send_message(Message("new"))

    received = queue.batch_receive_message(16)

    assert [m.message_body for m in received] == [b"new"]
    state = sandbox.queue_state(queue.queue_name)
    assert (state["active"], state["inactive"], state["delayed"]) == (0, 1, 0)


def test_a_shorter_retention_set_later_applies_to_waiting_messages(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    queue.send_message(Message("x"))
    queue.set_attributes(QueueMeta(msg_ttl=60))
    sandbox.set_clock_skew(120)
    assert sandbox.queue_state(queue.queue_name)["active"] == 0
