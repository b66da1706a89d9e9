"""Fault injection as the official SDK experiences it: 5xx, dropped connections, hangs, latency."""

from __future__ import annotations

import time

import pytest
from mns.mns_exception import MNSClientNetworkException, MNSServerException
from mns.queue import Message, Queue

from alicom_sandbox.testing import SandboxError, SandboxHandle


def test_an_error_rate_of_one_answers_every_request_with_a_5xx_error_xml(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    sandbox.set_faults(error_rate=1.0)
    codes = set()
    for _ in range(40):
        with pytest.raises(MNSServerException) as caught:
            queue.send_message(Message("x"))
        codes.add(caught.value.type)
        assert caught.value.req_id
    assert codes == {"InternalError", "ServiceUnavailable"}
    assert sandbox.state()["injected"]["error"] >= 40


def test_error_next_fails_exactly_the_next_requests(queue: Queue, sandbox: SandboxHandle) -> None:
    sandbox.set_faults(error_next=2)
    for _ in range(2):
        with pytest.raises(MNSServerException):
            queue.send_message(Message("x"))
    queue.send_message(Message("third try"))
    assert queue.receive_message().message_body == b"third try"


def test_a_drop_rate_of_one_closes_connections_without_an_answer(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    sandbox.set_faults(drop_rate=1.0)
    with pytest.raises(MNSClientNetworkException) as caught:
        queue.send_message(Message("x"))
    assert caught.value.type == "NetWorkException"
    # The SDK re-sends once on a connection closed before the status line: two drops.
    assert sandbox.state()["injected"]["drop"] == 2


def test_a_single_drop_is_hidden_by_the_sdks_own_resend(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    sandbox.set_faults(drop_next=1)
    queue.send_message(Message("x"))
    assert sandbox.state()["injected"]["drop"] == 1
    assert sandbox.queue_state(queue.queue_name)["active"] == 1


def test_a_hung_receive_never_answers_until_the_client_gives_up(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    queue.mns_client.set_connection_timeout(1)  # the SDK's socket timeout, in seconds
    queue.send_message(Message("x"))
    sandbox.set_faults(hang_rate=1.0)

    with pytest.raises(MNSClientNetworkException):
        queue.receive_message(0)

    queue.peek_message()  # only receives hang
    assert sandbox.state()["injected"]["hang"] >= 1
    assert sandbox.queue_state(queue.queue_name)["active"] == 1  # nothing was taken


def test_hang_next_hangs_one_receive_only(queue: Queue, sandbox: SandboxHandle) -> None:
    queue.mns_client.set_connection_timeout(1)
    queue.send_message(Message("x"))
    sandbox.set_faults(hang_next=1)
    with pytest.raises(MNSClientNetworkException):
        queue.receive_message(0)
    assert queue.receive_message(0).message_body == b"x"


def test_latency_delays_each_request_by_at_least_the_setting(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    sandbox.set_faults(latency_ms=300)
    started = time.monotonic()
    queue.send_message(Message("x"))
    elapsed = time.monotonic() - started
    assert elapsed >= 0.3  # a lower bound only: the server sleeps at least this long
    assert sandbox.state()["injected"]["latency"] >= 1


def test_the_admin_api_is_never_faulted(sandbox: SandboxHandle) -> None:
    sandbox.set_faults(error_rate=1.0, drop_rate=1.0, hang_rate=1.0)
    assert sandbox.state()["faults"]["error_rate"] == 1.0


def test_reset_turns_every_fault_off(queue: Queue, sandbox: SandboxHandle) -> None:
    sandbox.set_faults(error_rate=1.0, latency_ms=5, clock_skew_s=5, token_lifetime_s=30)
    state = sandbox.reset()
    assert state["faults"]["error_rate"] == 0.0
    assert state["faults"]["latency_ms"] == 0.0
    assert state["clock_skew_s"] == 0.0
    assert state["token_lifetime_s"] == 3600.0
    queue.send_message(Message("x"))


@pytest.mark.parametrize(
    "faults",
    [{"error_rate": 1.5}, {"drop_rate": -0.1}, {"latency_ms": "slow"}, {"no_such_fault": 1},
     {"token_lifetime_s": 0}],
    ids=["rate-above-one", "negative-rate", "not-a-number", "unknown", "zero-lifetime"],
)
def test_bad_fault_settings_are_refused_and_change_nothing(
    sandbox: SandboxHandle, faults: dict[str, object]
) -> None:
    with pytest.raises(SandboxError, match="400"):
        sandbox.admin("POST", "/_sandbox/faults", faults)
    assert sandbox.state()["faults"] == sandbox.reset()["faults"]
