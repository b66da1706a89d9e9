"""The sandbox's sending side as data: its settings, one record per sent number, its state.

Kept apart from the Dysmsapi actions (`alicom_sandbox.dysms`) so that `SandboxContext` can
hold the state as a field without importing the actions (which use the context).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from alicom_sandbox.fakes import shanghai_time

CARRIER_FAILURES: tuple[tuple[str, str], ...] = (
    ("MK:0001", "用户关机"), ("MK:0005", "用户手机号码不存在"), ("IC:0015", "用户停机或欠费"),
    ("UNDELIV", "短信未送达"), ("EXPIRED", "短信过期未送达"), ("DB:0141", "号码在黑名单中"),
)
"""(err_code, err_msg) of failed deliveries, as they appear in real receipts."""


@dataclass(frozen=True)
class DysmsSettings:
    """How the sending side behaves; start values from the CLI, changed by the admin API.

    Rates are shares in [0, 1]; a failed delivery gets one of `failure_codes` ((err_code,
    err_msg) pairs, picked at random); `query_qps` / `send_qps` 0 means unlimited. `account_id`
    None means the sandbox's own account. `push_url` None means MNS; `push_retry_s` are the
    waits before each re-push of a refused push (the platform waits about 1, 5, 10 minutes).
    """

    report_delay_min_s: float = 0.2
    report_delay_max_s: float = 1.0
    failure_rate: float = 0.1
    failure_codes: tuple[tuple[str, str], ...] = CARRIER_FAILURES
    duplicate_rate: float = 0.0
    loss_rate: float = 0.0
    account_id: str | None = None
    push_url: str | None = None
    push_retry_s: tuple[float, ...] = (1.0, 5.0, 10.0)
    query_qps: float = 0.0
    send_qps: float = 0.0
    throttle: str = "business"
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("failure_rate", "duplicate_rate", "loss_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0-1")
        if not 0.0 <= self.report_delay_min_s <= self.report_delay_max_s:
            raise ValueError("need 0 <= report_delay_min_s <= report_delay_max_s")
        if self.query_qps < 0 or self.send_qps < 0:
            raise ValueError("query_qps and send_qps must be >= 0")
        if not self.failure_codes or any(len(pair) != 2 for pair in self.failure_codes):
            raise ValueError("failure_codes must be a non-empty list of [err_code, err_msg]")
        if self.throttle not in ("business", "gateway"):
            raise ValueError("throttle must be business or gateway")
        if self.account_id is not None and not self.account_id.isdigit():
            raise ValueError("account_id must be digits")

    def updated(self, changes: dict[str, Any]) -> DysmsSettings:
        """A copy with `changes` applied; unknown names and bad values raise ValueError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError("unknown dysms setting(s): " + ", ".join(unknown))
        if "push_retry_s" in changes:
            changes = {**changes, "push_retry_s": tuple(float(x) for x in changes["push_retry_s"])}
        if "failure_codes" in changes:
            changes = {**changes, "failure_codes": tuple(
                (str(code), str(msg)) for code, msg in changes["failure_codes"])}
        return dataclasses.replace(self, **changes)


class SendRecord:
    """One number of one send request; `status` 1 waiting, 2 failed, 3 delivered."""

    __slots__ = ("account_id", "biz_id", "content", "err_code", "err_msg", "lost", "out_id",
                 "phone", "receive_at", "send_at", "sms_size", "status", "template_code")

    def __init__(self, biz_id: str, phone: str, send_at: float, fields: dict[str, str]) -> None:
        self.biz_id = biz_id
        self.phone = phone
        self.send_at = send_at
        self.account_id = fields["account_id"]
        self.template_code = fields["template_code"]
        self.content = fields["content"]
        self.out_id = fields["out_id"]
        self.sms_size = 1 if len(self.content) <= 70 else -(-len(self.content) // 67)
        self.status = 1
        self.err_code = ""
        self.err_msg = ""
        self.receive_at = 0.0
        self.lost = False

    def report(self) -> dict[str, Any]:
        """The SmsReport body of this record, as the platform writes it."""
        return {
            "phone_number": self.phone, "send_time": shanghai_time(self.send_at),
            "report_time": shanghai_time(self.receive_at), "success": self.status == 3,
            "err_code": self.err_code, "err_msg": self.err_msg, "sms_size": str(self.sms_size),
            "biz_id": self.biz_id, "out_id": self.out_id,
        }

    def detail(self) -> dict[str, Any]:
        """Its `SmsSendDetailDTO` in a QuerySendDetails answer."""
        return {
            "PhoneNum": self.phone, "SendStatus": self.status, "ErrCode": self.err_code,
            "TemplateCode": self.template_code, "Content": self.content, "OutId": self.out_id,
            "SendDate": shanghai_time(self.send_at),
            "ReceiveDate": shanghai_time(self.receive_at) if self.status != 1 else "",
        }


class _Bucket:
    """A token bucket of `rate` per second holding at most max(1, rate) tokens; starts full."""

    def __init__(self) -> None:
        self._tokens = float("inf")
        self._at = time.monotonic()

    def take(self, rate: float) -> bool:
        if rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass
class DysmsState:
    """The sending side of one sandbox: its settings, send records and counters."""

    start: DysmsSettings
    settings: DysmsSettings = field(init=False)
    rng: random.Random = field(init=False)
    by_phone: dict[str, list[SendRecord]] = field(default_factory=dict)
    by_biz: dict[str, list[SendRecord]] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    buckets: dict[str, _Bucket] = field(default_factory=dict)
    serial: int = 0
    session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.apply(self.start)
        self.by_phone.clear()
        self.by_biz.clear()
        self.counters.clear()
        self.buckets.clear()

    def apply(self, settings: DysmsSettings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)  # noqa: S311 - sandbox dice, not security

    def next_biz_id(self) -> str:
        self.serial += 1
        base = 1_000_000_000 * (int(time.time()) % 1_000_000_000)
        return f"{base + self.serial}^0"

    def throttled(self, action: str) -> bool:
        rate = self.settings.query_qps if action == "QuerySendDetails" else self.settings.send_qps
        return not self.buckets.setdefault(action, _Bucket()).take(rate)
