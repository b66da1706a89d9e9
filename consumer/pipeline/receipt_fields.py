"""A decoded JSON object -> its typed receipt: the field table of every receipt class.

For each class: its typed attributes, the JSON keys they come from (aliases in order of
preference), a converter, and whether the field is required. An optional field that is
absent or null takes the dataclass default. `receipt_of` picks the class (an SmsReport with
the international report's keys is an `IntlSmsReport`) and raises `DecodeError` only:
`unknown_type`, `missing_field` or `bad_field`, whose details name fields and types but
never echo values (receipts carry phone numbers). It runs for every message, after
`consumer.pipeline.decode` checked the body or object: strict JSON, UTF-8 strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from consumer.errors import DecodeError
from consumer.receipts import (
    MESSAGE_TYPES,
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

__all__ = ["receipt_of"]

_INTL_KEYS = ("To", "Status", "MessageId")


def receipt_of(message_type: object, obj: Mapping[str, Any], meta: ReceiptMeta) -> Receipt:
    """The receipt `obj` (a JSON object, kept as `raw`) is for `message_type`: its class's
    fields converted by the table below. Raises DecodeError (unknown_type, missing_field,
    bad_field) only."""
    cls = MESSAGE_TYPES.get(message_type) if isinstance(message_type, str) else None
    if cls is None:
        raise DecodeError("unknown_type", f"no receipt class for message type {message_type!r:.80}")
    if cls is SmsReport and "phone_number" not in obj and any(k in obj for k in _INTL_KEYS):
        cls = IntlSmsReport
    return _build(cls, _SPECS[cls], obj, meta)


class _BadValue(Exception):  # noqa: N818 - internal signal, becomes DecodeError before leaving
    """A converter's complaint; `_build` turns it into DecodeError naming the field."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


@dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    keys: tuple[str, ...]
    conv: Callable[[Any], Any]
    required: bool = False


