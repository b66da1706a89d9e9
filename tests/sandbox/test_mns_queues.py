"""Queue management through the official MNS SDK: create, attributes, list, delete."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mns.account import Account
from mns.mns_exception import MNSServerException
from mns.mns_request import (
    CreateQueueRequest,
    CreateQueueResponse,
    ListQueueRequest,
    ListQueueResponse,
)
from mns.queue import Message, Queue, QueueMeta

from alicom_sandbox.testing import SandboxHandle
from tests.sandbox.conftest import unique_name

# The SDK itself warns that the message counters of GetQueueAttributes are deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated:DeprecationWarning")


def test_the_seven_alicom_queues_exist_at_start(account: Account, sandbox: SandboxHandle) -> None:
    urls, _ = account.list_queue(prefix="Alicom-Queue-")
    names = {url.rsplit("/", 1)[1] for url in urls}
    for message_type in (
        "SmsReport", "SmsUp", "SignSmsReport", "TemplateSmsReport", "GlobeSmsReport",
        "MnsCardTemplate", "MnsCardVender",
    ):
        assert f"Alicom-Queue-1943695596114318-{message_type}" in names
    assert sandbox.queue_name("SmsUp") == "Alicom-Queue-1943695596114318-SmsUp"


def test_creating_a_queue_answers_its_url(account: Account, sandbox: SandboxHandle) -> None:
    name = unique_name()
    url = account.get_queue(name).create(QueueMeta(vis_timeout=7))
    assert url == f"{sandbox.endpoint}/queues/{name}"
    account.get_queue(name).delete()


def test_creating_an_existing_queue_with_the_same_attributes_is_accepted(
    account: Account,
) -> None:
    queue = account.get_queue(unique_name())
    first = queue.create(QueueMeta(vis_timeout=5, polling_wait_sec=1))
    again = queue.create(QueueMeta(vis_timeout=5, polling_wait_sec=1))
    assert again == first
    queue.delete()


def test_create_answers_201_when_new_and_204_when_it_already_exists_the_same(
    account: Account, sandbox: SandboxHandle
) -> None:
    name = unique_name()
    statuses, locations = [], []
    for _ in range(2):
        request, response = CreateQueueRequest(name, visibility_timeout=5), CreateQueueResponse()
        account.get_client().create_queue(request, response)
        statuses.append(response.status)
        locations.append(response.queue_url)
    assert statuses == [201, 204]
    assert locations == [f"{sandbox.endpoint}/queues/{name}"] * 2
    account.get_queue(name).delete()


def test_creating_an_existing_queue_with_other_attributes_is_a_conflict(
    make_queue: Callable[..., Queue],
) -> None:
    queue = make_queue(visibility_timeout_s=5)
    with pytest.raises(MNSServerException) as caught:
        queue.create(QueueMeta(vis_timeout=6))
    assert caught.value.type == "QueueAlreadyExist"


def test_queue_attributes_report_every_field_and_live_counts(
    make_queue: Callable[..., Queue],
) -> None:
    queue = make_queue(visibility_timeout_s=60, delay_s=0, polling_wait_s=2)
    queue.send_message(Message("visible"))
    queue.send_message(Message("in flight"))
    queue.send_message(Message("delayed", delay_seconds=600))
    queue.receive_message()

    meta = queue.get_attributes()

    assert meta.queue_name == queue.queue_name
    assert meta.visibility_timeout == 60
    assert meta.maximum_message_size == 65536
    assert meta.message_retention_period == 345600
    assert meta.delay_seconds == 0
    assert meta.polling_wait_seconds == 2
    assert meta.logging_enabled is False
    assert meta.create_time > 1_600_000_000
    assert meta.last_modify_time >= meta.create_time
    assert (meta._active_messages, meta._inactive_messages, meta._delay_messages) == (1, 1, 1)


def test_setting_attributes_changes_only_the_given_ones(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(visibility_timeout_s=9, polling_wait_s=3)
    queue.set_attributes(QueueMeta(vis_timeout=11, logging_enabled=True))
    meta = queue.get_attributes()
    assert meta.visibility_timeout == 11
    assert meta.polling_wait_seconds == 3
    assert meta.logging_enabled is True


@pytest.mark.parametrize(
    "meta",
    [
        QueueMeta(vis_timeout=43201),
        QueueMeta(max_msg_size=1023),
        QueueMeta(max_msg_size=65537),
        QueueMeta(msg_ttl=59),
        QueueMeta(delay_sec=604801),
        QueueMeta(polling_wait_sec=31),
    ],
    ids=["visibility", "size-low", "size-high", "retention", "delay", "polling-wait"],
)
def test_attribute_values_out_of_range_are_invalid_arguments(
    account: Account, meta: QueueMeta
) -> None:
    with pytest.raises(MNSServerException) as caught:
        account.get_queue(unique_name()).create(meta)
    assert caught.value.type == "InvalidArgument"


def test_setting_out_of_range_attributes_leaves_the_queue_unchanged(
    make_queue: Callable[..., Queue],
) -> None:
    queue = make_queue(visibility_timeout_s=9)
    with pytest.raises(MNSServerException) as caught:
        queue.set_attributes(QueueMeta(vis_timeout=43201))
    assert caught.value.type == "InvalidArgument"
    assert queue.get_attributes().visibility_timeout == 9


@pytest.mark.parametrize(
    ("name", "code"),
    [("9starts-with-a-digit", "InvalidQueueName"), ("has_underscore", "InvalidQueueName"),
     ("q" * 257, "QueueNameLengthError")],
)
def test_bad_queue_names_are_refused(account: Account, name: str, code: str) -> None:
    with pytest.raises(MNSServerException) as caught:
        account.get_queue(name).create(QueueMeta())
    assert caught.value.type == code


def test_a_deleted_queue_no_longer_exists(account: Account) -> None:
    queue = account.get_queue(unique_name())
    queue.create(QueueMeta())
    queue.delete()
    for operation in (queue.get_attributes, queue.receive_message, queue.delete):
        with pytest.raises(MNSServerException) as caught:
            operation()
        assert caught.value.type == "QueueNotExist"
        assert caught.value.req_id  # every error carries the x-mns-request-id


def test_an_unknown_queue_is_queue_not_exist_for_every_message_operation(
    account: Account,
) -> None:
    queue = account.get_queue(unique_name("missing"))
    operations: list[Callable[[], object]] = [
        lambda: queue.send_message(Message("x")),
        lambda: queue.batch_receive_message(16),
        queue.peek_message,
        lambda: queue.delete_message("1-1-000000000000"),
        lambda: queue.change_message_visibility("1-1-000000000000", 5),
    ]
    for operation in operations:
        with pytest.raises(MNSServerException) as caught:
            operation()
        assert caught.value.type == "QueueNotExist"


def test_listing_pages_through_queues_by_prefix_and_marker(account: Account) -> None:
    prefix = unique_name("list")
    names = [f"{prefix}-{i}" for i in range(5)]
    for name in names:
        account.get_queue(name).create(QueueMeta())

    first, marker = account.list_queue(prefix=prefix, ret_number=2)
    second, marker2 = account.list_queue(prefix=prefix, ret_number=2, marker=marker)
    third, marker3 = account.list_queue(prefix=prefix, ret_number=2, marker=marker2)

    listed = [url.rsplit("/", 1)[1] for url in first + second + third]
    assert listed == names
    assert marker == names[2]
    assert marker3 == ""
    for name in names:
        account.get_queue(name).delete()


def test_listing_with_meta_includes_each_queues_attributes(account: Account) -> None:
    name = unique_name("meta")
    account.get_queue(name).create(QueueMeta(vis_timeout=17))
    client = account.get_client()
    request, response = ListQueueRequest(prefix=name, with_meta=True), ListQueueResponse()
    client.list_queue(request, response)

    assert len(response.queuemeta_list) == 1
    assert response.queuemeta_list[0]["QueueName"] == name
    assert response.queuemeta_list[0]["VisibilityTimeout"] == "17"
    account.get_queue(name).delete()


def test_listing_more_than_a_thousand_per_page_is_invalid(account: Account) -> None:
    with pytest.raises(MNSServerException) as caught:
        account.list_queue(ret_number=1001)
    assert caught.value.type == "InvalidArgument"
