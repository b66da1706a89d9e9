"""The receipt publisher: what it puts on the sandbox's queues, read back with the MNS SDK."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mns.queue import Message, Queue

from alicom_sandbox import publisher
from alicom_sandbox.fakes import KINDS, PUBLISHABLE_MALFORMED, message_type_of_kind
from alicom_sandbox.publisher import AuthError, PermanentError, Publisher
from alicom_sandbox.testing import SandboxHandle
from consumer.errors import DecodeError
from consumer.pipeline.decode import decode_body
from consumer.receipts import ReceiptMeta

# The platform's documented sample bodies, one per kind, kept here verbatim so the test
# depends on nothing outside the repository.
SAMPLES: dict[str, str] = {
    "SmsReport": '{"phone_number":"1381111****","send_time":"2017-01-01 00:00:00","report_time":"2017-01-01 00:00:00","success":true,"err_code":"DELIVERED","err_msg":"用户接收成功","sms_size":"1","biz_id":"12345********","out_id":"67890**"}',  # noqa: E501 - a verbatim sample
    "SmsReport-intl": '{"To":"8521234****","SendDate":"Thu, 25 Nov 2021 10:27:00 +0800","ReceiveDate":"Thu, 25 Nov 2021 10:27:33 +0800","Status":"1","SmsSize":"1","ErrorCode":"success","ErrorDescription":"success","MessageId":"123456789****"}',  # noqa: E501 - a verbatim sample
    "SmsUp": '{"phone_number":"1381111****","content":"内容","send_time":"2017-09-01 00:00:00","dest_code":"1234","sequence_id":1234567890}',  # noqa: E501 - a verbatim sample
    "SignSmsReport": '{"sign_source":"公众号","reason":"test","sign_name":"短信签名模版1957","order_id":"200****5184","sign_status":"approved","remark":"test","sign_scene":"SMS_123123242","create_date":"2019-05-30 19:58:25"}',  # noqa: E501 - a verbatim sample
    "TemplateSmsReport": '{"template_type":"验证码","reason":"test","template_name":"短信测试模板1957","order_id":"205101","template_content":"签名测试","template_status":"approved","remark":"test","template_code":"SMS_123123242","create_date":"2019-05-30 19:58:25"}',  # noqa: E501 - a verbatim sample
    "GlobeSmsReport": '{"to":"86134235****","status":"2","message_id":"12441353","send_date":"2017-06-01 10:00:00","receive_date":"2017-06-01 10:00:05","error_code":"SP_UNKNOW_ERROR","error_description":"运营商未知错误"}',  # noqa: E501 - a verbatim sample
    "MnsCardTemplate": '{"approval_status":2,"extData":{},"tmpOps":[{"state":2,"desc":"驳回","vendorCode":"MEIZU"},{"state":2,"desc":"驳回","vendorCode":"OPPO"}],"template_code":"CARD_SMS_****","desc":"**不通过:驳回"}',  # noqa: E501 - a verbatim sample
    "MnsCardVender": '{"mobile":"1368745****","outId":"205101","render_status":"0","desc":"审核通过"}',  # noqa: E501 - a verbatim sample
}
META = ReceiptMeta("mns", "q", "id", 1, 0, 0)


def _shape(obj: dict[str, Any]) -> dict[str, type]:
    return {key: type(value) for key, value in obj.items()}


@pytest.fixture
def platform(sandbox: SandboxHandle) -> Iterator[Publisher]:
    """A publisher on queues of its own: a random account id, its Alicom queues created."""
    account_id = f"{secrets.randbelow(10**15):015d}"
    pub = Publisher(
        sandbox.endpoint, sandbox.access_key_id, sandbox.access_key_secret, account_id=account_id
    )
    names = {pub.queue_name(message_type_of_kind(kind)) for kind in KINDS}
    for name in names:
        sandbox.create_queue(name, visibility_timeout_s=60)
    yield pub
    pub.close()
    account = sandbox.account()
    for name in names:
        account.get_queue(name).delete()


@pytest.fixture
def drain(sandbox: SandboxHandle) -> Callable[[str, int], list[Message]]:
    """Receives exactly `expected` messages (body text, as stored) from a queue."""

    def receive(name: str, expected: int) -> list[Message]:
        queue: Queue = sandbox.account().get_queue(name)
        queue.set_encoding(False)
        got: list[Message] = []
        while len(got) < expected:
            got.extend(queue.batch_receive_message(16, wait_seconds=1))
        return got

    return receive


@pytest.mark.parametrize("kind", KINDS)
def test_published_bodies_have_the_shape_of_the_documented_sample(
    kind: str, platform: Publisher, drain: Callable[[str, int], list[Message]]
) -> None:
    report = platform.publish(kind, 20, seed=7)
    received = drain(report.queue, 20)

    sample_shape = _shape(json.loads(SAMPLES[kind]))
    for message in received:
        obj = json.loads(base64.b64decode(message.message_body, validate=True).decode("utf-8"))
        assert _shape(obj) == sample_shape
        receipt = decode_body(
            message_type_of_kind(kind), message.message_body, message.message_body_md5, META
        )
        assert dict(receipt.raw) == obj


def test_the_md5_is_the_uppercase_hex_md5_of_the_base64_text(
    platform: Publisher, drain: Callable[[str, int], list[Message]]
) -> None:
    report = platform.publish("SmsReport", 5, seed=1)
    received = {m.message_id: m for m in drain(report.queue, 5)}

    for sent in report.messages:
        expected = hashlib.md5(sent.body.encode("ascii")).hexdigest().upper()
        assert sent.body_md5 == expected
        assert received[sent.message_id].message_body == sent.body
        assert received[sent.message_id].message_body_md5 == expected


def test_every_receipt_has_its_own_identity(platform: Publisher) -> None:
    report = platform.publish("SmsReport", 300, seed=3)
    keys = {(m.obj["biz_id"], m.obj["phone_number"]) for m in report.messages}
    assert len(keys) == 300
    assert len({m.obj["phone_number"] for m in report.messages}) == 300


def test_sms_reports_include_failed_deliveries_with_carrier_error_codes(
    platform: Publisher,
) -> None:
    report = platform.publish("SmsReport", 200, seed=13)
    failed = [m.obj for m in report.messages if not m.obj["success"]]
    delivered = [m.obj for m in report.messages if m.obj["success"]]

    assert failed and delivered
    assert all(r["err_code"] == "DELIVERED" for r in delivered)
    assert all(r["err_code"] != "DELIVERED" and r["err_msg"] for r in failed)
    assert {r["err_code"] for r in failed} & {"MK:0001", "IC:0015", "UNDELIV"}


def test_a_duplicate_repeats_an_earlier_body_under_a_new_message_id(
    platform: Publisher, drain: Callable[[str, int], list[Message]]
) -> None:
    report = platform.publish("SmsReport", 100, duplicate_rate=0.1, seed=11)
    received = {m.message_id: m for m in drain(report.queue, 100)}

    assert len(report.duplicates) == 10
    assert len(report.originals) == 90
    for dup in report.duplicates:
        assert dup.duplicate_of is not None
        original = report.messages[dup.duplicate_of]
        assert original.position < dup.position
        assert dup.message_id != original.message_id
        assert received[dup.message_id].message_body == received[original.message_id].message_body


def test_malformed_bodies_arrive_as_sent_and_fail_decoding_with_their_reason(
    platform: Publisher, drain: Callable[[str, int], list[Message]]
) -> None:
    report = platform.publish("SmsUp", 30, malformed=len(PUBLISHABLE_MALFORMED), seed=5)
    received = {m.message_id: m for m in drain(report.queue, 30)}

    assert sorted(m.malformed or "" for m in report.malformed) == sorted(PUBLISHABLE_MALFORMED)
    for bad in report.malformed:
        message = received[bad.message_id]
        assert message.message_body == bad.body
        with pytest.raises(DecodeError) as caught:
            decode_body("SmsUp", message.message_body, message.message_body_md5, META)
        assert caught.value.reason == bad.malformed


def test_the_same_seed_gives_the_same_bodies_in_the_same_order(platform: Publisher) -> None:
    first = platform.publish("SmsReport", 40, duplicate_rate=0.2, malformed=3, seed=9,
                             start_epoch_s=1.7e9)
    second = platform.publish("SmsReport", 40, duplicate_rate=0.2, malformed=3, seed=9,
                              start_epoch_s=1.7e9)
    assert [m.body for m in first.messages] == [m.body for m in second.messages]
    assert {m.message_id for m in first.messages}.isdisjoint(m.message_id for m in second.messages)


def test_more_duplicates_and_malformed_than_messages_is_refused(platform: Publisher) -> None:
    with pytest.raises(ValueError, match="no room"):
        platform.publish("SmsReport", 3, malformed=4)


def test_a_wrong_secret_is_an_auth_error(sandbox: SandboxHandle) -> None:
    with Publisher(sandbox.endpoint, sandbox.access_key_id, "wrong-secret") as pub, \
            pytest.raises(AuthError):
        pub.publish("SmsReport", 1)


def test_a_missing_queue_is_a_permanent_error(sandbox: SandboxHandle) -> None:
    with Publisher(sandbox.endpoint, sandbox.access_key_id, sandbox.access_key_secret,
                   account_id="999") as pub, pytest.raises(PermanentError):
        pub.publish("SmsReport", 1)


def test_the_command_publishes_and_prints_a_summary(
    sandbox: SandboxHandle,
    platform: Publisher,
    drain: Callable[[str, int], list[Message]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", sandbox.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", sandbox.access_key_secret)
    status = publisher.main([
        "--type", "SmsReport", "--count", "40", "--duplicate-rate", "0.05", "--malformed", "2",
        "--rate", "2000/s", "--endpoint", sandbox.endpoint, "--account-id", platform.account_id,
    ])

    assert status == 0
    out = capsys.readouterr().out
    assert "published 40 SmsReport messages" in out
    assert "2 duplicates, 2 malformed" in out
    assert len(drain(platform.queue_name("SmsReport"), 40)) == 40


def test_the_command_reports_a_refusal_and_exits_nonzero(
    sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "wrong-secret")
    status = publisher.main(["--count", "1", "--endpoint", sandbox.endpoint])
    assert status == 1
    err = capsys.readouterr().err
    assert "publish failed" in err
    assert "wrong-secret" not in err
