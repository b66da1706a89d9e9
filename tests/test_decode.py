"""decode_body / parse_object / parse_json: the documented samples decode to typed receipts
(every bad input and its reason: test_decode_refusals)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from consumer.keys import business_key
from consumer.pipeline.decode import decode_body, parse_json, parse_object
from consumer.receipts import (
    CardVendorOp,
    GlobeSmsReport,
    IntlSmsReport,
    MnsCardTemplate,
    MnsCardVender,
    Receipt,
    ReceiptMeta,
    SignSmsReport,
    SmsReport,
    SmsUp,
    TemplateSmsReport,
)
from consumer.testing import SAMPLES_DIR

META = ReceiptMeta("mns", "Alicom-Queue-1-SmsReport", "MSG-1", 1, 1000, 1001)

# The documented samples, verbatim (the testing kit's copies are checked against these below).
SAMPLES: dict[str, str] = {
    "GlobeSmsReport.json": '{"to":"86134235****","status":"2","message_id":"12441353","send_date":"2017-06-01 10:00:00","receive_date":"2017-06-01 10:00:05","error_code":"SP_UNKNOW_ERROR","error_description":"运营商未知错误"}',  # noqa: E501 - verbatim sample
    "MnsCardTemplate.json": '{"approval_status":2,"extData":{},"tmpOps":[{"state":2,"desc":"驳回","vendorCode":"MEIZU"},{"state":2,"desc":"驳回","vendorCode":"OPPO"}],"template_code":"CARD_SMS_****","desc":"**不通过:驳回"}',  # noqa: E501 - verbatim sample
    "MnsCardVender.json": '{"mobile":"1368745****","outId":"205101","render_status":"0","desc":"审核通过"}',  # noqa: E501 - verbatim sample
    "SignSmsReport.json": '{"sign_source":"公众号","reason":"test","sign_name":"短信签名模版1957","order_id":"200****5184","sign_status":"approved","remark":"test","sign_scene":"SMS_123123242","create_date":"2019-05-30 19:58:25"}',  # noqa: E501 - verbatim sample
    "SmsReport-failed.json": '{"phone_number":"1390000****","send_time":"2021-09-06 15:49:55","report_time":"2021-09-06 15:50:07","success":false,"err_code":"MK:0001","err_msg":"用户关机","sms_size":"2","biz_id":"932702304080415357^0","out_id":"order-1184585343"}',  # noqa: E501 - verbatim sample
    "SmsReport-intl.json": '{"To":"8521234****","SendDate":"Thu, 25 Nov 2021 10:27:00 +0800","ReceiveDate":"Thu, 25 Nov 2021 10:27:33 +0800","Status":"1","SmsSize":"1","ErrorCode":"success","ErrorDescription":"success","MessageId":"123456789****"}',  # noqa: E501 - verbatim sample
    "SmsReport.json": '{"phone_number":"1381111****","send_time":"2017-01-01 00:00:00","report_time":"2017-01-01 00:00:00","success":true,"err_code":"DELIVERED","err_msg":"用户接收成功","sms_size":"1","biz_id":"12345********","out_id":"67890**"}',  # noqa: E501 - verbatim sample
    "SmsUp.json": '{"phone_number":"1381111****","content":"内容","send_time":"2017-09-01 00:00:00","dest_code":"1234","sequence_id":1234567890}',  # noqa: E501 - verbatim sample
    "TemplateSmsReport.json": '{"template_type":"验证码","reason":"test","template_name":"短信测试模板1957","order_id":"205101","template_content":"签名测试","template_status":"approved","remark":"test","template_code":"SMS_123123242","create_date":"2019-05-30 19:58:25"}',  # noqa: E501 - verbatim sample
    "push-SignSmsReport.json": '[{"sign_source":"公众号","reason":"test","sign_name":"短信签名模版1957","orderId":"200****5184","sign_status":"approved","remark":"test","sign_scene":"SMS_123123242","create_date":"2019-05-30 19:58:25"}]',  # noqa: E501 - verbatim sample
    "push-SmsUp.json": '[{"phone_number":"1381111****","content":"内容","send_time":"2017-09-01 00:00:00","dest_code":"1234","sequence_id":"1234567890"}]',  # noqa: E501 - verbatim sample
}


def encode(obj: Any) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def md5_of(body: str) -> str:
    return hashlib.md5(body.encode("ascii"), usedforsecurity=False).hexdigest().upper()


def decode_sample(name: str, meta: ReceiptMeta = META) -> Receipt:
    body = encode(SAMPLES[name])
    message_type = name.split("-", maxsplit=1)[0].removesuffix(".json")
    return decode_body(message_type, body, md5_of(body), meta)


def sample_obj(name: str) -> dict[str, Any]:
    obj = json.loads(SAMPLES[name])
    assert isinstance(obj, dict)
    return obj


def test_the_embedded_samples_are_the_testing_kits_samples() -> None:
    packaged = {p.name: p.read_text("utf-8").strip() for p in SAMPLES_DIR.glob("*.json")}
    assert packaged == SAMPLES


def test_a_delivered_sms_report_decodes_to_typed_values() -> None:
    receipt = decode_sample("SmsReport.json")
    assert receipt == SmsReport(
        raw=sample_obj("SmsReport.json"),
        meta=META,
        phone_number="1381111****",
        biz_id="12345********",
        success=True,
        send_time="2017-01-01 00:00:00",
        report_time="2017-01-01 00:00:00",
        err_code="DELIVERED",
        err_msg="用户接收成功",
        sms_size=1,
        out_id="67890**",
    )


def test_a_failed_two_part_sms_report_decodes_to_typed_values() -> None:
    receipt = decode_sample("SmsReport-failed.json")
    assert isinstance(receipt, SmsReport)
    assert (receipt.success, receipt.err_code, receipt.sms_size) == (False, "MK:0001", 2)
    assert business_key(receipt) == "SmsReport:932702304080415357^0:1390000****"


def test_a_pascal_case_report_in_the_sms_report_queue_is_an_international_report() -> None:
    receipt = decode_sample("SmsReport-intl.json")
    assert receipt == IntlSmsReport(
        raw=sample_obj("SmsReport-intl.json"),
        meta=META,
        to="8521234****",
        status="1",
        message_id="123456789****",
        send_date="Thu, 25 Nov 2021 10:27:00 +0800",
        receive_date="Thu, 25 Nov 2021 10:27:33 +0800",
        error_code="success",
        error_description="success",
        sms_size=1,
    )
    assert receipt.message_type == "SmsReport" and receipt.success


def test_an_uplink_decodes_with_its_sequence_id_as_text() -> None:
    receipt = decode_sample("SmsUp.json")
    assert receipt == SmsUp(
        raw=sample_obj("SmsUp.json"),
        meta=META,
        phone_number="1381111****",
        content="内容",
        send_time="2017-09-01 00:00:00",
        dest_code="1234",
        sequence_id="1234567890",
        sign_name="",
    )


def test_review_reports_decode_to_typed_values() -> None:
    sign = decode_sample("SignSmsReport.json")
    template = decode_sample("TemplateSmsReport.json")
    assert isinstance(sign, SignSmsReport) and isinstance(template, TemplateSmsReport)
    assert (sign.order_id, sign.sign_status, sign.sign_name) == (
        "200****5184",
        "approved",
        "短信签名模版1957",
    )
    assert (sign.sign_source, sign.sign_scene, sign.create_date) == (
        "公众号",
        "SMS_123123242",
        "2019-05-30 19:58:25",
    )
    assert (template.order_id, template.template_status, template.template_code) == (
        "205101",
        "approved",
        "SMS_123123242",
    )
    assert (template.template_type, template.template_content) == ("验证码", "签名测试")


def test_a_globe_report_decodes_to_typed_values() -> None:
    receipt = decode_sample("GlobeSmsReport.json")
    assert isinstance(receipt, GlobeSmsReport)
    assert (receipt.to, receipt.status, receipt.message_id) == ("86134235****", "2", "12441353")
    assert (receipt.error_code, receipt.error_description) == ("SP_UNKNOW_ERROR", "运营商未知错误")
    assert not receipt.success


def test_card_receipts_decode_to_typed_values() -> None:
    template = decode_sample("MnsCardTemplate.json")
    vender = decode_sample("MnsCardVender.json")
    assert isinstance(template, MnsCardTemplate) and isinstance(vender, MnsCardVender)
    assert (template.template_code, template.approval_status) == ("CARD_SMS_****", 2)
    assert template.vendor_ops == (
        CardVendorOp("MEIZU", 2, "驳回"),
        CardVendorOp("OPPO", 2, "驳回"),
    )
    assert template.raw["extData"] == {}
    assert (vender.out_id, vender.mobile, vender.render_status) == ("205101", "1368745****", "0")


@pytest.mark.parametrize("name", ["push-SignSmsReport.json", "push-SmsUp.json"])
def test_push_arrays_parse_to_the_same_receipts_as_queue_bodies(name: str) -> None:
    message_type = name.removeprefix("push-").removesuffix(".json")
    [obj] = json.loads(SAMPLES[name])
    pushed = parse_object(message_type, obj, ReceiptMeta("push"))
    queued = decode_sample(f"{message_type}.json")
    assert type(pushed) is type(queued)
    assert pushed.raw is obj
    assert business_key(pushed) == business_key(queued)
    fields = [f for f in pushed.to_dict() if f not in ("meta", "raw")]
    assert {f: pushed.to_dict()[f] for f in fields} == {f: queued.to_dict()[f] for f in fields}


def test_the_same_body_under_a_new_message_id_gives_the_same_key() -> None:
    again = ReceiptMeta("mns", "Alicom-Queue-1-SmsReport", "MSG-2", 1, 5000, 5001)
    first, second = decode_sample("SmsReport.json"), decode_sample("SmsReport.json", again)
    assert first.meta != second.meta
    assert business_key(first) == business_key(second)


def test_a_different_phone_number_gives_a_different_key() -> None:
    other = {**sample_obj("SmsReport.json"), "phone_number": "1381111****2"}
    decoded = decode_body("SmsReport", encode(other), None, META)
    assert business_key(decoded) != business_key(decode_sample("SmsReport.json"))


def test_unknown_keys_are_tolerated_and_kept_in_raw() -> None:
    obj = {**sample_obj("SmsReport.json"), "new_field": {"nested": [1, 2]}}
    receipt = decode_body("SmsReport", encode(obj), None, META)
    assert receipt.raw == obj


@pytest.mark.parametrize(
    ("changes", "attribute", "expected"),
    [
        ({"success": "true"}, "success", True),
        ({"success": "FALSE"}, "success", False),
        ({"sms_size": 3}, "sms_size", 3),
        ({"sms_size": " 2 "}, "sms_size", 2),
        ({"sms_size": None}, "sms_size", 0),
        ({"out_id": None}, "out_id", ""),
        ({"biz_id": 12345}, "biz_id", "12345"),
    ],
)
def test_sms_report_variants_are_tolerated(
    changes: dict[str, Any], attribute: str, expected: object
) -> None:
    obj = {**sample_obj("SmsReport.json"), **changes}
    receipt = decode_body("SmsReport", encode(obj), None, META)
    assert getattr(receipt, attribute) == expected


def test_a_compact_uplink_send_time_is_normalised() -> None:
    obj = {**sample_obj("SmsUp.json"), "send_time": "20170901000000", "sign_name": "阿里云"}
    receipt = decode_body("SmsUp", encode(obj), None, META)
    assert isinstance(receipt, SmsUp)
    assert (receipt.send_time, receipt.sign_name) == ("2017-09-01 00:00:00", "阿里云")
    assert business_key(receipt) == business_key(decode_sample("SmsUp.json"))


def test_bytes_bodies_lowercase_md5_and_a_utf8_bom_are_accepted() -> None:
    body = base64.b64encode(b"\xef\xbb\xbf" + SAMPLES["SmsReport.json"].encode()).decode()
    receipt = decode_body("SmsReport", body.encode("ascii"), md5_of(body).lower(), META)
    assert receipt == decode_sample("SmsReport.json")


def test_json_text_from_a_push_gives_the_receipt_its_base64_body_would() -> None:
    text = SAMPLES["SmsReport.json"]
    assert parse_json("SmsReport", text, META) == decode_body("SmsReport", encode(text), None,
                                                             META)
