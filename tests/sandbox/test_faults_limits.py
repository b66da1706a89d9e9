"""The long-poll cap and the token API's faults, as the official SDKs experience them."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from alibabacloud_dybaseapi20170525.client import Client
from alibabacloud_dybaseapi20170525.models import QueryTokenForMnsQueueRequest
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
from alibabacloud_tea_openapi.utils_models import Config
from alibabacloud_tea_util.models import RuntimeOptions
from mns.mns_exception import MNSServerException
from mns.queue import Message, Queue

from alicom_sandbox.testing import SandboxHandle, running_sandbox


def test_past_the_long_poll_cap_a_receive_is_answered_at_once_with_message_not_exist(
        queue: Queue, sandbox: SandboxHandle) -> None:
    sandbox.set_faults(max_long_polls=1)
    held: list[BaseException | None] = []
    other = sandbox.account().get_queue(queue.queue_name)  # the SDK is not thread-safe

    def hold() -> None:
        try:
            other.receive_message(wait_seconds=3)
        except MNSServerException as exc:  # empty after its 3 s: MessageNotExist
            held.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.5)  # the first poll is held by now
    started = time.monotonic()
    with pytest.raises(MNSServerException) as caught:
        queue.receive_message(wait_seconds=3)
    refused_after = time.monotonic() - started
    holder.join(10)
    assert caught.value.type == "MessageNotExist"
    assert caught.value.message == "Message not exist."
    assert refused_after < 2, "the second poll was held (%.2f s)" % refused_after
    assert sandbox.state()["injected"]["long_poll_refused"] == 1
    assert [getattr(e, "type", None) for e in held] == ["MessageNotExist"]


def test_a_refused_long_poll_still_gets_what_the_queue_holds(
        queue: Queue, sandbox: SandboxHandle) -> None:
    sandbox.set_faults(max_long_polls=1)
    other = sandbox.account().get_queue(queue.queue_name)  # the SDK is not thread-safe
    holder = threading.Thread(target=lambda: _ignore(lambda: other.receive_message(
        wait_seconds=2)))
    holder.start()
    time.sleep(0.5)
    queue.send_message(Message("there"))  # the held poll takes it, or ...
    queue.send_message(Message("also there"))  # ... this one stays for the refused poll
    got = queue.receive_message(wait_seconds=3)
    holder.join(10)
    assert got.message_body in (b"there", b"also there")


def _ignore(call: object) -> None:
    with contextlib.suppress(MNSServerException):
        call()  # type: ignore[operator]


def _token_client(sandbox: SandboxHandle,
                  read_timeout_ms: int = 10_000) -> tuple[Client, RuntimeOptions]:
    config = Config(access_key_id=sandbox.access_key_id,
                    access_key_secret=sandbox.access_key_secret,
                    endpoint=sandbox.endpoint.removeprefix("http://"), protocol="http")
    return Client(config), RuntimeOptions(read_timeout=read_timeout_ms, connect_timeout=2000,
                                          autoretry=False)


def _query(sandbox: SandboxHandle, read_timeout_ms: int = 10_000) -> object:
    client, runtime = _token_client(sandbox, read_timeout_ms)
    return client.query_token_for_mns_queue_with_options(
        QueryTokenForMnsQueueRequest(message_type="SmsReport"), runtime)


@pytest.mark.parametrize(("fault", "codes", "statuses"), [
    ("token_error_next", {"InternalError", "ServiceUnavailable"}, {500, 503}),
    ("token_throttle_next", {"Throttling.User"}, {429}),
])
def test_token_api_faults_are_the_gateways_error_answers(
        sandbox: SandboxHandle, fault: str, codes: set[str], statuses: set[int]) -> None:
    sandbox.set_faults(**{fault: 1})
    with pytest.raises(AlibabaCloudException) as caught:
        _query(sandbox)
    assert caught.value.code in codes
    assert caught.value.status_code in statuses
    kind = fault.removesuffix("_next")
    assert sandbox.state()["injected"][kind] == 1
    answer = _query(sandbox)  # exactly one was faulted
    assert answer.body.code == "OK"  # type: ignore[attr-defined]


def test_a_hung_token_request_never_answers_until_the_client_gives_up(
        sandbox: SandboxHandle) -> None:
    sandbox.set_faults(token_hang_next=1)
    started = time.monotonic()
    with pytest.raises(Exception) as caught:  # the SDK's timeout type varies
        _query(sandbox, read_timeout_ms=1000)
    assert time.monotonic() - started >= 0.9
    assert "timed out" in str(caught.value).lower() or "timeout" in str(caught.value).lower()
    assert sandbox.state()["injected"]["token_hang"] == 1


def test_token_latency_is_added_and_faults_are_settable_at_start() -> None:
    with running_sandbox(token_latency_ms=300, token_throttle_rate=1.0) as sandbox:
        assert sandbox.state()["faults"]["token_throttle_rate"] == 1.0
        started = time.monotonic()
        with pytest.raises(AlibabaCloudException) as caught:
            _query(sandbox)
        assert time.monotonic() - started >= 0.3
        assert caught.value.code == "Throttling.User"
        assert sandbox.state()["injected"]["token_latency"] == 1
