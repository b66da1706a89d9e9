"""Dedup key names: a keyed hash of a receipt's business identity, and the masked phone number.

A receipt's *business identity* is the text `"<Class>:<part>:<part>..."` over the fields of
`DEDUP_KEY_FIELDS` (or the configured `[dedup_keys]`): for an SmsReport
`SmsReport:<biz_id>:<phone_number>`. The platform may deliver one receipt twice under two
MessageIds; both have one identity. A part is the field's value as text (date-times reduced
to their digits, booleans to 1/0), or `~` + blake2b-128 hex of it when the value is free
text, long, contains `:` / non-printable characters, or starts with `~`.

The identity holds phone numbers, so it is never a Redis key name, a log field or a metric
label. The **dedup key** is `"<Class>:" + hex(blake2b-128(identity, key=secret))`: the
same length for every class, nothing readable in it but the class. Phone numbers are
guessable (11 digits, a known prefix), so an unkeyed hash of one can be reversed by trying
them all; the optional *key secret* (`key_secret`) makes that impossible without it. Every
process of a deployment (workers, push-worker, reconcile, replay) must see the same secret,
or the same receipt gets two keys.

Upgrading from keys in clear: versions before this one stored records under the identity
itself (`<prefix>SmsReport:<biz_id>:<phone>`). `KeyFunction.legacy` gives that old name so
the dedup store can still find those records until they expire (`consumer.pipeline.dedup`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from consumer.errors import ConfigError
from consumer.receipts import RECEIPT_CLASSES, Receipt, typed_field_names

__all__ = [
    "DEDUP_KEY_FIELDS",
    "ENV_SECRET",
    "SECRET_FILE",
    "KeyFunction",
    "business_key",
    "dedup_key",
    "key_names",
    "key_secret",
    "log_fields",
    "make_identity",
    "make_key_function",
    "mask_phone",
    "resolve_key_fields",
]

DEDUP_KEY_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "SmsReport": ("biz_id", "phone_number"),
        "IntlSmsReport": ("message_id", "status"),
        "SmsUp": ("phone_number", "dest_code", "sequence_id", "send_time", "content"),
        "SignSmsReport": ("order_id", "sign_status", "reason"),
        "TemplateSmsReport": ("order_id", "template_status", "reason"),
        "GlobeSmsReport": ("message_id", "status"),
        "MnsCardTemplate": ("template_code", "approval_status", "vendor_ops"),
        "MnsCardVender": ("out_id", "mobile", "render_status"),
    }
)
"""Default identity fields per receipt class name (typed attribute names, in key order).
Each class's docstring says why its fields identify it."""

#: systemd credential (`LoadCredential=dedup_key_secret:...`) holding the key secret.
SECRET_FILE: Final = "dedup_key_secret"  # noqa: S105 - a file name, not a secret
#: Environment variable holding the key secret when there is no credential file.
ENV_SECRET: Final = "ALICOM_RECEIPTS_DEDUP_KEY_SECRET"  # noqa: S105 - a variable name
_PERSON: Final = b"alicom-dedup"  # blake2b personalisation: these hashes are for key names
_DIGEST_BYTES: Final = 16

# Free-text fields are always hashed: they are long or user-written, and a part must stay
# short and free of the separator.
_ALWAYS_HASHED = frozenset(
    {"content", "reason", "remark", "err_msg", "desc", "template_content", "error_description"}
)
# Date-time fields keep only their digits: `2017-09-01 00:00:00` and the compact
# `20170901000000` are the same instant, and the `:` separator stays out of the identity.
_TIME_FIELDS = frozenset({"send_time", "report_time", "create_date", "send_date", "receive_date"})
_TIME_CHARS = frozenset("0123456789-: ")
_MAX_PLAIN_PART = 64


