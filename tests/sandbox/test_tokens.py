"""The sandbox's Dybaseapi token API, driven through the official Tea SDK client.

Every request here is built and signed by `alibabacloud_dybaseapi20170525` (or by the generic
`alibabacloud_tea_openapi` client for actions Dybaseapi does not have), and the credentials it
hands out are used through the official MNS SDK. The two tests that send hand-written HTTP
say why in their docstrings.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from alibabacloud_dybaseapi20170525.client import Client
from alibabacloud_dybaseapi20170525.models import (
    QueryTokenForMnsQueueRequest,
    QueryTokenForMnsQueueResponseBodyMessageTokenDTO,
)
from alibabacloud_tea_openapi.client import Client as OpenApiClient
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.utils import Utils
from alibabacloud_tea_openapi.utils_models import Config, OpenApiRequest, Params
from alibabacloud_tea_util.models import RuntimeOptions
from darabonba.request import DaraRequest
from mns.account import Account
from mns.mns_exception import MNSServerException
from mns.queue import Message, Queue

from alicom_sandbox.nonces import NonceCache
from alicom_sandbox.testing import SandboxHandle

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _host(sandbox: SandboxHandle) -> str:
    return sandbox.endpoint.removeprefix("http://")


def _client(sandbox: SandboxHandle, **credentials: str) -> Client:
    config = Config(
        access_key_id=credentials.get("access_key_id", sandbox.access_key_id),
        access_key_secret=credentials.get("access_key_secret", sandbox.access_key_secret),
        security_token=credentials.get("security_token"),
        endpoint=_host(sandbox),
        protocol="http",
    )
    return Client(config)


def _token(
    sandbox: SandboxHandle, message_type: str, queue: str | None = None
) -> QueryTokenForMnsQueueResponseBodyMessageTokenDTO:
    answer = _client(sandbox).query_token_for_mns_queue(
        QueryTokenForMnsQueueRequest(message_type=message_type, queue_name=queue)
    )
    assert answer.status_code == 200
    assert answer.body.code == "OK", answer.body.to_map()
    token: QueryTokenForMnsQueueResponseBodyMessageTokenDTO = answer.body.message_token_dto
    return token


def _token_account(
    sandbox: SandboxHandle, token: QueryTokenForMnsQueueResponseBodyMessageTokenDTO
) -> Account:
    return Account(
        sandbox.endpoint, token.access_key_id, token.access_key_secret, token.security_token
    )


def _refusal(call: Callable[[], Any]) -> ClientException:
    with pytest.raises(ClientException) as caught:
        call()
    return caught.value


@pytest.fixture
def alicom_queue(sandbox: SandboxHandle) -> Iterator[Callable[[str], str]]:
    """Creates `Alicom-Queue-<random account>-<type>` queues, so tests never share messages."""
    created: list[str] = []

    def make(message_type: str) -> str:
        name = f"Alicom-Queue-{secrets.randbelow(10**15):015d}-{message_type}"
        sandbox.create_queue(name, visibility_timeout_s=30)
        created.append(name)
        return name

    yield make
    account = sandbox.account()
    for name in created:
        account.get_queue(name).delete()


def _receive_all(queue: Queue, expected: int) -> list[Message]:
    got: list[Message] = []
    while len(got) < expected:
        got.extend(queue.batch_receive_message(16, wait_seconds=1))
    return got


# ---- the happy path -----------------------------------------------------------------------


def test_a_token_for_sms_report_receives_and_deletes_on_its_queue(
    sandbox: SandboxHandle, alicom_queue: Callable[[str], str]
) -> None:
    name = alicom_queue("SmsReport")
    platform = sandbox.account().get_queue(name)
    platform.set_encoding(False)
    platform.batch_send_message([Message("eyJhIjoxfQ=="), Message("eyJiIjoyfQ==")])

    token = _token(sandbox, "SmsReport", name)
    assert token.access_key_id.startswith("STS.")
    queue = _token_account(sandbox, token).get_queue(name)
    queue.set_encoding(False)
    messages = _receive_all(queue, 2)
    queue.batch_delete_message([m.receipt_handle for m in messages])

    assert sorted(m.message_body for m in messages) == ["eyJhIjoxfQ==", "eyJiIjoyfQ=="]
    assert sandbox.queue_state(name)["active"] == 0
    assert sandbox.queue_state(name)["inactive"] == 0


def test_expire_time_is_shanghai_wall_time_and_matches_the_configured_lifetime(
    sandbox: SandboxHandle,
) -> None:
    sandbox.set_token_lifetime(600)
    token = _token(sandbox, "SmsUp")

    fmt = "%Y-%m-%d %H:%M:%S"
    created = dt.datetime.strptime(token.create_time, fmt).replace(tzinfo=SHANGHAI)
    expires = dt.datetime.strptime(token.expire_time, fmt).replace(tzinfo=SHANGHAI)
    now = dt.datetime.now(dt.timezone.utc)
    assert (expires - created).total_seconds() == pytest.approx(600, abs=1)
    # Read as Shanghai time, CreateTime is "now"; read as UTC it would be 8 hours off.
    assert abs((created - now).total_seconds()) < 300


def test_every_call_gives_a_new_credential(sandbox: SandboxHandle) -> None:
    first = _token(sandbox, "SmsReport")
    second = _token(sandbox, "SmsReport")
    assert first.access_key_id != second.access_key_id
    assert first.security_token != second.security_token


# ---- what MNS does with the token ---------------------------------------------------------


def test_a_token_for_sms_report_cannot_read_the_sms_up_queue(
    sandbox: SandboxHandle, alicom_queue: Callable[[str], str]
) -> None:
    sms_up = alicom_queue("SmsUp")
    token = _token(sandbox, "SmsReport")
    queue = _token_account(sandbox, token).get_queue(sms_up)

    with pytest.raises(MNSServerException) as caught:
        queue.batch_receive_message(16, wait_seconds=0)
    assert caught.value.type == "AccessDenied"


def test_an_expired_token_is_refused_by_mns(
    sandbox: SandboxHandle, alicom_queue: Callable[[str], str]
) -> None:
    name = alicom_queue("SmsReport")
    sandbox.set_token_lifetime(2)
    token = _token(sandbox, "SmsReport")
    queue = _token_account(sandbox, token).get_queue(name)
    with pytest.raises(MNSServerException) as empty:
        queue.batch_receive_message(16, wait_seconds=0)
    assert empty.value.type == "MessageNotExist"  # valid while fresh

    # Move the server's clock past ExpireTime instead of sleeping through the 2 s.
    sandbox.set_clock_skew(5)
    with pytest.raises(MNSServerException) as expired:
        queue.batch_receive_message(16, wait_seconds=0)
    assert expired.value.type == "SecurityTokenExpired"


# ---- refusals, with the codes Alibaba's OpenAPI uses -----------------------------------------


def test_a_wrong_secret_is_refused_with_signature_does_not_match(sandbox: SandboxHandle) -> None:
    client = _client(sandbox, access_key_secret="not-the-secret")
    err = _refusal(lambda: client.query_token_for_mns_queue(
        QueryTokenForMnsQueueRequest(message_type="SmsReport")))
    assert (err.code, err.status_code) == ("SignatureDoesNotMatch", 400)
    assert "not-the-secret" not in str(err.data)


def test_an_unknown_access_key_is_refused_as_not_found(sandbox: SandboxHandle) -> None:
    client = _client(sandbox, access_key_id="LTAInobodyKnowsMe")
    err = _refusal(lambda: client.query_token_for_mns_queue(
        QueryTokenForMnsQueueRequest(message_type="SmsReport")))
    assert (err.code, err.status_code) == ("InvalidAccessKeyId.NotFound", 404)
    assert err.data["HostId"] == "dybaseapi.aliyuncs.com"
    assert err.request_id == err.data["RequestId"]


def test_a_temporary_token_may_not_ask_for_more_tokens(sandbox: SandboxHandle) -> None:
    token = _token(sandbox, "SmsReport")
    client = _client(
        sandbox,
        access_key_id=token.access_key_id,
        access_key_secret=token.access_key_secret,
        security_token=token.security_token,
    )
    err = _refusal(lambda: client.query_token_for_mns_queue(
        QueryTokenForMnsQueueRequest(message_type="SmsReport")))
    assert (err.code, err.status_code) == ("Forbidden.RAM", 403)


def test_a_request_without_message_type_is_refused(sandbox: SandboxHandle) -> None:
    err = _refusal(lambda: _client(sandbox).query_token_for_mns_queue(
        QueryTokenForMnsQueueRequest()))
    assert (err.code, err.status_code) == ("MissingMessageType", 400)


def test_an_unknown_message_type_is_a_business_error_in_a_200(sandbox: SandboxHandle) -> None:
    answer = _client(sandbox).query_token_for_mns_queue(
        QueryTokenForMnsQueueRequest(message_type="FaxReport"))
    assert answer.status_code == 200
    assert answer.body.code not in (None, "OK")
    assert answer.body.message_token_dto is None


def test_a_queue_name_of_another_message_type_is_a_business_error(
    sandbox: SandboxHandle,
) -> None:
    answer = _client(sandbox).query_token_for_mns_queue(QueryTokenForMnsQueueRequest(
        message_type="SmsReport", queue_name=sandbox.queue_name("SmsUp")))
    assert answer.status_code == 200
    assert answer.body.code != "OK"
    assert answer.body.message_token_dto is None


def test_a_stale_date_is_refused(sandbox: SandboxHandle) -> None:
    # The server's clock runs 20 minutes ahead: the SDK's x-acs-date is outside 15 minutes.
    sandbox.set_clock_skew(1200)
    err = _refusal(lambda: _client(sandbox).query_token_for_mns_queue(
        QueryTokenForMnsQueueRequest(message_type="SmsReport")))
    assert (err.code, err.status_code) == ("InvalidTimeStamp.Expired", 400)


def _call_generic(sandbox: SandboxHandle, action: str, version: str) -> Any:
    """An OpenAPI call through the official generic client (signed the same way)."""
    config = Config(
        access_key_id=sandbox.access_key_id,
        access_key_secret=sandbox.access_key_secret,
        endpoint=_host(sandbox),
        protocol="http",
    )
    params = Params(
        action=action, version=version, protocol="HTTP", pathname="/", method="POST",
        auth_type="AK", style="RPC", req_body_type="formData", body_type="json",
    )
    request = OpenApiRequest(query={"MessageType": "SmsReport"})
    return OpenApiClient(config).call_api(params, request, RuntimeOptions())


def test_an_unknown_action_is_refused_as_not_found(sandbox: SandboxHandle) -> None:
    err = _refusal(lambda: _call_generic(sandbox, "QueryTokenForEverything", "2017-05-25"))
    assert (err.code, err.status_code) == ("InvalidAction.NotFound", 404)


def test_a_wrong_api_version_is_refused(sandbox: SandboxHandle) -> None:
    err = _refusal(lambda: _call_generic(sandbox, "QueryTokenForMnsQueue", "2099-01-01"))
    assert (err.code, err.status_code) == ("InvalidVersion", 400)


def test_the_generic_client_gets_the_same_token_answer(sandbox: SandboxHandle) -> None:
    answer = _call_generic(sandbox, "QueryTokenForMnsQueue", "2017-05-25")
    assert answer["body"]["Code"] == "OK"
    assert answer["body"]["MessageTokenDTO"]["AccessKeyId"].startswith("STS.")


# ---- requests the SDK will not produce: replays and tampering --------------------------------


def _signed(sandbox: SandboxHandle, query: dict[str, str]) -> tuple[str, dict[str, str]]:
    """URL and headers of a QueryTokenForMnsQueue request signed by the SDK's own signer."""
    request = DaraRequest()
    request.method = "POST"
    request.pathname = "/"
    request.query = dict(query)
    request.headers = {
        "host": _host(sandbox),
        "x-acs-version": "2017-05-25",
        "x-acs-action": "QueryTokenForMnsQueue",
        "x-acs-date": Utils.get_timestamp(),
        "x-acs-signature-nonce": Utils.get_nonce(),
        "accept": "application/json",
    }
    payload = Utils.hash(b"", "ACS3-HMAC-SHA256").hex()
    request.headers["x-acs-content-sha256"] = payload
    request.headers["Authorization"] = Utils.get_authorization(
        request, "ACS3-HMAC-SHA256", payload, sandbox.access_key_id, sandbox.access_key_secret
    )
    return sandbox.endpoint + "/", request.headers


