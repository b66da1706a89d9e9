"""Typed receipts: one frozen dataclass per Alicom message type.

A receipt is built by `consumer.pipeline.decode` from one JSON object (an MNS message body or one
element of an HTTP push array). Every typed field has the documented meaning under a
snake_case name; the object exactly as received stays in `raw`, unknown keys included.

A receipt's dedup key (its business identity, hashed) is built by `consumer.keys`; each
class's docstring says which fields identify it and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

__all__ = [
    "MESSAGE_TYPES",
    "RECEIPT_CLASSES",
    "SHANGHAI",
    "SHANGHAI_UTC_OFFSET_S",
    "CardVendorOp",
    "GlobeSmsReport",
    "IntlSmsReport",
    "MnsCardTemplate",
    "MnsCardVender",
    "Receipt",
    "ReceiptMeta",
    "SignSmsReport",
    "SmsReport",
    "SmsUp",
    "TemplateSmsReport",
    "shanghai_day",
    "typed_field_names",
]


#: The platform's clock: every time in a receipt, a token's ExpireTime and QuerySendDetails'
#: SendDate are Asia/Shanghai wall time (the package depends on tzdata, so zoneinfo finds it
#: everywhere). The one definition; `SHANGHAI_UTC_OFFSET_S` is its offset, UTC+8 all year
#: since 1991, for the arithmetic that turns epoch seconds into Shanghai days cheaply.
SHANGHAI = ZoneInfo("Asia/Shanghai")
SHANGHAI_UTC_OFFSET_S = 8 * 3600


def shanghai_day(epoch_s: float) -> int:
    """The Asia/Shanghai calendar day (the platform's: UTC+8 all year) of an epoch time, as
    days since 1970-01-01."""
    return int((epoch_s + SHANGHAI_UTC_OFFSET_S) // 86400)


@dataclass(frozen=True, slots=True)
class ReceiptMeta:
    """Where a receipt came from; handlers may read it, nothing in it is secret.

    `source` is "mns", "push", "reconcile" or "replay". For push receipts `queue` and
    `message_id` are "" and `dequeue_count` is 0; times are epoch milliseconds, 0 if unknown.
    """

    source: str
    queue: str = ""
    message_id: str = ""
    dequeue_count: int = 0
    enqueue_time_ms: int = 0
    first_dequeue_time_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe copy of the fields."""
        return {
            "source": self.source,
            "queue": self.queue,
            "message_id": self.message_id,
            "dequeue_count": self.dequeue_count,
            "enqueue_time_ms": self.enqueue_time_ms,
            "first_dequeue_time_ms": self.first_dequeue_time_ms,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """Base of every typed receipt.

    `raw` is the decoded JSON object exactly as received (excluded from hashing because a
    dict is not hashable; it still takes part in equality). Subclasses are frozen too; a
    receipt is a value and may be shared between threads.
    """

    message_type: ClassVar[str] = ""

    raw: Mapping[str, Any] = field(hash=False, repr=False)
    meta: ReceiptMeta

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict for JSON-lines, webhook and stream handlers.

        Keys: `message_type` (the queue type, "SmsReport" for both report classes),
        `receipt_class` (e.g. "IntlSmsReport"), every typed field, `meta` and `raw` (a
        shallow copy). The dedup key is left out on purpose: it depends on configuration.
        """
        out: dict[str, Any] = {
            "message_type": self.message_type,
            "receipt_class": type(self).__name__,
        }
        for name in typed_field_names(type(self)):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = [_json_safe(item) for item in value]
            out[name] = value
        out["meta"] = self.meta.to_dict()
        out["raw"] = dict(self.raw)
        return out


@dataclass(frozen=True, slots=True)
class CardVendorOp:
    """One phone vendor's review of a card SMS template (an element of `tmpOps`).

    The decoder fills absent parts with "" and, for `state`, -1 (not reported).
    """

    vendor_code: str
    state: int
    desc: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe copy of the fields."""
        return {"vendor_code": self.vendor_code, "state": self.state, "desc": self.desc}


@dataclass(frozen=True, slots=True, kw_only=True)
class SmsReport(Receipt):
    """Delivery report of one mainland SMS to one number.

    Required: `biz_id`, `phone_number` (the identity) and `success` (the outcome; `true` /
    `false` strings are accepted). `sms_size` arrives as a string and becomes an int, 0 when
    absent. Times are kept as sent (`yyyy-MM-dd HH:mm:ss`, Asia/Shanghai).

    Identity `SmsReport:<biz_id>:<phone_number>`: one biz_id covers every number of one send
    request, and the platform sends one report per number per send.
    """

    message_type: ClassVar[str] = "SmsReport"

    phone_number: str
    biz_id: str
    success: bool
    send_time: str = ""
    report_time: str = ""
    err_code: str = ""
    err_msg: str = ""
    sms_size: int = 0
    out_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IntlSmsReport(Receipt):
    """The international site's PascalCase delivery report; it arrives in the SmsReport queue.

    Recognised by `To` / `Status` / `MessageId` without a `phone_number`. Required:
    `MessageId`, `To`, `Status` (text; "1" delivered, "2" failed, "6" other per the docs).
    Dates are kept as sent (RFC 1123 style with offset in the docs' sample).

    Identity `IntlSmsReport:<message_id>:<status>`: MessageId identifies the sent message;
    the status is included so that a later report with a different status for the same
    message (the meaning of "6" is not documented as final) is never dropped as a duplicate.
    """

    message_type: ClassVar[str] = "SmsReport"

    to: str
    status: str
    message_id: str
    send_date: str = ""
    receive_date: str = ""
    error_code: str = ""
    error_description: str = ""
    sms_size: int = 0

    @property
    def success(self) -> bool:
        """True when the platform reported delivery (Status "1")."""
        return self.status == "1"


@dataclass(frozen=True, slots=True, kw_only=True)
class SmsUp(Receipt):
    """An uplink (reply) SMS from a phone to one of our numbers.

    Required: `phone_number`, `content` (may be empty), `send_time`, `dest_code`,
    `sequence_id` (number in queue docs, string in push docs; always text here).
    `send_time` in the old compact form `20170901000000` is normalised to
    `2017-09-01 00:00:00`; other forms are kept as sent. `sign_name` is optional.

    Identity `SmsUp:<phone_number>:<dest_code>:<sequence_id>:<send_time digits>:~<hash
    (content)>`: no single documented field identifies an uplink, so all of them together do.
    """

    message_type: ClassVar[str] = "SmsUp"

    phone_number: str
    content: str
    send_time: str
    dest_code: str
    sequence_id: str
    sign_name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SignSmsReport(Receipt):
    """Review result of an SMS signature application.

    Required: `order_id` (`order_id` in queue docs, `orderId` in push docs) and
    `sign_status` ("approving", "approved", "rejected"). The rest defaults to "".

    Identity `SignSmsReport:<order_id>:<sign_status>:~<hash(reason)>`: one review ticket
    goes through each status once; the reason tells a second rejection of a re-submitted
    ticket from a repeat of the first one (`create_date` is the signature's creation date and
    does not change between reviews, so it adds nothing).
    """

    message_type: ClassVar[str] = "SignSmsReport"

    order_id: str
    sign_status: str
    sign_name: str = ""
    sign_source: str = ""
    sign_scene: str = ""
    create_date: str = ""
    reason: str = ""
    remark: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateSmsReport(Receipt):
    """Review result of an SMS template application.

    Required: `order_id` (or `orderId`) and `template_status`. The rest defaults to "".

    Identity `TemplateSmsReport:<order_id>:<template_status>:~<hash(reason)>`, for the same
    reasons as `SignSmsReport`.
    """

    message_type: ClassVar[str] = "TemplateSmsReport"

    order_id: str
    template_status: str
    template_code: str = ""
    template_name: str = ""
    template_type: str = ""
    template_content: str = ""
    create_date: str = ""
    reason: str = ""
    remark: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobeSmsReport(Receipt):
    """Delivery report of one international (Globe) SMS.

    Required: `message_id` and `status` ("1" delivered, "2" failed). `to` and the rest
    default to "".

    Identity `GlobeSmsReport:<message_id>:<status>`: the message id is the platform's
    identity of the sent message; the status is kept in the key so that a genuinely new
    status is never swallowed.
    """

    message_type: ClassVar[str] = "GlobeSmsReport"

    message_id: str
    status: str
    to: str = ""
    send_date: str = ""
    receive_date: str = ""
    error_code: str = ""
    error_description: str = ""

    @property
    def success(self) -> bool:
        """True when the platform reported delivery (status "1")."""
        return self.status == "1"


@dataclass(frozen=True, slots=True, kw_only=True)
class MnsCardTemplate(Receipt):
    """Review state of a card SMS template across phone vendors.

    Required: `template_code` and `approval_status` (an integer, digit strings accepted).
    `vendor_ops` holds `tmpOps` (empty when absent); `extData` (the caller's own parameters)
    is only in `raw`.

    Identity `MnsCardTemplate:<template_code>:<approval_status>:~<hash(vendor_ops)>`: the
    overall status can stay the same while vendors decide one by one, so the vendor states
    are part of the identity.
    """

    message_type: ClassVar[str] = "MnsCardTemplate"

    template_code: str
    approval_status: int
    desc: str = ""
    vendor_ops: tuple[CardVendorOp, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MnsCardVender(Receipt):
    """Render (delivery) result of one card SMS on one phone.

    Required: `out_id` (`outId`, the caller's id of the send), `mobile`, `render_status`.

    Identity `MnsCardVender:<out_id>:<mobile>:<render_status>`: one send to one number has
    one render result; the status is kept so that a changed result is not swallowed.
    """

    message_type: ClassVar[str] = "MnsCardVender"

    out_id: str
    mobile: str
    render_status: str
    desc: str = ""


MESSAGE_TYPES: Mapping[str, type[Receipt]] = MappingProxyType(
    {
        cls.message_type: cls
        for cls in (
            SmsReport,
            SmsUp,
            SignSmsReport,
            TemplateSmsReport,
            GlobeSmsReport,
            MnsCardTemplate,
            MnsCardVender,
        )
    }
)
"""Queue message type -> the class a body of that type becomes (IntlSmsReport aside)."""

RECEIPT_CLASSES: Mapping[str, type[Receipt]] = MappingProxyType(
    {cls.__name__: cls for cls in (*MESSAGE_TYPES.values(), IntlSmsReport)}
)
"""Class name -> class, for every receipt class; the keys of `DEDUP_KEY_FIELDS`."""

_FIELD_NAMES: dict[type[Receipt], tuple[str, ...]] = {}


def typed_field_names(cls: type[Receipt]) -> tuple[str, ...]:
    """The typed attribute names of a receipt class, in declaration order (no raw/meta)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        # A benign race: two threads may both compute the same tuple.
        names = tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("raw", "meta"))
        _FIELD_NAMES[cls] = names
    return names


def _json_safe(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value
