"""decode_body / parse_object / parse_json: every bad input is refused with its reason (the
`DecodeError.reason` a dead letter carries), naming a bad field but never its value."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from consumer.errors import DecodeError
from consumer.pipeline.decode import MAX_BODY_BYTES, decode_body, parse_json, parse_object
from tests.test_decode import META, SAMPLES, encode, md5_of, sample_obj


def reason_of(message_type: str, body: str | bytes, body_md5: str | None = None) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_body(message_type, body, body_md5, META)
    return caught.value.reason


def test_a_64_kb_body_is_too_large() -> None:
    padded = {**sample_obj("SmsReport.json"), "pad": "x" * 65536}
    assert reason_of("SmsReport", encode(padded)) == "too_large"
    assert reason_of("SmsReport", "A" * (MAX_BODY_BYTES + 1), "0" * 32) == "too_large"


def test_a_body_exactly_at_the_limit_is_decoded() -> None:
    base = {**sample_obj("SmsReport.json"), "pad": ""}
    room = MAX_BODY_BYTES // 4 * 3 - len(json.dumps(base, ensure_ascii=False).encode())
    body = encode({**base, "pad": "x" * room})
    assert len(body) == MAX_BODY_BYTES
    assert decode_body("SmsReport", body, md5_of(body), META).raw["pad"] == "x" * room


def test_a_wrong_md5_is_a_mismatch_even_for_a_valid_body() -> None:
    body = encode(SAMPLES["SmsReport.json"])
    assert reason_of("SmsReport", body, md5_of(body + "A")) == "md5_mismatch"
    assert reason_of("SmsReport", body, "") == "md5_mismatch"


def test_the_md5_is_checked_before_the_base64() -> None:
    assert reason_of("SmsReport", "!!not base64!!", md5_of("other")) == "md5_mismatch"


@pytest.mark.parametrize(
    "body",
    [
        "!!not base64!!",
        "eyJhIjoxfQ",  # missing padding
        "eyJh\nIjoxfQ==",  # a line break inside
        " eyJhIjoxfQ==",
        "eyJhIjoxfQ==\u00e9",
    ],
)
def test_anything_but_strict_base64_is_bad_base64(body: str) -> None:
    assert reason_of("SmsReport", body) == "bad_base64"


def test_bytes_that_are_not_utf8_are_not_utf8() -> None:
    body = base64.b64encode(b'{"phone_number":"\xff\xfe"}').decode()
    assert reason_of("SmsReport", body) == "not_utf8"


def test_a_lone_surrogate_escape_is_not_utf8_but_a_surrogate_pair_is_fine() -> None:
    lone = {**sample_obj("SmsReport.json")}
    text = json.dumps(lone).replace('"67890**"', '"\\ud83d"')
    assert reason_of("SmsReport", encode(text)) == "not_utf8"
    paired = json.dumps(lone).replace('"67890**"', '"\\ud83d\\ude00"')
    assert decode_body("SmsReport", encode(paired), None, META).raw["out_id"] == "\U0001f600"


@pytest.mark.parametrize(
    "text",
    ["", "{", "not json", '{"a": NaN}', '{"a": Infinity}', '{"a": 1e400}'],
)
def test_text_that_is_not_strict_json_is_not_json(text: str) -> None:
    assert reason_of("SmsReport", encode(text)) == "not_json"


def test_nesting_too_deep_to_parse_is_refused_too() -> None:
    # 5,000 nested arrays: Pythons before 3.13 give up parsing it (not_json); 3.13's decoder
    # reads it, and it is then no receipt object (not_object). Dead-lettered either way.
    deep = "[" * 5000 + "]" * 5000
    assert reason_of("SmsReport", encode(deep)) in {"not_json", "not_object"}


@pytest.mark.parametrize("text", ["[]", "[{}]", '"text"', "12", "null", "true"])
def test_json_that_is_not_an_object_is_not_an_object(text: str) -> None:
    assert reason_of("SmsReport", encode(text)) == "not_object"


@pytest.mark.parametrize("message_type", ["SmsReports", "", "smsreport", "Unknown"])
def test_a_message_type_without_a_class_is_an_unknown_type(message_type: str) -> None:
    assert reason_of(message_type, encode(SAMPLES["SmsReport.json"])) == "unknown_type"


REQUIRED: list[tuple[str, str, str]] = [
    ("SmsReport.json", "SmsReport", "phone_number"),
    ("SmsReport.json", "SmsReport", "biz_id"),
    ("SmsReport.json", "SmsReport", "success"),
    ("SmsReport-intl.json", "SmsReport", "To"),
    ("SmsReport-intl.json", "SmsReport", "Status"),
    ("SmsReport-intl.json", "SmsReport", "MessageId"),
    ("SmsUp.json", "SmsUp", "phone_number"),
    ("SmsUp.json", "SmsUp", "content"),
    ("SmsUp.json", "SmsUp", "send_time"),
    ("SmsUp.json", "SmsUp", "dest_code"),
    ("SmsUp.json", "SmsUp", "sequence_id"),
    ("SignSmsReport.json", "SignSmsReport", "order_id"),
    ("SignSmsReport.json", "SignSmsReport", "sign_status"),
    ("TemplateSmsReport.json", "TemplateSmsReport", "order_id"),
    ("TemplateSmsReport.json", "TemplateSmsReport", "template_status"),
    ("GlobeSmsReport.json", "GlobeSmsReport", "message_id"),
    ("GlobeSmsReport.json", "GlobeSmsReport", "status"),
    ("MnsCardTemplate.json", "MnsCardTemplate", "template_code"),
    ("MnsCardTemplate.json", "MnsCardTemplate", "approval_status"),
    ("MnsCardVender.json", "MnsCardVender", "outId"),
    ("MnsCardVender.json", "MnsCardVender", "mobile"),
    ("MnsCardVender.json", "MnsCardVender", "render_status"),
]


@pytest.mark.parametrize(("sample", "message_type", "key"), REQUIRED)
def test_a_missing_required_field_is_named(sample: str, message_type: str, key: str) -> None:
    obj = sample_obj(sample)
    del obj[key]
    with pytest.raises(DecodeError) as absent:
        decode_body(message_type, encode(obj), None, META)
    with pytest.raises(DecodeError) as null:
        parse_object(message_type, {**obj, key: None}, META)
    for caught in (absent, null):
        assert caught.value.reason == "missing_field"
        assert repr(key) in caught.value.detail


@pytest.mark.parametrize(
    ("sample", "message_type", "changes", "key"),
    [
        ("SmsReport.json", "SmsReport", {"success": "yes"}, "success"),
        ("SmsReport.json", "SmsReport", {"success": 1}, "success"),
        ("SmsReport.json", "SmsReport", {"sms_size": "two"}, "sms_size"),
        ("SmsReport.json", "SmsReport", {"sms_size": "-1"}, "sms_size"),
        ("SmsReport.json", "SmsReport", {"sms_size": 1.5}, "sms_size"),
        ("SmsReport.json", "SmsReport", {"sms_size": "13811112222x"}, "sms_size"),
        ("SmsReport.json", "SmsReport", {"phone_number": "  "}, "phone_number"),
        ("SmsReport.json", "SmsReport", {"biz_id": ["a"]}, "biz_id"),
        ("SmsReport.json", "SmsReport", {"err_msg": {"zh": "x"}}, "err_msg"),
        ("SmsUp.json", "SmsUp", {"sequence_id": 1.5}, "sequence_id"),
        ("SmsUp.json", "SmsUp", {"sequence_id": True}, "sequence_id"),
        ("MnsCardTemplate.json", "MnsCardTemplate", {"tmpOps": "MEIZU"}, "tmpOps"),
        ("MnsCardTemplate.json", "MnsCardTemplate", {"tmpOps": [1]}, "tmpOps"),
        ("MnsCardTemplate.json", "MnsCardTemplate", {"approval_status": "2a"}, "approval_status"),
    ],
)
def test_a_field_of_the_wrong_shape_is_a_bad_field_named_without_its_value(
    sample: str, message_type: str, changes: dict[str, Any], key: str
) -> None:
    obj = {**sample_obj(sample), **changes}
    with pytest.raises(DecodeError) as caught:
        decode_body(message_type, encode(obj), None, META)
    assert caught.value.reason == "bad_field"
    assert repr(key) in caught.value.detail
    text = str(caught.value)
    for bad in changes.values():
        assert repr(bad) not in text
        if isinstance(bad, str) and bad.strip():
            assert bad not in text


def test_the_alias_of_order_id_is_named_when_both_are_missing() -> None:
    obj = sample_obj("SignSmsReport.json")
    del obj["order_id"]
    with pytest.raises(DecodeError, match="'order_id' or 'orderId'"):
        parse_object("SignSmsReport", obj, META)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([sample_obj("SmsReport.json")], "not_object"),
        ({**sample_obj("SmsReport.json"), "x": float("nan")}, "not_json"),
        ({**sample_obj("SmsReport.json"), "x": object()}, "not_json"),
        ({**sample_obj("SmsReport.json"), "out_id": "\ud800"}, "not_utf8"),
    ],
)
def test_parse_object_refuses_what_json_could_not_carry(obj: Any, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        parse_object("SmsReport", obj, META)
    assert caught.value.reason == reason


def test_a_non_text_body_or_message_type_is_still_a_decode_error() -> None:
    body = encode(SAMPLES["SmsReport.json"])
    assert reason_of("SmsReport", 12345) == "bad_base64"  # type: ignore[arg-type]  # misuse on purpose
    assert reason_of(["SmsReport"], body) == "unknown_type"  # type: ignore[arg-type]  # misuse on purpose
    assert reason_of("SmsReport", body, b"ABC") == "md5_mismatch"  # type: ignore[arg-type]  # misuse on purpose


@pytest.mark.parametrize(("text", "reason"), [
    (b'{"phone_number": "\xff"}'.decode("utf-8", "surrogateescape"), "not_utf8"),
    ('{"phone_number": "\\udc80"}', "not_utf8"),
    ('{"sms_size": NaN}', "not_json"),
    ('{"sms_size": 1e999}', "not_json"),
    ("[1, 2]", "not_object"),
    ("{}", "missing_field"),
])
def test_bad_json_text_is_refused_for_the_same_reasons_as_a_bad_body(text: str,
                                                                      reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        parse_json("SmsReport", text, META)
    assert caught.value.reason == reason
