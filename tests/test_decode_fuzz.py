"""Property tests: nothing but DecodeError leaves the decoder, and valid receipts round-trip."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.errors import DecodeError
from consumer.keys import business_key
from consumer.pipeline.decode import decode_body, parse_object
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

# No deadline: the machine is shared, and timing is not what these tests are about.
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

META = ReceiptMeta("mns", "Alicom-Queue-1-SmsReport", "MSG-1", 1, 1000, 1001)
OTHER_META = ReceiptMeta("mns", "Alicom-Queue-1-SmsReport", "MSG-2", 2, 2000, 2001)
MESSAGE_TYPES = [
    "SmsReport",
    "SmsUp",
    "SignSmsReport",
    "TemplateSmsReport",
    "GlobeSmsReport",
    "MnsCardTemplate",
    "MnsCardVender",
]
SAMPLE_OBJECTS: list[tuple[str, dict[str, Any]]] = [
    (
        "SmsReport",
        {
            "phone_number": "1381111****",
            "send_time": "2017-01-01 00:00:00",
            "report_time": "2017-01-01 00:00:00",
            "success": True,
            "err_code": "DELIVERED",
            "err_msg": "用户接收成功",
            "sms_size": "1",
            "biz_id": "12345********",
            "out_id": "67890**",
        },
    ),
    (
        "SmsReport",
        {"To": "852", "Status": "1", "MessageId": "1234", "SmsSize": "1", "ErrorCode": "ok"},
    ),
    (
        "SmsUp",
        {
            "phone_number": "1381111****",
            "content": "内容",
            "send_time": "2017-09-01 00:00:00",
            "dest_code": "1234",
            "sequence_id": 1234567890,
        },
    ),
    ("SignSmsReport", {"orderId": "200****5184", "sign_status": "approved", "reason": "t"}),
    ("TemplateSmsReport", {"order_id": "205101", "template_status": "approved"}),
    ("GlobeSmsReport", {"to": "86134235****", "status": "2", "message_id": "12441353"}),
    (
        "MnsCardTemplate",
        {
            "approval_status": 2,
            "tmpOps": [{"state": 2, "desc": "驳回", "vendorCode": "MEIZU"}],
            "template_code": "CARD_SMS_****",
        },
    ),
    ("MnsCardVender", {"mobile": "1368745****", "outId": "205101", "render_status": "0"}),
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# Text with lone surrogates too: what a JSON \ud800 escape or a careless caller can produce.
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
message_types = st.sampled_from(MESSAGE_TYPES) | st.text(max_size=12)


def encode(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False).encode("utf-8")).decode("ascii")


def md5_of(body: str | bytes) -> str:
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return hashlib.md5(data, usedforsecurity=False).hexdigest().upper()


def check_usable(receipt: Receipt) -> None:
    """A receipt that came out must be safe for every consumer downstream."""
    assert isinstance(receipt, Receipt)
    json.dumps(receipt.to_dict(), ensure_ascii=False, allow_nan=False).encode("utf-8")
    business_key(receipt).encode("utf-8")


def decode_or_reject(message_type: Any, body: Any, body_md5: Any = None) -> None:
    try:
        receipt = decode_body(message_type, body, body_md5, META)
    except DecodeError as exc:
        assert exc.reason
        return
    check_usable(receipt)


def parse_or_reject(message_type: Any, obj: Any) -> None:
    try:
        receipt = parse_object(message_type, obj, META)
    except DecodeError as exc:
        assert exc.reason
        return
    check_usable(receipt)


@FUZZ
@given(message_type=message_types, body=st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_decode_error(message_type: str, body: bytes) -> None:
    decode_or_reject(message_type, body)
    decode_or_reject(message_type, base64.b64encode(body), md5_of(base64.b64encode(body)))


@FUZZ
@given(message_type=message_types, body=any_text, body_md5=st.none() | any_text)
def test_arbitrary_text_only_ever_raises_decode_error(
    message_type: str, body: str, body_md5: str | None
) -> None:
    decode_or_reject(message_type, body, body_md5)
    decode_or_reject(message_type, body, md5_of(body))


@FUZZ
@given(message_type=message_types, value=json_values)
def test_arbitrary_json_values_only_ever_raise_decode_error(message_type: str, value: Any) -> None:
    decode_or_reject(message_type, encode(value))
    parse_or_reject(message_type, value)


@FUZZ
@given(
    sample=st.sampled_from(SAMPLE_OBJECTS),
    replacements=st.dictionaries(
        st.sampled_from(sorted({k for _, obj in SAMPLE_OBJECTS for k in obj})) | any_text,
        json_values | any_text,
        max_size=4,
    ),
    removals=st.sets(st.sampled_from(sorted({k for _, obj in SAMPLE_OBJECTS for k in obj}))),
)
def test_mutated_valid_bodies_only_ever_raise_decode_error(
    sample: tuple[str, dict[str, Any]], replacements: dict[str, Any], removals: set[str]
) -> None:
    message_type, obj = sample
    mutated = {k: v for k, v in obj.items() if k not in removals}
    mutated.update(replacements)
    parse_or_reject(message_type, mutated)
    try:
        body = encode(mutated)
    except UnicodeEncodeError:  # a lone surrogate cannot be UTF-8; escape it as JSON would
        body = base64.b64encode(json.dumps(mutated).encode("ascii")).decode("ascii")
    decode_or_reject(message_type, body, md5_of(body))


@FUZZ
@given(
    sample=st.sampled_from(SAMPLE_OBJECTS),
    position=st.integers(min_value=0),
    char=st.characters(max_codepoint=0x7F),
)
def test_a_corrupted_base64_body_only_ever_raises_decode_error(
    sample: tuple[str, dict[str, Any]], position: int, char: str
) -> None:
    message_type, obj = sample
    body = encode(obj)
    index = position % len(body)
    corrupted = body[:index] + char + body[index + 1 :]
    decode_or_reject(message_type, corrupted)


# ---- valid generated receipts round-trip -----------------------------------------------

ident = st.text(min_size=1, max_size=24).filter(str.strip)
text = st.text(max_size=40)
extras = st.dictionaries(st.text(max_size=8).map(lambda k: "x_" + k), json_values, max_size=3)


def maybe_as_text(draw: st.DrawFn, value: Any) -> Any:
    """Some senders write numbers and booleans as strings; both forms must decode alike."""
    if not draw(st.booleans()):
        return value
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@st.composite
def sms_reports(draw: st.DrawFn) -> tuple[str, dict[str, Any], type[Receipt], dict[str, Any]]:
    typed = {
        "phone_number": draw(ident),
        "biz_id": draw(ident),
        "success": draw(st.booleans()),
        "send_time": draw(text),
        "report_time": draw(text),
        "err_code": draw(text),
        "err_msg": draw(text),
        "sms_size": draw(st.integers(0, 10**6)),
        "out_id": draw(text),
    }
    wire = {**typed, "success": maybe_as_text(draw, typed["success"])}
    wire["sms_size"] = maybe_as_text(draw, typed["sms_size"])
    return "SmsReport", wire, SmsReport, typed


INTL_KEYS = {
    "to": "To",
    "status": "Status",
    "message_id": "MessageId",
    "send_date": "SendDate",
    "receive_date": "ReceiveDate",
    "error_code": "ErrorCode",
    "error_description": "ErrorDescription",
    "sms_size": "SmsSize",
}


@st.composite
def intl_reports(draw: st.DrawFn) -> tuple[str, dict[str, Any], type[Receipt], dict[str, Any]]:
    typed: dict[str, Any] = {
        "to": draw(ident),
        "status": draw(st.sampled_from(["1", "2", "6"])),
        "message_id": draw(ident),
        "send_date": draw(text),
        "receive_date": draw(text),
        "error_code": draw(text),
        "error_description": draw(text),
        "sms_size": draw(st.integers(0, 99)),
    }
    wire = {INTL_KEYS[k]: v for k, v in typed.items()}
    wire["SmsSize"] = maybe_as_text(draw, typed["sms_size"])
    return "SmsReport", wire, IntlSmsReport, typed


@st.composite
def uplinks(draw: st.DrawFn) -> tuple[str, dict[str, Any], type[Receipt], dict[str, Any]]:
    when = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)))
    sequence = draw(st.integers(0, 2**62))
    typed = {
        "phone_number": draw(ident),
        "content": draw(text),
        "send_time": when.strftime("%Y-%m-%d %H:%M:%S"),
        "dest_code": draw(text),
        "sequence_id": str(sequence),
        "sign_name": draw(text),
    }
    compact = draw(st.booleans())
    wire = {
        **typed,
        "send_time": when.strftime("%Y%m%d%H%M%S") if compact else typed["send_time"],
        "sequence_id": maybe_as_text(draw, sequence),
    }
    return "SmsUp", wire, SmsUp, typed


@st.composite
def reviews(draw: st.DrawFn) -> tuple[str, dict[str, Any], type[Receipt], dict[str, Any]]:
    cls: type[Receipt] = draw(st.sampled_from([SignSmsReport, TemplateSmsReport]))
    status_field = "sign_status" if cls is SignSmsReport else "template_status"
    others = (
        ["sign_name", "sign_source", "sign_scene"]
        if cls is SignSmsReport
        else ["template_code", "template_name", "template_type", "template_content"]
    )
    typed = {"order_id": draw(ident), status_field: draw(ident)}
    for name in [*others, "create_date", "reason", "remark"]:
        typed[name] = draw(text)
    wire = dict(typed)
    if draw(st.booleans()):  # the push documents spell it orderId
        wire["orderId"] = wire.pop("order_id")
    return cls.message_type, wire, cls, typed


@st.composite
def globe_reports(draw: st.DrawFn) -> tuple[str, dict[str, Any], type[Receipt], dict[str, Any]]:
    typed = {"message_id": draw(ident), "status": draw(st.sampled_from(["1", "2"]))}
    for name in ["to", "send_date", "receive_date", "error_code", "error_description"]:
        typed[name] = draw(text)
    return "GlobeSmsReport", dict(typed), GlobeSmsReport, typed


@st.composite
def card_templates(draw: st.DrawFn) -> tuple[str, dict[str, Any], type[Receipt], dict[str, Any]]:
    ops = draw(
        st.lists(st.builds(CardVendorOp, text, st.integers(-5, 5), text), max_size=4).map(tuple)
    )
    typed = {
        "template_code": draw(ident),
        "approval_status": draw(st.integers(-5, 5)),
        "desc": draw(text),
        "vendor_ops": ops,
    }
    wire = {
        "template_code": typed["template_code"],
        "approval_status": typed["approval_status"],
        "desc": typed["desc"],
        "tmpOps": [{"vendorCode": o.vendor_code, "state": o.state, "desc": o.desc} for o in ops],
        "extData": draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
    }
    return "MnsCardTemplate", wire, MnsCardTemplate, typed


@st.composite
def card_renders(draw: st.DrawFn) -> tuple[str, dict[str, Any], type[Receipt], dict[str, Any]]:
    typed = {
        "out_id": draw(ident),
        "mobile": draw(ident),
        "render_status": draw(ident),
        "desc": draw(text),
    }
    wire = {**typed, "outId": typed["out_id"]}
    del wire["out_id"]
    return "MnsCardVender", wire, MnsCardVender, typed


receipts = st.one_of(
    sms_reports(),
    intl_reports(),
    uplinks(),
    reviews(),
    globe_reports(),
    card_templates(),
    card_renders(),
)


@FUZZ
@given(case=receipts, extra=extras)
def test_valid_generated_receipts_round_trip(
    case: tuple[str, dict[str, Any], type[Receipt], dict[str, Any]], extra: dict[str, Any]
) -> None:
    message_type, wire, cls, typed = case
    wire = {**wire, **extra}
    body = encode(wire)
    receipt = decode_body(message_type, body, md5_of(body), META)
    assert type(receipt) is cls
    assert {name: getattr(receipt, name) for name in typed} == typed
    assert receipt.raw == wire
    assert receipt.meta == META
    again = parse_object(message_type, wire, OTHER_META)
    assert business_key(again) == business_key(receipt)
    check_usable(receipt)
