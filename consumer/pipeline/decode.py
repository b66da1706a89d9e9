"""Message body -> typed receipt, on the hot path of every message.

`decode_body` takes the MNS MessageBody as the base64 *text* (the worker receives with
`base64decode=False` so that it can check the MD5 and keep the raw body for dead letters)
and runs the checks in a fixed order, each failing with `DecodeError(reason, detail)`:

    too_large     the base64 text is over 65536 bytes (the MNS message body limit)
    md5_mismatch  `body_md5` was given and is not the MD5 of the base64 text
    bad_base64    not strict base64 (no whitespace, correct padding)
    not_utf8      the decoded bytes are not UTF-8, or a JSON escape is a lone surrogate
    not_json      not JSON (NaN / Infinity / overflowing numbers / deep nesting included)
    not_object    JSON, but not an object
    unknown_type  the message type has no receipt class
    missing_field a required field is absent or null (the detail names it)
    bad_field     a field has a value of the wrong shape (the detail names it)

`parse_object` does the last four for an already decoded object (HTTP push, reconcile).
Nothing but `DecodeError` ever leaves either function, whatever the input. Details name
fields and types but never echo values: receipts carry phone numbers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
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

__all__ = ["MAX_BODY_BYTES", "decode_body", "parse_json", "parse_object", "reject_constant"]

MAX_BODY_BYTES = 65536
"""The MNS message body limit; a longer base64 text is refused before any work on it."""

_INTL_KEYS = ("To", "Status", "MessageId")


def decode_body(
    message_type: str, body: str | bytes, body_md5: str | None, meta: ReceiptMeta
) -> Receipt:
    """Decode one MNS message body (base64 text of a UTF-8 JSON object) into a receipt.

    `body_md5` is MNS's MessageBodyMD5 (hex MD5 of the base64 text, compared without
    regard to case); None skips the check. Raises DecodeError only.
    """
    data = _body_bytes(body)
    if len(data) > MAX_BODY_BYTES:
        raise DecodeError("too_large", f"body is {len(data)} bytes, limit {MAX_BODY_BYTES}")
    if body_md5 is not None:
        _check_md5(data, body_md5)
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("bad_base64", str(exc)) from exc
    try:
        # utf-8-sig: a leading BOM is harmless; tolerate it rather than dead-letter.
        text = decoded.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DecodeError("not_utf8", f"invalid byte at offset {exc.start}") from exc
    return _parse_text(message_type, text, meta)


def parse_json(message_type: str, text: str, meta: ReceiptMeta) -> Receipt:
    """Build a receipt from JSON text that did not come through `decode_body` (a pushed
    receipt from the stream, a pushed dead letter replayed): the checks of `decode_body`
    from `not_utf8` on. Raises DecodeError only.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a surrogate-escaped byte of the original body
        raise DecodeError("not_utf8", "the text holds a lone surrogate") from exc
    return _parse_text(message_type, text, meta)


def _parse_text(message_type: str, text: str, meta: ReceiptMeta) -> Receipt:
    """JSON object text (free of lone surrogates as text) -> receipt."""
    obj = _loads(text)
    if not isinstance(obj, dict):
        raise DecodeError("not_object", f"JSON {type(obj).__name__}, expected an object")
    if "\\ud" in text or "\\uD" in text:
        # Only \uD800-\uDFFF escapes can smuggle lone surrogates past the UTF-8 check; the
        # full check runs only when one may be present.
        _check_encodable(obj)
    return _parse(message_type, obj, meta)


def parse_object(message_type: str, obj: Mapping[str, Any], meta: ReceiptMeta) -> Receipt:
    """Build a receipt from an already decoded JSON object (HTTP push, reconcile, replay).

    The object must be JSON-representable (no NaN, no lone surrogates); it becomes `raw`
    as given. Raises DecodeError only.
    """
    if not isinstance(obj, Mapping):
        raise DecodeError("not_object", f"{type(obj).__name__}, expected an object")
    _check_encodable(obj)
    return _parse(message_type, obj, meta)


def _body_bytes(body: object) -> bytes:
    if isinstance(body, str):
        # surrogatepass: a str body is never rejected for its encoding here; base64 will.
        return body.encode("utf-8", "surrogatepass")
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    raise DecodeError("bad_base64", f"body is {type(body).__name__}, expected str or bytes")


def _check_md5(data: bytes, body_md5: object) -> None:
    if not isinstance(body_md5, str):
        raise DecodeError("md5_mismatch", f"MessageBodyMD5 is {type(body_md5).__name__}")
    actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if actual != body_md5.strip().lower():
        raise DecodeError("md5_mismatch", "MessageBodyMD5 differs from the MD5 of the body")


def reject_constant(name: str) -> Any:
    """json's parse_constant hook: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


# One decoder for every body: json.loads with options builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=reject_constant, parse_float=_finite_float)


def _loads(text: str) -> Any:
    try:
        return _DECODER.decode(text)
    except RecursionError as exc:
        raise DecodeError("not_json", "nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and int digits over the interpreter limit
        raise DecodeError("not_json", str(exc)) from exc


def _check_encodable(obj: Mapping[str, Any]) -> None:
    """Raise DecodeError unless `obj` is strict JSON whose strings encode to UTF-8."""
    try:
        json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DecodeError("not_utf8", "a string holds a lone surrogate") from exc
    except RecursionError as exc:
        raise DecodeError("not_json", "nested too deeply") from exc
    except (TypeError, ValueError) as exc:
        raise DecodeError("not_json", str(exc)) from exc


def _parse(message_type: object, obj: Mapping[str, Any], meta: ReceiptMeta) -> Receipt:
    cls = MESSAGE_TYPES.get(message_type) if isinstance(message_type, str) else None
    if cls is None:
        raise DecodeError("unknown_type", f"no receipt class for message type {message_type!r:.80}")
    if cls is SmsReport and "phone_number" not in obj and any(k in obj for k in _INTL_KEYS):
        cls = IntlSmsReport
    return _build(cls, _SPECS[cls], obj, meta)


# ---------------------------------------------------------------------------------------
# Field tables: for each class, its typed attributes, the JSON keys they come from (aliases
# in order of preference), a converter, and whether the field is required. An optional field
# that is absent or null takes the dataclass default.


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
