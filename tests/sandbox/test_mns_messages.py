"""Sending, receiving, peeking and deleting messages through the official MNS SDK."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable

import pytest
from mns.mns_exception import MNSServerException
from mns.queue import Message, Queue

from alicom_sandbox.testing import SandboxHandle


def test_a_sent_message_comes_back_with_all_nine_fields(queue: Queue) -> None:
    before_ms = int(time.time() * 1000)
    sent = queue.send_message(Message("hello"))
    received = queue.receive_message()

    body_b64 = base64.b64encode(b"hello").decode()
    assert received.message_body == b"hello"  # the SDK base64-decodes by default
    assert received.message_id == sent.message_id
    assert received.message_body_md5 == hashlib.md5(body_b64.encode()).hexdigest().upper()
    assert sent.message_body_md5 == received.message_body_md5
    assert received.dequeue_count == 1
    assert received.priority == 8
    assert before_ms - 5000 <= received.enqueue_time <= received.first_dequeue_time
    assert received.next_visible_time == received.first_dequeue_time + 2000  # visibility 2 s
    assert received.receipt_handle


def test_bodies_with_xml_special_characters_and_unicode_survive(queue: Queue) -> None:
    queue.set_encoding(False)
    body = 'a < b && c > "d" \'e\' 短信回执 ✓'
    queue.send_message(Message(body))
    assert queue.receive_message().message_body == body


def test_deleting_with_the_receipt_handle_removes_the_message(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    queue.send_message(Message("x"))
    received = queue.receive_message()
    queue.delete_message(received.receipt_handle)
    assert sandbox.queue_state(queue.queue_name)["inactive"] == 0
    with pytest.raises(MNSServerException) as caught:
        queue.receive_message(0)
    assert caught.value.type == "MessageNotExist"


def test_a_receipt_handle_works_only_once(queue: Queue) -> None:
    queue.send_message(Message("x"))
    handle = queue.receive_message().receipt_handle
    queue.delete_message(handle)
    with pytest.raises(MNSServerException) as caught:
        queue.delete_message(handle)
    assert caught.value.type == "MessageNotExist"


def test_a_garbled_receipt_handle_is_a_receipt_handle_error(queue: Queue) -> None:
    for handle in ("garbage", "1-+/=-x", "1-ZZ-000000000000"):
        with pytest.raises(MNSServerException) as caught:
            queue.delete_message(handle)
        assert caught.value.type == "ReceiptHandleError"


def test_an_empty_queue_answers_message_not_exist(queue: Queue) -> None:
    with pytest.raises(MNSServerException) as caught:
        queue.receive_message(0)
    assert caught.value.type == "MessageNotExist"
    with pytest.raises(MNSServerException) as caught:
        queue.batch_receive_message(16, 0)
    assert caught.value.type == "MessageNotExist"


def test_batch_send_and_batch_receive_move_sixteen_messages_at_once(queue: Queue) -> None:
    sent = queue.batch_send_message([Message(f"m{i}") for i in range(16)])
    received = queue.batch_receive_message(16)
    assert len(sent) == 16
    assert [m.message_body for m in received] == [f"m{i}".encode() for i in range(16)]
    assert [m.message_id for m in received] == [m.message_id for m in sent]
    assert len({m.receipt_handle for m in received}) == 16


def test_batch_receive_returns_what_there_is_when_fewer_are_visible(queue: Queue) -> None:
    queue.batch_send_message([Message("a"), Message("b"), Message("c")])
    assert len(queue.batch_receive_message(16)) == 3


def test_batch_delete_removes_all_given_messages(queue: Queue, sandbox: SandboxHandle) -> None:
    queue.batch_send_message([Message(f"m{i}") for i in range(5)])
    received = queue.batch_receive_message(16)
    queue.batch_delete_message([m.receipt_handle for m in received])
    state = sandbox.queue_state(queue.queue_name)
    assert (state["active"], state["inactive"], state["delayed"]) == (0, 0, 0)


def test_batch_delete_reports_each_failed_entry_and_deletes_the_rest(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    queue.batch_send_message([Message("a"), Message("b")])
    a, b = queue.batch_receive_message(16)
    queue.delete_message(a.receipt_handle)

    with pytest.raises(MNSServerException) as caught:
        queue.batch_delete_message([a.receipt_handle, "not-a-handle", b.receipt_handle])

    errors = caught.value.sub_errors
    assert caught.value.type == "MessageNotExist"  # the SDK reports the first entry's code
    assert [(e["ReceiptHandle"], e["ErrorCode"]) for e in errors] == [
        (a.receipt_handle, "MessageNotExist"),
        ("not-a-handle", "ReceiptHandleError"),
    ]
    assert sandbox.queue_state(queue.queue_name)["inactive"] == 0  # b was deleted


def test_receiving_more_than_sixteen_at_once_is_invalid(queue: Queue) -> None:
    queue.send_message(Message("x"))
    for size in (17, 0):
        with pytest.raises(MNSServerException) as caught:
            queue.batch_receive_message(size)
        assert caught.value.type == "InvalidArgument"


def test_sending_seventeen_in_one_batch_is_invalid_and_sends_nothing(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    with pytest.raises(MNSServerException) as caught:
        queue.batch_send_message([Message(f"m{i}") for i in range(17)])
    assert caught.value.type == "InvalidArgument"
    assert sandbox.queue_state(queue.queue_name)["active"] == 0


def test_a_body_of_exactly_64_kib_is_accepted_and_one_byte_more_is_not(queue: Queue) -> None:
    queue.set_encoding(False)
    queue.send_message(Message("x" * 65536))
    assert len(queue.receive_message().message_body) == 65536
    with pytest.raises(MNSServerException) as caught:
        queue.send_message(Message("x" * 65537))
    assert caught.value.type == "InvalidArgument"


def test_a_batch_over_64_kib_in_total_is_invalid(queue: Queue) -> None:
    queue.set_encoding(False)
    with pytest.raises(MNSServerException) as caught:
        queue.batch_send_message([Message("x" * 40000), Message("y" * 40000)])
    assert caught.value.type == "InvalidArgument"


def test_the_queues_maximum_message_size_applies(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(maximum_message_size_bytes=1024)
    queue.set_encoding(False)
    queue.send_message(Message("x" * 1024))
    with pytest.raises(MNSServerException) as caught:
        queue.send_message(Message("x" * 1025))
    assert caught.value.type == "InvalidArgument"


@pytest.mark.parametrize(
    "message",
    [Message("x", priority=17), Message("x", priority=0), Message("x", delay_seconds=604801)],
    ids=["priority-17", "priority-0", "delay-too-long"],
)
def test_out_of_range_message_settings_are_invalid(queue: Queue, message: Message) -> None:
    with pytest.raises(MNSServerException) as caught:
        queue.send_message(message)
    assert caught.value.type == "InvalidArgument"


def test_higher_priority_messages_are_received_first(queue: Queue) -> None:
    queue.send_message(Message("low", priority=16))
    queue.send_message(Message("normal"))
    queue.send_message(Message("high", priority=1))
    queue.send_message(Message("normal-2"))
    bodies = [m.message_body for m in queue.batch_receive_message(16)]
    assert bodies == [b"high", b"normal", b"normal-2", b"low"]


def test_a_delayed_message_is_invisible_until_its_delay_passes(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    sent = queue.send_message(Message("later", delay_seconds=1))
    assert sent.receipt_handle  # MNS hands a handle out for delayed messages
    with pytest.raises(MNSServerException) as caught:
        queue.receive_message(0)
    assert caught.value.type == "MessageNotExist"
    assert sandbox.queue_state(queue.queue_name)["delayed"] == 1

    received = queue.receive_message(5)  # long poll wakes when the delay is over

    assert received.message_body == b"later"
    assert received.enqueue_time + 1000 <= received.first_dequeue_time


def test_the_queues_default_delay_applies_to_messages_without_one(
    make_queue: Callable[..., Queue], sandbox: SandboxHandle
) -> None:
    queue = make_queue(delay_s=600)
    queue.send_message(Message("queued with the queue's delay"))
    queue.send_message(Message("no delay", delay_seconds=0))
    state = sandbox.queue_state(queue.queue_name)
    assert (state["active"], state["delayed"]) == (1, 1)


def test_a_delayed_message_can_be_deleted_with_the_handle_from_sending(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    sent = queue.send_message(Message("cancel me", delay_seconds=600))
    queue.delete_message(sent.receipt_handle)
    assert sandbox.queue_state(queue.queue_name)["delayed"] == 0


def test_peeking_shows_messages_without_taking_them(queue: Queue) -> None:
    queue.send_message(Message("first"))
    queue.send_message(Message("second"))

    peeked = queue.peek_message()
    batch = queue.batch_peek_message(16)
    received = queue.batch_receive_message(16)

    assert peeked.message_body == b"first"
    assert peeked.dequeue_count == 0
    assert [m.message_body for m in batch] == [b"first", b"second"]
    assert [m.message_body for m in received] == [b"first", b"second"]
    assert all(m.dequeue_count == 1 for m in received)


def test_peeking_an_empty_queue_answers_message_not_exist(queue: Queue) -> None:
    with pytest.raises(MNSServerException) as caught:
        queue.peek_message()
    assert caught.value.type == "MessageNotExist"
