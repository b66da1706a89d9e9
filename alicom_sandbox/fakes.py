"""Realistic receipt bodies for every Alicom message type, and their malformed variants.

The shapes follow the platform's documented sample bodies (the project keeps copies in
`consumer/testing/samples/`): the same keys, the same value types (`sms_size` a string,
`sequence_id` a number, `success` a bool, times as `yyyy-MM-dd HH:mm:ss` in Asia/Shanghai).
Values are drawn from a `random.Random(seed)`, so one seed and one start time always give the
same bodies; phone numbers, biz ids, order ids and message ids are unique per generator (they
come from counters, not from the random draw).

A body travels on MNS as the platform writes it: base64 of the UTF-8 JSON text, with
`MessageBodyMD5` = uppercase hex MD5 of that base64 text (`encode_body`).

The error codes of failed SmsReports are carrier status codes seen in real receipts
(`MK:`, `IC:`, `MN:`... prefixed, `UNDELIV`, `EXPIRED`, `REJECTD`); the Chinese `err_msg`
texts beside them are illustrative, not an official mapping.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")

# A fixed default start (2024-03-01 09:00:00 Shanghai) keeps bodies reproducible from a seed.
DEFAULT_START_EPOCH_S = 1709254800.0

# The message types Alicom delivers through MNS queues (older docs add the Sign/Template ones):
# the one list of the sandbox (its queues, its token API, the bodies below). It lives here, not
# in `context`, because `context` already imports this module (through `sms_records`).
MESSAGE_TYPES: tuple[str, ...] = (
    "SmsReport",
    "SmsUp",
    "SignSmsReport",
    "TemplateSmsReport",
    "GlobeSmsReport",
    "MnsCardTemplate",
    "MnsCardVender",
)

# Kinds of body this module can make: every message type, plus (after SmsReport) the
# international site's PascalCase SmsReport, which travels in the SmsReport queue.
INTL_SMS_REPORT = "SmsReport-intl"
KINDS: tuple[str, ...] = tuple(
    kind for type_ in MESSAGE_TYPES
    for kind in ((type_, INTL_SMS_REPORT) if type_ == "SmsReport" else (type_,)))

# Malformed variants, named after the `DecodeError.reason` a decoder should give them.
# "too_large" is a body just over the MNS limit: MNS (and the sandbox) refuse to store it, so
# it only reaches a decoder some other way; `PUBLISHABLE_MALFORMED` leaves it out.
MALFORMED_KINDS: tuple[str, ...] = (
    "bad_base64",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "too_large",
)

PUBLISHABLE_MALFORMED: tuple[str, ...] = tuple(v for v in MALFORMED_KINDS if v != "too_large")

# MNS refuses a message body (the base64 text) above 64 KB.
MNS_MAX_BODY_BYTES = 65536

# The field a "missing_field" variant drops: the one that identifies the receipt.
_IDENTITY_FIELD: dict[str, str] = {
    "SmsReport": "biz_id",
    INTL_SMS_REPORT: "MessageId",
    "SmsUp": "phone_number",
    "SignSmsReport": "order_id",
    "TemplateSmsReport": "order_id",
    "GlobeSmsReport": "message_id",
    "MnsCardTemplate": "template_code",
    "MnsCardVender": "mobile",
}

_SMS_FAILURES: tuple[tuple[str, str], ...] = (
    ("MK:0001", "用户关机"),
    ("MK:0005", "用户手机号码不存在"),
    ("MK:0012", "用户停机"),
    ("IC:0015", "用户停机或欠费"),
    ("IC:0151", "用户处于不可接收状态"),
    ("MN:0017", "网络拥塞"),
    ("MI:0013", "用户手机存储已满"),
    ("UNDELIV", "短信未送达"),
    ("EXPIRED", "短信过期未送达"),
    ("REJECTD", "运营商拒绝下发"),
    ("DB:0141", "号码在黑名单中"),
)
_MOBILE_PREFIXES: tuple[str, ...] = (
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152",
    "155", "156", "158", "159", "166", "177", "180", "181", "186", "187", "188", "189",
    "198", "199",
)
_UPLINK_CONTENTS: tuple[str, ...] = ("TD", "退订", "好的", "收到\uff0c谢谢", "1", "Y", "是")
_SIGN_SOURCES: tuple[str, ...] = (
    "企事业单位的全称或简称", "工信部备案网站的全称或简称", "APP应用的全称或简称",
    "公众号", "小程序", "商标名的全称或简称",
)
_TEMPLATE_TYPES: tuple[str, ...] = ("验证码", "短信通知", "推广短信")
_CARD_VENDORS: tuple[str, ...] = ("HUAWEI", "XIAOMI", "OPPO", "VIVO", "MEIZU", "HONOR")
_GLOBE_FAILURES: tuple[tuple[str, str], ...] = (
    ("SP_UNKNOW_ERROR", "运营商未知错误"),
    ("SUBSCRIBER_ABSENT", "用户不在服务区"),
    ("NUMBER_NOT_EXIST", "号码不存在"),
)
_INTL_PREFIXES: tuple[str, ...] = ("852", "853", "65", "60", "44", "1")


def encode_body(obj: Any) -> tuple[str, str]:
    """(base64 text, uppercase hex MD5 of that text): a JSON value as the platform enqueues it.

    The JSON is compact and keeps non-ASCII characters as UTF-8 (as the samples do).
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return encode_raw(text.encode("utf-8"))