def test_a_replayed_request_is_refused(sandbox: SandboxHandle) -> None:
    """The Tea client draws a new nonce for every request, so it cannot replay one: this test
    signs one request with the SDK's own signer and sends the identical bytes twice."""
    url, headers = _signed(sandbox, {"MessageType": "SmsReport"})
    query = {"MessageType": "SmsReport"}

    first = requests.post(url, params=query, headers=headers, timeout=10)
    replay = requests.post(url, params=query, headers=headers, timeout=10)

    assert first.status_code == 200 and first.json()["Code"] == "OK"
    assert replay.status_code == 400
    assert replay.json()["Code"] == "SignatureNonceUsed"


def test_a_parameter_changed_after_signing_breaks_the_signature(sandbox: SandboxHandle) -> None:
    """The Tea client signs exactly what it sends, so it cannot tamper: this test signs for
    SmsReport with the SDK's own signer and sends SmsUp."""
    url, headers = _signed(sandbox, {"MessageType": "SmsReport"})
    tampered = requests.post(url, params={"MessageType": "SmsUp"}, headers=headers, timeout=10)
    assert tampered.status_code == 400
    body = tampered.json()
    assert body["Code"] == "SignatureDoesNotMatch"
    assert set(body) == {"RequestId", "HostId", "Code", "Message", "Recommend"}


# ---- replay memory stays bounded --------------------------------------------------------------


def test_the_nonce_memory_forgets_nonces_once_their_dates_are_stale() -> None:
    cache = NonceCache(max_entries=100)
    assert cache.check_and_record("n1", now=1000.0, keep_s=60.0)
    assert not cache.check_and_record("n1", now=1059.0, keep_s=60.0)
    assert cache.check_and_record("n2", now=1061.0, keep_s=60.0)
    assert len(cache) == 1  # n1 expired and was dropped


def test_the_nonce_memory_never_grows_past_its_bound() -> None:
    cache = NonceCache(max_entries=100)
    for i in range(1000):
        assert cache.check_and_record(f"n{i}", now=1000.0, keep_s=60.0)
    assert len(cache) == 100
    assert not cache.check_and_record("n999", now=1000.0, keep_s=60.0)
