"""Typed receipts as values: dedup keys, their configuration, and the JSON-safe dict form."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from consumer.errors import ConfigError
from consumer.keys import DEDUP_KEY_FIELDS, business_key, make_identity, resolve_key_fields
from consumer.receipts import (
    MESSAGE_TYPES,
    RECEIPT_CLASSES,
    CardVendorOp,
    GlobeSmsReport,
    IntlSmsReport,
    MnsCardTemplate,
    MnsCardVender,
    ReceiptMeta,
    SignSmsReport,
    SmsReport,
    SmsUp,
    TemplateSmsReport,
    typed_field_names,
)

META = ReceiptMeta("mns", "Alicom-Queue-1-SmsReport", "MSG-1", 1, 1000, 1001)
OTHER_DELIVERY = ReceiptMeta("mns", "Alicom-Queue-1-SmsReport", "MSG-2", 1, 2000, 2001)


def sms_report(meta: ReceiptMeta = META, **changes: Any) -> SmsReport:
    values: dict[str, Any] = {
        "raw": {"biz_id": "932702304080415357^0"},
        "meta": meta,
        "phone_number": "13900001111",
        "biz_id": "932702304080415357^0",
        "success": True,
        "send_time": "2021-09-06 15:49:55",
        "report_time": "2021-09-06 15:50:07",
        "err_code": "DELIVERED",
        "err_msg": "用户接收成功",
        "sms_size": 2,
        "out_id": "order-1",
    }
    values.update(changes)
    return SmsReport(**values)


def sms_up(**changes: Any) -> SmsUp:
    values: dict[str, Any] = {
        "raw": {},
        "meta": META,
        "phone_number": "13811112222",
        "content": "TD",
        "send_time": "2017-09-01 00:00:00",
        "dest_code": "1234",
        "sequence_id": "1234567890",
    }
    values.update(changes)
    return SmsUp(**values)


def test_the_sms_report_key_is_the_biz_id_and_the_phone_number() -> None:
    assert business_key(sms_report()) == "SmsReport:932702304080415357^0:13900001111"


def test_a_redelivery_under_a_new_message_id_has_the_same_key() -> None:
    assert business_key(sms_report(META)) == business_key(sms_report(OTHER_DELIVERY))


def test_another_number_of_the_same_send_has_another_key() -> None:
    assert business_key(sms_report()) != business_key(sms_report(phone_number="13900002222"))


def test_another_send_to_the_same_number_has_another_key() -> None:
    assert business_key(sms_report()) != business_key(sms_report(biz_id="932702304080415358^0"))


def test_an_uplink_key_hashes_the_content_and_keeps_only_the_digits_of_the_time() -> None:
    key = business_key(sms_up())
    prefix, phone, dest, seq, when, content = key.split(":")
    assert (prefix, phone, dest, seq, when) == (
        "SmsUp",
        "13811112222",
        "1234",
        "1234567890",
        "20170901000000",
    )
    assert content.startswith("~") and len(content) == 33


def test_uplinks_differing_only_in_content_have_different_keys() -> None:
    assert business_key(sms_up(content="TD")) != business_key(sms_up(content="退订"))


def test_the_compact_and_the_dashed_send_time_give_one_uplink_key() -> None:
    assert business_key(sms_up(send_time="20170901000000")) == business_key(sms_up())


def test_a_long_or_colon_holding_value_is_hashed_so_keys_stay_short_and_unambiguous() -> None:
    long_key = business_key(sms_report(biz_id="9" * 500))
    colon_key = business_key(sms_report(biz_id="a:b"))
    assert len(long_key) < 80
    assert colon_key.count(":") == 2
    assert business_key(sms_report(biz_id="a:b")) != business_key(sms_report(biz_id="a-b"))


def test_a_value_that_looks_like_a_hash_is_hashed_too() -> None:
    hashed = business_key(sms_report(biz_id="a:b")).split(":")[1]
    assert business_key(sms_report(biz_id=hashed)) != business_key(sms_report(biz_id="a:b"))


def test_a_lone_surrogate_in_a_key_field_still_gives_an_encodable_key() -> None:
    key = business_key(sms_report(phone_number="139\ud800"))
    key.encode("utf-8")
    assert key != business_key(sms_report(phone_number="139"))


def test_review_receipts_with_a_new_status_or_reason_are_new_receipts() -> None:
    def sign(status: str, reason: str) -> SignSmsReport:
        return SignSmsReport(
            raw={}, meta=META, order_id="2005184", sign_status=status, reason=reason
        )

    keys = {
        business_key(sign("approving", "")),
        business_key(sign("rejected", "blurry file")),
        business_key(sign("rejected", "wrong company")),
        business_key(sign("approved", "")),
    }
    assert len(keys) == 4
    rejected = sign("rejected", "blurry file")
    assert business_key(rejected) == business_key(sign("rejected", "blurry file"))


def test_each_class_has_a_documented_default_key() -> None:
    template = TemplateSmsReport(raw={}, meta=META, order_id="205101", template_status="approved")
    globe = GlobeSmsReport(raw={}, meta=META, message_id="12441353", status="2")
    intl = IntlSmsReport(raw={}, meta=META, to="8521234", status="1", message_id="1234")
    vender = MnsCardVender(raw={}, meta=META, out_id="205101", mobile="1368745", render_status="0")
    assert business_key(template).startswith("TemplateSmsReport:205101:approved:~")
    assert business_key(globe) == "GlobeSmsReport:12441353:2"
    assert business_key(intl) == "IntlSmsReport:1234:1"
    assert business_key(vender) == "MnsCardVender:205101:1368745:0"


def test_card_template_keys_change_when_a_vendor_decides() -> None:
    def card(*ops: CardVendorOp) -> MnsCardTemplate:
        return MnsCardTemplate(
            raw={}, meta=META, template_code="CARD_SMS_1", approval_status=1, vendor_ops=ops
        )

    first = card(CardVendorOp("MEIZU", 2, "ok"), CardVendorOp("OPPO", 1, ""))
    later = card(CardVendorOp("MEIZU", 2, "ok"), CardVendorOp("OPPO", 2, "ok"))
    assert business_key(first) != business_key(later)
    assert business_key(first) == business_key(card(*first.vendor_ops))


def test_configured_key_fields_replace_the_default_for_that_class_only() -> None:
    key_of = make_identity({"SmsReport": ["out_id", "phone_number"]})
    assert key_of(sms_report()) == "SmsReport:order-1:13900001111"
    assert key_of(sms_up()) == business_key(sms_up())
    by_outcome = make_identity({"SmsReport": ["phone_number", "success"]})
    assert by_outcome(sms_report()) == "SmsReport:13900001111:1"


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"SmsReprot": ["biz_id"]}, "unknown receipt class"),
        ({"SmsReport": []}, "must not be empty"),
        ({"SmsReport": ["biz_id", "bizid"]}, "unknown ['bizid']"),
        ({"SmsReport": "biz_id"}, "not a string"),
        ({"SmsReport": ["raw"]}, "unknown ['raw']"),
    ],
)
def test_bad_key_field_configuration_is_a_config_error_naming_the_problem(
    overrides: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ConfigError, match="dedup key fields") as caught:
        resolve_key_fields(overrides)
    assert complaint in str(caught.value)


def test_every_receipt_class_has_default_key_fields_that_exist() -> None:
    assert set(DEDUP_KEY_FIELDS) == set(RECEIPT_CLASSES)
    for name, key_fields in DEDUP_KEY_FIELDS.items():
        assert set(key_fields) <= set(typed_field_names(RECEIPT_CLASSES[name]))
    assert resolve_key_fields() == DEDUP_KEY_FIELDS


def test_message_types_map_queue_types_to_classes_and_intl_reports_share_sms_report() -> None:
    assert set(MESSAGE_TYPES) == {
        "SmsReport",
        "SmsUp",
        "SignSmsReport",
        "TemplateSmsReport",
        "GlobeSmsReport",
        "MnsCardTemplate",
        "MnsCardVender",
    }
    assert all(cls.message_type == name for name, cls in MESSAGE_TYPES.items())
    assert IntlSmsReport.message_type == "SmsReport"


def test_to_dict_is_json_with_type_fields_meta_and_raw() -> None:
    receipt = MnsCardTemplate(
        raw={"template_code": "CARD_SMS_1", "extData": {"k": "v"}},
        meta=META,
        template_code="CARD_SMS_1",
        approval_status=2,
        vendor_ops=(CardVendorOp("MEIZU", 2, "驳回"),),
    )
    out = json.loads(json.dumps(receipt.to_dict()))
    assert out == {
        "message_type": "MnsCardTemplate",
        "receipt_class": "MnsCardTemplate",
        "template_code": "CARD_SMS_1",
        "approval_status": 2,
        "desc": "",
        "vendor_ops": [{"vendor_code": "MEIZU", "state": 2, "desc": "驳回"}],
        "meta": dataclasses.asdict(META),
        "raw": {"template_code": "CARD_SMS_1", "extData": {"k": "v"}},
    }


def test_an_international_report_says_it_is_an_sms_report_of_the_intl_class() -> None:
    intl = IntlSmsReport(raw={}, meta=META, to="852", status="1", message_id="9")
    out = intl.to_dict()
    assert (out["message_type"], out["receipt_class"]) == ("SmsReport", "IntlSmsReport")
    assert intl.success and not dataclasses.replace(intl, status="2").success


def test_receipts_are_frozen_hashable_values() -> None:
    receipt = sms_report()
    with pytest.raises(dataclasses.FrozenInstanceError):
        receipt.biz_id = "x"  # type: ignore[misc]  # the point: assignment must fail
    assert receipt == sms_report()
    assert len({receipt, sms_report()}) == 1
    assert receipt != sms_report(OTHER_DELIVERY)
