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

`parse_object` does the last four for an already decoded object (HTTP push, reconcile);
those four are `consumer.pipeline.receipt_fields` (an object -> its receipt class's fields).
Nothing but `DecodeError` ever leaves either function, whatever the input. Details name
fields and types but never echo values: receipts carry phone numbers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from consumer.errors import DecodeError
from consumer.pipeline.receipt_fields import receipt_of
from consumer.receipts import Receipt, ReceiptMeta

__all__ = ["MAX_BODY_BYTES", "decode_body", "parse_json", "parse_object", "reject_constant"]

MAX_BODY_BYTES = 65536
"""The MNS message body limit; a longer base64 text is refused before any work on it."""


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
    return receipt_of(message_type, obj, meta)


def parse_object(message_type: str, obj: Mapping[str, Any], meta: ReceiptMeta) -> Receipt:
    """Build a receipt from an already decoded JSON object (HTTP push, reconcile, replay).

    The object must be JSON-representable (no NaN, no lone surrogates); it becomes `raw`
    as given. Raises DecodeError only.
    """
    if not isinstance(obj, Mapping):
        raise DecodeError("not_object", f"{type(obj).__name__}, expected an object")
    _check_encodable(obj)
    return receipt_of(message_type, obj, meta)


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