def encode_raw(raw: bytes) -> tuple[str, str]:
    """(base64 text, uppercase hex MD5 of that text) for arbitrary bytes."""
    b64 = base64.b64encode(raw).decode("ascii")
    return b64, body_md5(b64)


def body_md5(body_text: str) -> str:
    """MNS `MessageBodyMD5`: uppercase hex MD5 of the body text exactly as stored."""
    return hashlib.md5(body_text.encode("utf-8"), usedforsecurity=False).hexdigest().upper()


def message_type_of_kind(kind: str) -> str:
    """The MNS MessageType (queue suffix) a body kind travels under."""
    if kind not in KINDS:
        raise ValueError(f"unknown receipt kind {kind!r} (known: {', '.join(KINDS)})")
    return "SmsReport" if kind == INTL_SMS_REPORT else kind


@dataclass(frozen=True)
class FakeBody:
    """One message body ready for MNS.

    `obj` is the JSON value encoded (None when the bytes are not JSON at all); `malformed` is
    the expected `DecodeError.reason`, or None for a valid receipt.
    """

    kind: str
    body: str  # the base64 text stored in the queue (for "bad_base64", not base64 at all)
    body_md5: str
    obj: Any
    malformed: str | None = None


class FakeReceipts:
    """A deterministic source of receipt bodies: same seed and start, same bodies.

    `start_epoch_s` is the send time of the first receipt; each next one is sent 0-2 s later.
    `failure_rate` is the share of failed deliveries among report kinds; `extra_key_rate`
    the share of bodies carrying an unknown extra key (decoders must keep them).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        start_epoch_s: float = DEFAULT_START_EPOCH_S,
        failure_rate: float = 0.15,
        extra_key_rate: float = 0.0,
    ) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - reproducible test data, not security
        self._clock_s = start_epoch_s
        self._failure_rate = failure_rate
        self._extra_key_rate = extra_key_rate
        self._serial = 0
        # Counters make identities unique; random offsets make them look real.
        self._phone_base = self._rng.randrange(10**7)
        self._biz_base = self._rng.randrange(10**17, 9 * 10**17)
        self._makers: dict[str, Callable[[int], dict[str, Any]]] = {
            "SmsReport": self._sms_report,
            INTL_SMS_REPORT: self._intl_sms_report,
            "SmsUp": self._sms_up,
            "SignSmsReport": self._sign_report,
            "TemplateSmsReport": self._template_report,
            "GlobeSmsReport": self._globe_report,
            "MnsCardTemplate": self._card_template,
            "MnsCardVender": self._card_vender,
        }

    def make(self, kind: str) -> dict[str, Any]:
        """The decoded JSON object of the next receipt of this kind."""
        message_type_of_kind(kind)
        self._serial += 1
        self._clock_s += self._rng.uniform(0.0, 2.0)
        obj = self._makers[kind](self._serial)
        if self._extra_key_rate and self._rng.random() < self._extra_key_rate:
            obj["x_platform_trace"] = f"{self._rng.getrandbits(64):016x}"
        return obj

    def body(self, kind: str) -> FakeBody:
        """The next valid receipt of this kind, encoded as the platform enqueues it."""
        obj = self.make(kind)
        text, md5 = encode_body(obj)
        return FakeBody(kind=kind, body=text, body_md5=md5, obj=obj)

    def malformed(self, kind: str, variant: str) -> FakeBody:
        """A broken body of this kind; `variant` is one of `MALFORMED_KINDS`."""
        if variant == "bad_base64":
            text = f"!!not*base64:{self._rng.getrandbits(32)}!!"
            return FakeBody(kind, text, body_md5(text), None, variant)
        if variant == "not_utf8":
            text, md5 = encode_raw(b'{"phone_number":"\xff\xfe\xc3\x28"}')
            return FakeBody(kind, text, md5, None, variant)
        if variant == "not_json":
            text, md5 = encode_raw(b"phone_number=13800000000&success=true")
            return FakeBody(kind, text, md5, None, variant)
        obj: Any
        if variant == "not_object":
            obj = [self.make(kind)]
        elif variant == "missing_field":
            obj = self.make(kind)
            del obj[_IDENTITY_FIELD[kind]]
        elif variant == "too_large":
            obj = self._padded(kind, MNS_MAX_BODY_BYTES + 4)
        else:
            raise ValueError(f"unknown malformed variant {variant!r}")
        text, md5 = encode_body(obj)
        return FakeBody(kind, text, md5, obj, variant)

    # -- helpers ------------------------------------------------------------------------

    def _padded(self, kind: str, body_chars: int) -> dict[str, Any]:
        """A valid receipt with a `padding` key, its base64 text `body_chars` long at most and
        within 4 characters of it (3 bytes become 4 base64 characters)."""
        obj = self.make(kind)
        obj["padding"] = ""
        empty = len(encode_body(obj)[0])
        obj["padding"] = "x" * ((body_chars - empty) // 4 * 3)
        return obj

    def _time(self, offset_s: float = 0.0) -> str:
        return shanghai_time(self._clock_s + offset_s)

    def _phone(self, serial: int) -> str:
        prefix = _MOBILE_PREFIXES[serial % len(_MOBILE_PREFIXES)]
        return f"{prefix}{(self._phone_base + serial) % 10**8:08d}"

    def _failed(self) -> bool:
        return self._rng.random() < self._failure_rate

    def _sms_report(self, serial: int) -> dict[str, Any]:
        failed = self._failed()
        code, msg = self._rng.choice(_SMS_FAILURES) if failed else ("DELIVERED", "用户接收成功")
        out_id = f"order-{self._biz_base % 10**9 + serial}" if self._rng.random() < 0.7 else ""
        return {
            "phone_number": self._phone(serial),
            "send_time": self._time(),
            "report_time": self._time(self._rng.uniform(1.0, 30.0)),
            "success": not failed,
            "err_code": code,
            "err_msg": msg,
            "sms_size": str(self._rng.choice((1, 1, 1, 2, 3))),
            "biz_id": f"{self._biz_base + serial}^0",
            "out_id": out_id,
        }

    def _intl_sms_report(self, serial: int) -> dict[str, Any]:
        failed = self._failed()
        status, code = ("2", "UNDELIV") if failed else ("1", "success")
        description = "undelivered" if failed else "success"
        prefix = _INTL_PREFIXES[serial % len(_INTL_PREFIXES)]
        return {
            "To": f"{prefix}{(self._phone_base + serial) % 10**8:08d}",
            "SendDate": rfc2822_shanghai(self._clock_s),
            "ReceiveDate": rfc2822_shanghai(self._clock_s + self._rng.uniform(1.0, 40.0)),
            "Status": status,
            "SmsSize": str(self._rng.choice((1, 1, 2))),
            "ErrorCode": code,
            "ErrorDescription": description,
            "MessageId": str(self._biz_base + serial),
        }

    def _sms_up(self, serial: int) -> dict[str, Any]:
        return {
            "phone_number": self._phone(serial),
            "content": self._rng.choice(_UPLINK_CONTENTS),
            "send_time": self._time(),
            "dest_code": str(self._rng.randrange(1000, 99999)),
            "sequence_id": self._biz_base // 10**8 + serial,
        }

    def _review(self) -> tuple[str, str]:
        if self._failed():
            return "rejected", "资质材料不完整"
        return "approved", ""

    def _sign_report(self, serial: int) -> dict[str, Any]:
        status, reason = self._review()
        return {
            "sign_source": self._rng.choice(_SIGN_SOURCES),
            "reason": reason,
            "sign_name": f"沙箱签名{serial}",
            "order_id": str(self._biz_base % 10**10 + serial),
            "sign_status": status,
            "remark": "sandbox",
            "sign_scene": f"SMS_{self._biz_base % 10**9 + serial:09d}",
            "create_date": self._time(),
        }

    def _template_report(self, serial: int) -> dict[str, Any]:
        status, reason = self._review()
        return {
            "template_type": self._rng.choice(_TEMPLATE_TYPES),
            "reason": reason,
            "template_name": f"沙箱模板{serial}",
            "order_id": str(self._biz_base % 10**10 + serial),
            "template_content": "您的验证码为${code}\uff0c5分钟内有效。",
            "template_status": status,
            "remark": "sandbox",
            "template_code": f"SMS_{self._biz_base % 10**9 + serial:09d}",
            "create_date": self._time(),
        }

    def _globe_report(self, serial: int) -> dict[str, Any]:
        failed = self._failed()
        code, description = (
            self._rng.choice(_GLOBE_FAILURES) if failed else ("DELIVERED", "用户接收成功")
        )
        prefix = _INTL_PREFIXES[serial % len(_INTL_PREFIXES)]
        return {
            "to": f"{prefix}{(self._phone_base + serial) % 10**8:08d}",
            "status": "2" if failed else "1",
            "message_id": str(self._biz_base % 10**12 + serial),
            "send_date": self._time(),
            "receive_date": self._time(self._rng.uniform(1.0, 20.0)),
            "error_code": code,
            "error_description": description,
        }

    def _card_template(self, serial: int) -> dict[str, Any]:
        vendors = self._rng.sample(_CARD_VENDORS, self._rng.randint(1, 3))
        rejected = self._failed()
        ops = [
            {"state": 2 if rejected else 1, "desc": "驳回" if rejected else "通过", "vendorCode": v}
            for v in vendors
        ]
        return {
            "approval_status": 2 if rejected else 1,
            "extData": {},
            "tmpOps": ops,
            "template_code": f"CARD_SMS_{self._biz_base % 10**6 + serial}",
            "desc": "不通过:驳回" if rejected else "审核通过",
        }

    def _card_vender(self, serial: int) -> dict[str, Any]:
        failed = self._failed()
        return {
            "mobile": self._phone(serial),
            "outId": str(self._biz_base % 10**6 + serial),
            "render_status": "1" if failed else "0",
            "desc": "渲染失败" if failed else "审核通过",
        }


def shanghai_time(epoch_s: float) -> str:
    """`yyyy-MM-dd HH:mm:ss` in Asia/Shanghai, no zone suffix (the Alicom format)."""
    return dt.datetime.fromtimestamp(epoch_s, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def rfc2822_shanghai(epoch_s: float) -> str:
    """`Thu, 25 Nov 2021 10:27:00 +0800`: the international site's receipt time format."""
    return dt.datetime.fromtimestamp(epoch_s, SHANGHAI).strftime("%a, %d %b %Y %H:%M:%S %z")
