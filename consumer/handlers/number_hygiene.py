"""`number-hygiene`: keeps the list of numbers not to send to (`consumer.reports.numbers`)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from consumer.clients.redis_client import RedisClient
from consumer.clients.redis_scripts import ScriptPlan
from consumer.handlers import PlannedRedisHandler, require_number, require_text
from consumer.receipts import (
    SHANGHAI_UTC_OFFSET_S,
    IntlSmsReport,
    Receipt,
    SmsReport,
    shanghai_day,
)
from consumer.reports.delivery_stats import parse_receipt_time
from consumer.reports.number_rules import Classifier, parse_policies, parse_rules
from consumer.reports.numbers import DEFAULT_PREFIX, Event, NumberList
from consumer.reports.phone_ids import phone_ids

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
#: 1970-01-01 00:00 UTC on the Asia/Shanghai wall clock, naive: a naive Shanghai time minus
#: this is epoch seconds.
_SHANGHAI_EPOCH = datetime(1970, 1, 1) + timedelta(seconds=SHANGHAI_UTC_OFFSET_S)
_from_iso = datetime.fromisoformat


@functools.lru_cache(maxsize=64)  # receipts of a batch, and of a day, share their date
def _day_of_date(ymd: str) -> int | None:
    """`yyyy-MM-dd` as days since 1970; None when it is no date (date() refuses an
    impossible day: 2026-13-45)."""
    try:
        return date(int(ymd[0:4]), int(ymd[5:7]), int(ymd[8:10])).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None


def receipt_epoch(text: str, fallback: float) -> float:
    """Epoch seconds of a receipt time; `yyyy-MM-dd HH:mm:ss` (Asia/Shanghai, UTC+8 all year)
    is read by `datetime.fromisoformat` (C, and it refuses an impossible date or time: ~3x
    cheaper than slicing, ~30x than strptime; this runs per receipt); anything else goes
    through `parse_receipt_time`, and `fallback` when that cannot read it either."""
    if len(text) == 19 and text[4] == "-" and text[10] == " " and text[13] == ":" == text[16]:
        try:
            return (_from_iso(text) - _SHANGHAI_EPOCH).total_seconds()
        except ValueError:
            return fallback
    parsed = parse_receipt_time(text)
    return parsed.timestamp() if parsed is not None else fallback


def receipt_day(text: str, today: int) -> int:
    """The day of a receipt time (days since 1970, Asia/Shanghai): in the usual shape the
    date's day, whatever its time of day; else `receipt_epoch`'s day; `today` when the text
    cannot be read. A guess of the send day (the tracker corrects a wrong one)."""
    if len(text) == 19 and text[4] == "-" and text[10] == " ":
        day = _day_of_date(text[:10])
        return today if day is None else day
    at = receipt_epoch(text, math.nan)
    return today if math.isnan(at) else shanghai_day(at)


class NumberHygiene(PlannedRedisHandler):
    """Records each failed delivery whose err_code / err_msg says something about the number
    (by the rule table), suppresses numbers by the policy of that reason, and lifts a
    suppression when a later delivery to the number succeeds (where the policy says so).

    Options: `url` (redis://, required; a password in it never appears in errors), `prefix`
    (default "alicom:numbers"), `rules` (list of {reason, codes, msg}, tried before the
    defaults), `default_rules` (false: only yours), `policies` (reason -> {after, over_days,
    expire_days, on_delivery}, over the defaults), `retention_days` (how long the record of a
    number that is not suppressed is kept after its last failure, default 180),
    `hash_numbers` (store keyed hashes instead of numbers: `consumer.reports.phone_ids`),
    `timeout_s`.

    One script call per batch. Receipts of SmsReport (reconciled ones included) and the
    international IntlSmsReport (Status 1 delivered / 2 failed). A Redis failure retries the
    batch; a receipt handled twice is counted once (the record keeps its last BizIds).
    """

    name = "number-hygiene"
    types: tuple[str, ...] | None = ("SmsReport", "IntlSmsReport")

    def __init__(self, url: str | RedisClient, prefix: str = DEFAULT_PREFIX,
                 rules: Sequence[Mapping[str, Any]] = (), default_rules: bool = True,
                 policies: Mapping[str, Mapping[str, Any]] | None = None,
                 retention_days: float = 180.0, hash_numbers: bool = False,
                 timeout_s: float = 5.0) -> None:
        require_text(self.name, "prefix", prefix)
        require_number(self.name, "retention_days", retention_days, above=0)
        require_number(self.name, "timeout_s", timeout_s, above=0)
        self._classify = Classifier(parse_rules(rules, default_rules)).reason
        self.numbers = NumberList(self._connect(url, timeout_s), prefix, phone_ids(hash_numbers),
                                  parse_policies(policies), retention_days)

    def events(self, receipts: Sequence[Receipt], now: float) -> list[Event]:
        """What the batch tells the list: deliveries, and the failures a rule classifies (as
        plain tuples of `Delivery`'s and `Failure`'s fields)."""
        number_of, classify, out = self.numbers.ids.of, self._classify, list[Event]()
        for r in receipts:
            if isinstance(r, SmsReport):
                phone, ok, at_text = r.phone_number, r.success, r.report_time
                code, msg, biz = r.err_code, r.err_msg, r.biz_id
            elif isinstance(r, IntlSmsReport) and r.status in ("1", "2"):
                phone, ok, at_text = r.to, r.status == "1", r.receive_date
                code, msg, biz = r.error_code, r.error_description, r.message_id
            else:
                continue
            if not phone:
                continue
            if ok:
                out.append((number_of(phone), receipt_epoch(at_text, now)))
                continue
            reason = classify(code, msg)
            if reason is not None:
                out.append((number_of(phone), receipt_epoch(at_text, now), reason, code, msg,
                            biz))
        return out

    def plan(self, receipts: Sequence[Receipt]) -> ScriptPlan[None]:
        """The batch's write: one script call."""
        return self.numbers.apply_plan(self.events(receipts, time.time()))
