"""The sandbox's Dysmsapi (SendSms, SendBatchSms, QuerySendDetails) through the official SDK.

Every request is built and signed by `alibabacloud_dysmsapi20170525`; receipts are read back
through the official MNS SDK. Each test sends to its own account's queue (`OwnerId`), so
tests never see each other's receipts.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import random
import threading
from collections.abc import Iterator
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest
from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_dysmsapi20170525.models import (
    QuerySendDetailsRequest,
    QuerySendDetailsResponseBody,
    SendBatchSmsRequest,
    SendSmsRequest,
)
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.models import Config
from mns.mns_exception import MNSServerException

from alicom_sandbox.testing import SandboxHandle
from tests.e2e.harness import wait_until

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _client(sandbox: SandboxHandle) -> Client:
    return Client(Config(access_key_id=sandbox.access_key_id,
                         access_key_secret=sandbox.access_key_secret,
                         endpoint=sandbox.endpoint.removeprefix("http://"), protocol="http"))


def _today() -> str:
    return dt.datetime.now(SHANGHAI).strftime("%Y%m%d")


def _phones(count: int) -> list[str]:
    base = random.randrange(10**7, 9 * 10**7)
    return ["139%08d" % (base + i) for i in range(count)]


@pytest.fixture
def dysms(sandbox: SandboxHandle) -> Iterator[SandboxHandle]:
    """The sandbox with its sending side reset (records, counters, settings) after the test."""
    sandbox.admin("POST", "/_sandbox/dysms/reset", {})
    yield sandbox
    sandbox.admin("POST", "/_sandbox/dysms/reset", {})


@pytest.fixture
def account_id(dysms: SandboxHandle) -> Iterator[str]:
    """A fresh account with its SmsReport queue."""
    account = str(random.randrange(10**15, 10**16))
    dysms.create_queue(dysms.queue_name("SmsReport").replace(dysms.account_id, account))
    yield account
    dysms.account().get_queue("Alicom-Queue-%s-SmsReport" % account).delete()


def _settings(sandbox: SandboxHandle, **changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = sandbox.admin("POST", "/_sandbox/dysms", changes)
    return answer


def _receipts(sandbox: SandboxHandle, account_id: str, expected: int) -> list[dict[str, Any]]:
    """Receives (and deletes) SmsReport receipts until `expected` arrived."""
    queue = sandbox.account().get_queue("Alicom-Queue-%s-SmsReport" % account_id)
    queue.set_encoding(False)
    got: list[dict[str, Any]] = []

    def drain() -> bool:
        try:
            for message in queue.batch_receive_message(16, 1):
                got.append(json.loads(base64.b64decode(message.message_body)))
                queue.delete_message(message.receipt_handle)
        except MNSServerException as exc:
            if exc.type != "MessageNotExist":
                raise
        return len(got) >= expected

    wait_until(drain, 30, "%d receipts" % expected)
    return got


def _query(client: Client, phone: str, **kw: Any) -> QuerySendDetailsResponseBody:
    request = QuerySendDetailsRequest(phone_number=phone, send_date=kw.pop("send_date", _today()),
                                      page_size=kw.pop("page_size", 50),
                                      current_page=kw.pop("current_page", 1), **kw)
    body: QuerySendDetailsResponseBody = client.query_send_details(request).body
    return body


def test_send_sms_shares_one_biz_id_and_produces_one_receipt_per_number(
        dysms: SandboxHandle, account_id: str) -> None:
    phones = _phones(3)
    answer = _client(dysms).send_sms(SendSmsRequest(
        phone_numbers=",".join(phones), sign_name="沙箱", template_code="SMS_1",
        template_param='{"code":"1234"}', out_id="order-7", owner_id=int(account_id))).body
    assert answer.code == "OK"
    assert answer.biz_id
    receipts = _receipts(dysms, account_id, 3)
    assert sorted(r["phone_number"] for r in receipts) == sorted(phones)
    assert {r["biz_id"] for r in receipts} == {answer.biz_id}
    assert {r["out_id"] for r in receipts} == {"order-7"}
    for r in receipts:
        assert r["success"] is (r["err_code"] == "DELIVERED")
        assert isinstance(r["sms_size"], str)


def test_send_batch_sms_takes_json_arrays(dysms: SandboxHandle, account_id: str) -> None:
    phones = _phones(4)
    answer = _client(dysms).send_batch_sms(SendBatchSmsRequest(
        phone_number_json=json.dumps(phones), sign_name_json=json.dumps(["甲", "乙", "丙", "丁"]),
        template_code="SMS_2", template_param_json=json.dumps([{"n": str(i)} for i in range(4)]),
        owner_id=int(account_id))).body
    assert answer.code == "OK"
    receipts = _receipts(dysms, account_id, 4)
    assert sorted(r["phone_number"] for r in receipts) == sorted(phones)
    details = _query(_client(dysms), phones[1], biz_id=answer.biz_id)
    dto = details.sms_send_detail_dtos.sms_send_detail_dto[0]
    assert dto.content.startswith("【乙】SMS_2")
    assert dto.template_code == "SMS_2"


def test_bad_sends_get_the_documented_business_codes(dysms: SandboxHandle) -> None:
    client = _client(dysms)
    bad_number = client.send_sms(SendSmsRequest(phone_numbers="12ab", sign_name="s",
                                                template_code="SMS_1")).body
    assert bad_number.code == "isv.MOBILE_NUMBER_ILLEGAL"
    bad_json = client.send_sms(SendSmsRequest(phone_numbers=_phones(1)[0], sign_name="s",
                                              template_code="SMS_1", template_param="{x")).body
    assert bad_json.code == "isv.INVALID_JSON_PARAM"
    uneven = client.send_batch_sms(SendBatchSmsRequest(
        phone_number_json=json.dumps(_phones(2)), sign_name_json='["s"]',
        template_code="SMS_1")).body
    assert uneven.code == "isv.INVALID_PARAMETERS"
    with pytest.raises(ClientException) as missing:
        client.send_sms(SendSmsRequest(phone_numbers=_phones(1)[0], template_code="SMS_1"))
    assert missing.value.code == "MissingSignName"


def test_query_send_details_waits_then_settles(dysms: SandboxHandle, account_id: str) -> None:
    _settings(dysms, report_delay_min_s=0.5, report_delay_max_s=0.5, failure_rate=1.0)
    client = _client(dysms)
    phone = _phones(1)[0]
    biz_id = client.send_sms(SendSmsRequest(phone_numbers="+86" + phone, sign_name="s",
                                            template_code="SMS_1", out_id="o1",
                                            owner_id=int(account_id))).body.biz_id
    first = _query(client, phone, biz_id=biz_id)
    assert first.code == "OK"
    assert first.total_count == "1"
    waiting = first.sms_send_detail_dtos.sms_send_detail_dto[0]
    assert (waiting.send_status, waiting.phone_num, waiting.out_id) == (1, phone, "o1")
    [receipt] = _receipts(dysms, account_id, 1)
    settled = _query(client, phone, biz_id=biz_id).sms_send_detail_dtos.sms_send_detail_dto[0]
    assert settled.send_status == 2
    assert settled.err_code == receipt["err_code"] != "DELIVERED"
    assert settled.receive_date == receipt["report_time"]
    assert settled.send_date == receipt["send_time"]


def test_query_send_details_pages_through_a_numbers_sends(dysms: SandboxHandle) -> None:
    client = _client(dysms)
    phone = _phones(1)[0]
    biz_ids = [client.send_sms(SendSmsRequest(phone_numbers=phone, sign_name="s",
                                              template_code="SMS_%d" % i)).body.biz_id
               for i in range(7)]
    pages = [_query(client, phone, page_size=3, current_page=n) for n in (1, 2, 3, 4)]
    assert {p.total_count for p in pages} == {"7"}
    codes = [d.template_code for p in pages[:3] for d in p.sms_send_detail_dtos.sms_send_detail_dto]
    assert codes == ["SMS_%d" % i for i in range(7)]
    assert pages[3].sms_send_detail_dtos.sms_send_detail_dto == []
    one = _query(client, phone, biz_id=biz_ids[4])
    assert one.total_count == "1"
    assert one.sms_send_detail_dtos.sms_send_detail_dto[0].template_code == "SMS_4"
    yesterday = (dt.datetime.now(SHANGHAI) - dt.timedelta(days=1)).strftime("%Y%m%d")
    assert _query(client, phone, send_date=yesterday).total_count == "0"


def test_query_send_details_refuses_bad_paging_and_old_dates(dysms: SandboxHandle) -> None:
    client = _client(dysms)
    phone = _phones(1)[0]
    assert _query(client, phone, page_size=51).code == "isv.INVALID_PARAMETERS"
    old = (dt.datetime.now(SHANGHAI) - dt.timedelta(days=31)).strftime("%Y%m%d")
    assert _query(client, phone, send_date=old).code == "isv.INVALID_PARAMETERS"
    with pytest.raises(ClientException) as missing:
        client.query_send_details(QuerySendDetailsRequest(phone_number=phone, page_size=10,
                                                          current_page=1))
    assert missing.value.code == "MissingSendDate"


def test_flow_control_past_the_configured_qps(dysms: SandboxHandle) -> None:
    # 0.1 a second holds one token: the first query passes, the next ones within 10 s do not.
    _settings(dysms, query_qps=0.1)
    client = _client(dysms)
    phone = _phones(1)[0]
    codes = [_query(client, phone).code for _ in range(3)]
    assert codes[0] == "OK"
    assert codes[1:] == ["isv.BUSINESS_LIMIT_CONTROL"] * 2
    _settings(dysms, throttle="gateway")
    with pytest.raises(ClientException) as throttled:
        _query(client, phone)
    assert throttled.value.code == "Throttling.User"
    assert throttled.value.status_code == 429


def test_lost_receipts_are_settled_but_never_delivered(dysms: SandboxHandle,
                                                       account_id: str) -> None:
    _settings(dysms, loss_rate=1.0, account_id=account_id, seed=3)
    client = _client(dysms)
    phones = _phones(2)
    biz_id = client.send_sms(SendSmsRequest(phone_numbers=",".join(phones), sign_name="s",
                                            template_code="SMS_1")).body.biz_id
    wait_until(lambda: dysms.admin("GET", "/_sandbox/dysms")["counters"].get("lost") == 2,
               30, "both receipts lost")
    lost = dysms.admin("GET", "/_sandbox/dysms/lost")
    assert sorted(x["phone_number"] for x in lost) == sorted(phones)
    assert {x["biz_id"] for x in lost} == {biz_id}
    statuses = [d.send_status for p in phones
                for d in _query(client, p, biz_id=biz_id).sms_send_detail_dtos.sms_send_detail_dto]
    assert len(statuses) == 2 and set(statuses) <= {2, 3}
    assert dysms.queue_state("Alicom-Queue-%s-SmsReport" % account_id)["active"] == 0
    assert dysms.admin("POST", "/_sandbox/dysms/deliver-lost", {}) == {"delivered": 2}
    assert len(_receipts(dysms, account_id, 2)) == 2


def test_duplicates_deliver_the_same_receipt_twice(dysms: SandboxHandle, account_id: str) -> None:
    _settings(dysms, duplicate_rate=1.0, account_id=account_id)
    phone = _phones(1)[0]
    _client(dysms).send_sms(SendSmsRequest(phone_numbers=phone, sign_name="s",
                                           template_code="SMS_1"))
    first, second = _receipts(dysms, account_id, 2)
    assert first == second


def test_admin_refuses_unknown_settings_and_bad_rates(dysms: SandboxHandle) -> None:
    for body in ({"nope": 1}, {"loss_rate": 2}, {"throttle": "x"}):
        with pytest.raises(Exception, match="400"):
            _settings(dysms, **body)
    assert dysms.admin("GET", "/_sandbox/dysms")["settings"]["loss_rate"] == 0.0


class _PushSink(http.server.BaseHTTPRequestHandler):
    """Answers pushes as a receiver does: {"code":0} (after `refuse` refusals with a 500)."""

    bodies: ClassVar[list[Any]] = []
    refuse: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        refused = _PushSink.refuse > 0
        _PushSink.refuse -= 1
        if not refused:
            _PushSink.bodies.append(body)
        answer = json.dumps({"code": 0, "msg": "接收成功"}).encode()
        self.send_response(500 if refused else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def test_receipts_can_be_pushed_to_a_url_and_are_pushed_again_when_refused(
        dysms: SandboxHandle) -> None:
    _PushSink.bodies, _PushSink.refuse = [], 1
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PushSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _settings(dysms, push_url="http://127.0.0.1:%d/alicom/SmsReport" % server.server_port,
                  push_retry_s=[0.1])
        phones = _phones(2)
        biz_id = _client(dysms).send_sms(SendSmsRequest(
            phone_numbers=",".join(phones), sign_name="s", template_code="SMS_1")).body.biz_id
        wait_until(lambda: len(_PushSink.bodies) == 2, 30, "two pushes")
    finally:
        server.shutdown()
        server.server_close()
    assert all(isinstance(b, list) and len(b) == 1 for b in _PushSink.bodies)
    assert sorted(b[0]["phone_number"] for b in _PushSink.bodies) == sorted(phones)
    assert {b[0]["biz_id"] for b in _PushSink.bodies} == {biz_id}
    counters = dysms.admin("GET", "/_sandbox/dysms")["counters"]
    assert (counters["delivered"], counters["push_retries"]) == (2, 1)
