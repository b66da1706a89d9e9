"""Authentication and authorization through the official SDK: signatures, dates, STS tokens.

Temporary credentials come from the credential store through the admin API here, so these
tests do not depend on the token API (which has its own tests).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mns.account import Account
from mns.auth import Credentials, CredentialsProvider
from mns.mns_exception import MNSServerException
from mns.queue import Message, QueueMeta

from alicom_sandbox.testing import SandboxHandle
from tests.sandbox.conftest import unique_name


@pytest.fixture
def message_type(sandbox: SandboxHandle) -> Iterator[str]:
    """A fresh MessageType with its Alicom queue, created by the root key (the platform)."""
    name = "T" + uuid.uuid4().hex[:10]
    sandbox.create_queue(sandbox.queue_name(name), visibility_timeout_s=2)
    yield name
    sandbox.account().get_queue(sandbox.queue_name(name)).delete()


def temporary_account(sandbox: SandboxHandle, credential: dict[str, Any]) -> Account:
    return Account(
        sandbox.endpoint,
        credential["access_key_id"],
        credential["access_key_secret"],
        credential["security_token"],
    )


def server_error(call: Callable[[], Any]) -> MNSServerException:
    with pytest.raises(MNSServerException) as caught:
        call()
    return caught.value


def test_a_wrong_secret_is_signature_does_not_match(sandbox: SandboxHandle) -> None:
    account = Account(sandbox.endpoint, sandbox.access_key_id, "not-the-secret")
    error = server_error(account.list_queue)
    assert error.type == "SignatureDoesNotMatch"


def test_an_unknown_access_key_id_is_invalid_access_key_id(sandbox: SandboxHandle) -> None:
    account = Account(sandbox.endpoint, "LTAInobodyKnowsMe", sandbox.access_key_secret)
    assert server_error(account.list_queue).type == "InvalidAccessKeyId"


# Not 901: the Date header has whole seconds, so a 901 s skew can read as 900 s, inside.
@pytest.mark.parametrize("skew_s", [905, -905])
def test_a_date_outside_fifteen_minutes_of_server_time_is_time_expired(
    sandbox: SandboxHandle, account: Account, skew_s: int
) -> None:
    sandbox.set_clock_skew(skew_s)
    assert server_error(account.list_queue).type == "TimeExpired"


def test_a_date_within_the_window_is_accepted(sandbox: SandboxHandle, account: Account) -> None:
    sandbox.set_clock_skew(600)
    urls, _ = account.list_queue(prefix="Alicom-Queue-")
    assert urls


def test_a_temporary_credential_may_consume_its_own_queue(
    sandbox: SandboxHandle, message_type: str
) -> None:
    queue_name = sandbox.queue_name(message_type)
    sandbox.account().get_queue(queue_name).batch_send_message([Message("a"), Message("b")])
    queue = temporary_account(sandbox, sandbox.issue_credential(message_type)).get_queue(
        queue_name
    )

    assert queue.get_attributes().queue_name == queue_name
    assert queue.peek_message().message_body == b"a"
    first = queue.receive_message()
    queue.delete_message(first.receipt_handle)
    [second] = queue.batch_receive_message(16)
    changed = queue.change_message_visibility(second.receipt_handle, 5)
    queue.batch_delete_message([changed.receipt_handle])
    assert sandbox.queue_state(queue_name)["inactive"] == 0


def test_a_temporary_credential_may_not_touch_another_types_queue(
    sandbox: SandboxHandle, message_type: str
) -> None:
    account = temporary_account(sandbox, sandbox.issue_credential(message_type))
    other = account.get_queue(sandbox.queue_name("SmsUp"))
    assert server_error(lambda: other.receive_message(0)).type == "AccessDenied"
    assert server_error(other.get_attributes).type == "AccessDenied"


def test_a_temporary_credential_may_not_do_the_platforms_work(
    sandbox: SandboxHandle, message_type: str
) -> None:
    account = temporary_account(sandbox, sandbox.issue_credential(message_type))
    own = account.get_queue(sandbox.queue_name(message_type))
    forbidden = [
        lambda: own.send_message(Message("x")),
        lambda: own.set_attributes(QueueMeta(vis_timeout=5)),
        own.delete,
        account.list_queue,
        lambda: account.get_queue(unique_name()).create(QueueMeta()),
    ]
    for call in forbidden:
        assert server_error(call).type == "AccessDenied"


def test_a_temporary_credential_without_its_security_token_is_denied(
    sandbox: SandboxHandle, message_type: str
) -> None:
    credential = sandbox.issue_credential(message_type)
    account = Account(
        sandbox.endpoint, credential["access_key_id"], credential["access_key_secret"]
    )
    queue = account.get_queue(sandbox.queue_name(message_type))
    assert server_error(lambda: queue.receive_message(0)).type == "AccessDenied"


def test_a_temporary_credential_with_another_tokens_value_is_denied(
    sandbox: SandboxHandle, message_type: str
) -> None:
    credential = sandbox.issue_credential(message_type)
    other = sandbox.issue_credential(message_type)
    credential["security_token"] = other["security_token"]
    queue = temporary_account(sandbox, credential).get_queue(sandbox.queue_name(message_type))
    assert server_error(lambda: queue.receive_message(0)).type == "AccessDenied"


def test_a_temporary_credential_expires_after_the_token_lifetime(
    sandbox: SandboxHandle, message_type: str
) -> None:
    sandbox.set_token_lifetime(60)
    credential = sandbox.issue_credential(message_type)
    queue = temporary_account(sandbox, credential).get_queue(sandbox.queue_name(message_type))
    assert server_error(lambda: queue.receive_message(0)).type == "MessageNotExist"  # valid

    sandbox.set_clock_skew(61)

    assert server_error(lambda: queue.receive_message(0)).type == "SecurityTokenExpired"


class RotatingCredentials(CredentialsProvider):  # type: ignore[misc]  # the SDK is untyped
    """Asks the sandbox for a new temporary credential whenever told to refresh."""

    def __init__(self, sandbox: SandboxHandle, message_type: str) -> None:
        self._sandbox = sandbox
        self._message_type = message_type
        self.refresh()

    def refresh(self) -> None:
        c = self._sandbox.issue_credential(self._message_type)
        self._current = Credentials(c["access_key_id"], c["access_key_secret"], c["security_token"])

    def get_credentials(self) -> Credentials:
        return self._current


def test_an_expired_token_is_cured_by_a_new_one_without_a_new_client(
    sandbox: SandboxHandle, message_type: str
) -> None:
    sandbox.set_token_lifetime(60)
    provider = RotatingCredentials(sandbox, message_type)
    account = Account(sandbox.endpoint, credentials_provider=provider)
    queue = account.get_queue(sandbox.queue_name(message_type))
    sandbox.set_clock_skew(61)
    assert server_error(lambda: queue.receive_message(0)).type == "SecurityTokenExpired"

    provider.refresh()  # issued on the skewed clock: valid for another 60 s

    assert server_error(lambda: queue.receive_message(0)).type == "MessageNotExist"