def _lookup(obj: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            return value
    return None


def _build(
    cls: type[Receipt], specs: tuple[_Field, ...], obj: Mapping[str, Any], meta: ReceiptMeta
) -> Receipt:
    kwargs: dict[str, Any] = {}
    get = obj.get
    for spec in specs:
        value = None
        for key in spec.keys:  # `_lookup`, inlined: this loop runs for every field received
            value = get(key)
            if value is not None:
                break
        if value is None:
            if spec.required:
                raise DecodeError("missing_field", f"{cls.__name__} needs {_names(spec)}")
            continue
        if spec.conv is _text and type(value) is str:  # the common case, without a call
            kwargs[spec.attr] = value
            continue
        try:
            kwargs[spec.attr] = spec.conv(value)
        except _BadValue as exc:
            raise DecodeError(
                "bad_field",
                f"{cls.__name__} field {_names(spec)}: expected {exc.expected}, "
                f"got {type(value).__name__}",
            ) from exc
    return cls(raw=obj, meta=meta, **kwargs)


def _names(spec: _Field) -> str:
    return " or ".join(repr(k) for k in spec.keys)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # tolerated: an id written as a JSON number
    raise _BadValue("text")


def _ident(value: Any) -> str:
    text = _text(value)
    if not text.strip():
        raise _BadValue("non-blank text")
    return text


def _sequence_id(value: Any) -> str:
    # A number in the queue docs, a string in the push docs: both become the same text,
    # so that one uplink seen through both paths has one dedup key.
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:  # exact as an int, nothing lost
            return str(int(value))
        raise _BadValue("an integer or text")
    text = _ident(value).strip()
    if text.isascii() and text.isdigit():
        # "0123" and 123 are one id: the number form cannot carry leading zeros.
        return str(int(text)) if len(text) <= 30 else text
    return text


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
    raise _BadValue("true or false")


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in ("-", "+") else text
        # isascii: int() also takes other scripts' digits and "_", which no sender means.
        if 0 < len(digits) <= 18 and digits.isascii() and digits.isdigit():
            return int(text)
    raise _BadValue("an integer (number or digit string)")


def _count(value: Any) -> int:
    number = _integer(value)
    if number < 0:
        raise _BadValue("a non-negative integer")
    return number


def _time(value: Any) -> str:
    text = _ident(value)
    if len(text) == 14 and text.isascii() and text.isdigit():
        # The old compact form 20170901000000 becomes 2017-09-01 00:00:00.
        t = text
        return f"{t[0:4]}-{t[4:6]}-{t[6:8]} {t[8:10]}:{t[10:12]}:{t[12:14]}"
    return text


def _vendor_ops(value: Any) -> tuple[CardVendorOp, ...]:
    if not isinstance(value, list):
        raise _BadValue("a list of vendor reviews")
    ops = []
    for item in value:
        if not isinstance(item, Mapping):
            raise _BadValue("a list of objects")
        code = _lookup(item, ("vendorCode", "vendor_code"))
        state = item.get("state")
        desc = item.get("desc")
        ops.append(
            CardVendorOp(
                vendor_code="" if code is None else _text(code),
                state=-1 if state is None else _integer(state),  # -1: not reported
                desc="" if desc is None else _text(desc),
            )
        )
    return tuple(ops)


def _req(attr: str, conv: Callable[[Any], Any], *keys: str) -> _Field:
    return _Field(attr, keys or (attr,), conv, required=True)


def _opt(attr: str, conv: Callable[[Any], Any] = _text, *keys: str) -> _Field:
    return _Field(attr, keys or (attr,), conv)


_SPECS: Mapping[type[Receipt], tuple[_Field, ...]] = {
    SmsReport: (
        _req("phone_number", _ident),
        _req("biz_id", _ident),
        _req("success", _flag),
        _opt("send_time"),
        _opt("report_time"),
        _opt("err_code"),
        _opt("err_msg"),
        _opt("sms_size", _count),
        _opt("out_id"),
    ),
    IntlSmsReport: (
        _req("to", _ident, "To"),
        _req("status", _ident, "Status"),
        _req("message_id", _ident, "MessageId"),
        _opt("send_date", _text, "SendDate"),
        _opt("receive_date", _text, "ReceiveDate"),
        _opt("error_code", _text, "ErrorCode"),
        _opt("error_description", _text, "ErrorDescription"),
        _opt("sms_size", _count, "SmsSize"),
    ),
    SmsUp: (
        _req("phone_number", _ident),
        _req("content", _text),
        _req("send_time", _time),
        _req("dest_code", _text),
        _req("sequence_id", _sequence_id),
        _opt("sign_name"),
    ),
    SignSmsReport: (
        _req("order_id", _ident, "order_id", "orderId"),
        _req("sign_status", _ident),
        _opt("sign_name"),
        _opt("sign_source"),
        _opt("sign_scene"),
        _opt("create_date"),
        _opt("reason"),
        _opt("remark"),
    ),
    TemplateSmsReport: (
        _req("order_id", _ident, "order_id", "orderId"),
        _req("template_status", _ident),
        _opt("template_code"),
        _opt("template_name"),
        _opt("template_type"),
        _opt("template_content"),
        _opt("create_date"),
        _opt("reason"),
        _opt("remark"),
    ),
    GlobeSmsReport: (
        _req("message_id", _ident),
        _req("status", _ident),
        _opt("to"),
        _opt("send_date"),
        _opt("receive_date"),
        _opt("error_code"),
        _opt("error_description"),
    ),
    MnsCardTemplate: (
        _req("template_code", _ident),
        _req("approval_status", _integer),
        _opt("desc"),
        _opt("vendor_ops", _vendor_ops, "tmpOps"),
    ),
    MnsCardVender: (
        _req("out_id", _ident, "outId", "out_id"),
        _req("mobile", _ident),
        _req("render_status", _ident),
        _opt("desc"),
    ),
}