def _json_safe(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value


def _hashed(text: str) -> str:
    # surrogatepass: JSON escapes can carry lone surrogates; a key must never fail to build.
    data = text.encode("utf-8", "surrogatepass")
    return "~" + hashlib.blake2b(data, digest_size=16).hexdigest()


def _key_part(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if name in _TIME_FIELDS and value and _TIME_CHARS.issuperset(value):
            return "".join(c for c in value if c.isdigit())
        if (
            name in _ALWAYS_HASHED
            or len(value) > _MAX_PLAIN_PART
            or ":" in value
            or value.startswith("~")
            or not value.isprintable()
        ):
            return _hashed(value)
        return value
    # Structured values (vendor ops): hash a canonical JSON form.
    canonical = json.dumps([_json_safe(v) for v in value], sort_keys=True, ensure_ascii=True)
    return _hashed(canonical)


def _checked_fields(cls: type[Receipt], names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise ConfigError(f"dedup key fields of {cls.__name__} must be a list, not a string")
    checked = tuple(names)
    if not checked:
        raise ConfigError(f"dedup key fields of {cls.__name__} must not be empty")
    known = typed_field_names(cls)
    unknown = [n for n in checked if n not in known]
    if unknown:
        raise ConfigError(
            f"dedup key fields of {cls.__name__}: unknown {unknown}; known: {list(known)}"
        )
    return checked


def resolve_key_fields(
    overrides: Mapping[str, Sequence[str]] | None = None,
) -> Mapping[str, tuple[str, ...]]:
    """DEDUP_KEY_FIELDS with `overrides` (class name -> field names) applied and checked.

    Raises ConfigError for an unknown class name, an empty list or an unknown field.
    """
    resolved = dict(DEDUP_KEY_FIELDS)
    for cls_name, names in (overrides or {}).items():
        cls = RECEIPT_CLASSES.get(cls_name)
        if cls is None:
            raise ConfigError(
                f"dedup key fields: unknown receipt class {cls_name!r}; "
                f"known: {sorted(RECEIPT_CLASSES)}"
            )
        resolved[cls_name] = _checked_fields(cls, names)
    return MappingProxyType(resolved)


def make_identity(
    overrides: Mapping[str, Sequence[str]] | None = None,
) -> Callable[[Receipt], str]:
    """A `receipt -> business identity` function (clear text: never store or log it)."""
    resolved = resolve_key_fields(overrides)

    def identity_of(receipt: Receipt) -> str:
        cls_name = type(receipt).__name__
        parts = [cls_name]
        for name in resolved[cls_name]:
            parts.append(_key_part(name, getattr(receipt, name)))
        return ":".join(parts)

    return identity_of


class KeyFunction:
    """`key_of(receipt)`: the receipt's dedup key, `"<Class>:<32 hex>"` (see the module doc).

    `legacy(receipt)` is the name the same receipt's record had before keys were hashed
    (its identity in clear); only the dedup store's upgrade fallback may use it.
    """

    def __init__(self, overrides: Mapping[str, Sequence[str]] | None = None,
                 secret: bytes = b"") -> None:
        self._identity = make_identity(overrides)
        # blake2b takes a key of at most 64 bytes; a longer secret is hashed down to one.
        self._secret = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()
        self.keyed = bool(secret)

    def __call__(self, receipt: Receipt) -> str:
        return self.names(receipt)[0]

    def legacy(self, receipt: Receipt) -> str:
        return self._identity(receipt)

    def names(self, receipt: Receipt) -> tuple[str, str]:
        """(dedup key, legacy name) from one build of the identity (the claim needs both)."""
        identity = self._identity(receipt)
        digest = hashlib.blake2b(identity.encode("utf-8", "surrogatepass"),
                                 digest_size=_DIGEST_BYTES, key=self._secret, person=_PERSON)
        return "%s:%s" % (type(receipt).__name__, digest.hexdigest()), identity


def make_key_function(overrides: Mapping[str, Sequence[str]] | None = None,
                      secret: bytes = b"") -> KeyFunction:
    """The key function over the configured fields (checked once, up front) and secret."""
    return KeyFunction(overrides, secret)


def key_secret(env: Mapping[str, str]) -> bytes:
    """The key secret: the systemd credential `dedup_key_secret` in `$CREDENTIALS_DIRECTORY`,
    else `$ALICOM_RECEIPTS_DEDUP_KEY_SECRET`, else none (b"": keys are hashed unkeyed).

    Surrounding whitespace (a trailing newline in a file) is not part of it. Raises
    ConfigError when the credential file exists but cannot be read.
    """
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = os.path.join(directory, SECRET_FILE)
        try:
            with open(path, "rb") as f:
                secret = f.read().strip()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError("the dedup key secret %s cannot be read: %s"
                              % (path, exc.strerror or type(exc).__name__)) from exc
        else:
            if secret:
                return secret
    return env.get(ENV_SECRET, "").strip().encode("utf-8")


def mask_phone(number: str) -> str:
    """A phone number a person can recognise but nobody can dial: `138****0001`.

    Keeps the first 3 and last 4 digits of a number of 11 or more characters (after an
    international prefix: `+8613800000001` -> `+86138****0001`), the last 2 of a shorter
    one, and nothing of one of 4 or fewer.
    """
    n = len(number)
    if n >= 11:
        head = n - 8  # 3 digits of a mainland number, more with a country code
        return number[:head] + "****" + number[-4:]
    if n > 4:
        return "*" * (n - 2) + number[-2:]
    return "*" * n


#: `receipt -> identity` over DEDUP_KEY_FIELDS (clear text; tests and the upgrade fallback).
business_key = make_identity()
#: `receipt -> dedup key` over DEDUP_KEY_FIELDS, unkeyed: for tools and tests. A running
#: process uses `Settings.key_function()`, which has the deployment's fields and secret.
dedup_key = make_key_function()


def key_names(key_of: Callable[[Receipt], str], receipt: Receipt) -> tuple[str, str | None]:
    """(dedup key, old clear-text record name for the dedup store's upgrade fallback) of
    `receipt`; the name is None when `key_of` is not a KeyFunction (a test's own)."""
    if isinstance(key_of, KeyFunction):
        return key_of.names(receipt)
    return key_of(receipt), None


#: Fields holding a phone number, per receipt class: shown masked in log lines.
_PHONE_FIELDS: Final = ("phone_number", "to", "mobile")
#: Fields a person uses to find a receipt (none of them personal).
_PLAIN_FIELDS: Final = ("biz_id", "out_id", "order_id", "template_code")


def log_fields(receipt: Receipt | None) -> dict[str, str]:
    """What lets a person recognise a receipt in a log line: its business ids in clear and
    its phone number masked (`phone="138****0001"`); {} without a receipt."""
    if receipt is None:
        return {}
    plain, phones = _LOG_FIELDS.get(type(receipt)) or _log_fields_of(type(receipt))
    out: dict[str, str] = {}
    for name in plain:
        value = getattr(receipt, name)
        if value:
            out[name] = str(value)
    for name in phones:
        value = getattr(receipt, name)
        if value:
            out["phone"] = mask_phone(str(value))
            break
    return out


#: Per receipt class, its `_PLAIN_FIELDS` and `_PHONE_FIELDS` (a line per receipt: looked
#: up once per class, not per line).
_LOG_FIELDS: dict[type[Receipt], tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _log_fields_of(cls: type[Receipt]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = typed_field_names(cls)
    # A benign race: two threads may both compute the same pair.
    found = _LOG_FIELDS[cls] = (tuple(n for n in _PLAIN_FIELDS if n in names),
                                tuple(n for n in _PHONE_FIELDS if n in names))
    return found
