"""Number hygiene: the rule table, the policies and the number list, on a real Redis."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from consumer.errors import ConfigError
from consumer.handlers.number_hygiene import NumberHygiene, receipt_day, receipt_epoch
from consumer.pipeline.decode import parse_object
from consumer.receipts import Receipt, ReceiptMeta
from consumer.reports.number_rules import Classifier, Policy, parse_policies, parse_rules
from consumer.reports.numbers import Delivery, Failure, NumberList
from consumer.reports.phone_ids import PhoneIds, phone_ids

DAY = 86400
T0 = 1_717_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _report(phone: str, biz: str, ok: bool, code: str, msg: str, at: float) -> Receipt:
    text = dt.datetime.fromtimestamp(at, dt.timezone(dt.timedelta(hours=8))).strftime(
        "%Y-%m-%d %H:%M:%S")
    obj = {"phone_number": phone, "biz_id": biz, "success": ok, "err_code": code,
           "err_msg": msg, "send_time": text, "report_time": text, "sms_size": "1"}
    return parse_object("SmsReport", obj, ReceiptMeta(source="mns"))


@pytest.mark.parametrize(("code", "msg", "reason"), [
    ("MK:0005", "用户手机号码不存在", "empty_number"),
    ("IC:0015", "用户停机或欠费", "stopped"),
    ("MK:0001", "用户关机", "powered_off"),
    ("DB:0141", "号码在黑名单中", "blacklisted"),
    ("UNDELIV", "短信未送达", "undeliverable"),
    ("UNDELIV", "用户停机", "stopped"),  # the text is the more precise
    ("EXPIRED", "", "expired"),
    ("rejectd", "", "rejected"),
    ("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号", "invalid_number"),
    ("MK:0099", "", None),  # a carrier code without text says nothing
    ("isv.BUSINESS_LIMIT_CONTROL", "触发流控", None),  # about the sender, not the number
])
def test_default_rules_classify_by_documented_meaning(code: str, msg: str,
                                                      reason: str | None) -> None:
    assert Classifier().reason(code, msg) == reason


def test_configured_rules_come_before_the_defaults_or_replace_them() -> None:
    rules = parse_rules([{"reason": "carrier_vacant", "codes": "MK:0099"}])
    assert Classifier(rules).reason("MK:0099", "") == "carrier_vacant"
    assert Classifier(rules).reason("UNDELIV", "") == "undeliverable"
    only = parse_rules([{"reason": "x", "msg": "关机"}], defaults=False)
    assert Classifier(only).reason("UNDELIV", "") is None
    with pytest.raises(ConfigError, match="reason"):
        parse_rules([{"reason": "Bad Name", "msg": "x"}])
    with pytest.raises(ConfigError, match="regular expression"):
        parse_rules([{"reason": "ok", "msg": "("}])
    with pytest.raises(ConfigError, match="unknown"):
        parse_policies({"stopped": {"afterr": 2}})
    assert "stopped" not in parse_policies({"stopped": {}})


@given(st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2199, 12, 31)))
def test_receipt_times_are_read_as_shanghai_time(moment: dt.datetime) -> None:
    moment = moment.replace(microsecond=0)
    expected = moment.replace(tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp()
    assert receipt_epoch(moment.strftime("%Y-%m-%d %H:%M:%S"), -1) == expected
    assert receipt_epoch("garbage", -1) == -1
    assert receipt_epoch("2026-13-45 09:00:00", -1) == -1  # the shape, not a date
    assert receipt_epoch("2026-02-30 09:00:00", -1) == -1
    assert receipt_epoch("2026-11-28 24:00:00", -1) == -1


def test_a_receipts_send_day_is_read_from_its_date() -> None:
    day = int((dt.datetime(2026, 11, 29, tzinfo=dt.timezone(dt.timedelta(hours=8)))
               .timestamp() + 8 * 3600) // DAY)
    assert receipt_day("2026-11-29 00:00:00", 7) == day
    assert receipt_day("2026-11-29 23:59:59", 7) == day
    assert receipt_day("20261129093000", 7) == day  # the other shape the platform writes
    assert receipt_day("2026-13-45 09:00:00", 7) == 7  # unreadable: the caller's today
    assert receipt_day("", 7) == 7


def test_a_blank_number_is_passed_over(redis_client: redis.Redis, clock: Clock) -> None:
    numbers = NumberList(redis_client, clock=clock)
    numbers.apply([Delivery("", T0), Failure("13800000001", T0, "empty_number", "MK:0005",
                                             "空号", "2^0")])
    assert numbers.is_suppressed("13800000001")
    assert numbers.get("") is None


def test_a_message_text_json_cannot_carry_is_recorded_with_a_mark_in_its_place(
        redis_client: redis.Redis, clock: Clock) -> None:
    # A lone surrogate (a JSON body may escape one): the batch's rows travel as JSON.
    NumberList(redis_client, clock=clock).apply([
        Failure("13800000001", T0, "empty_number", "MK:0005", "空号\ud800", "2^0"),
        Failure("13800000002", T0, "empty_number", "MK:0005", "空号", "2^0")])
    record = NumberList(redis_client, clock=clock).get("13800000001")
    assert record is not None and (record.err_code, record.err_msg) == ("MK:0005", "空号?")
    assert NumberList(redis_client, clock=clock).is_suppressed("13800000002")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _hygiene(redis_client: redis.Redis, clock: Clock, **options: Any) -> NumberHygiene:
    """The handler as configured, its list on the test's clock."""
    kwargs = redis_client.connection_pool.connection_kwargs
    handler = NumberHygiene("redis://%s:%s/0" % (kwargs["host"], kwargs["port"]), **options)
    handler.numbers = NumberList(redis_client, ids=handler.numbers.ids,
                                 policies=parse_policies(options.get("policies")), clock=clock)
    return handler


def test_one_empty_number_failure_suppresses_at_once_and_a_delivery_lifts_it(
        redis_client: redis.Redis, clock: Clock) -> None:
    h = _hygiene(redis_client, clock)
    h.handle_batch([_report("13800000001", "1^0", False, "MK:0005", "用户手机号码不存在", T0),
                    _report("13800000002", "1^0", True, "DELIVERED", "", T0)])
    numbers = h.numbers
    assert numbers.suppressed_many(["13800000001", "+8613800000001", "13800000002"]) == [
        True, True, False]
    [record] = numbers.suppressed()
    assert (record.number, record.reason, record.failures, record.err_code) == (
        "13800000001", "empty_number", 1, "MK:0005")
    assert record.suppressed_until == T0 + 90 * DAY
    # a delivery reported before the failure does not lift it; a later one does
    h.handle_batch([_report("13800000001", "2^0", True, "DELIVERED", "", T0 - 60)])
    assert numbers.is_suppressed("13800000001")
    h.handle_batch([_report("13800000001", "3^0", True, "DELIVERED", "", T0 + 60)])
    assert not numbers.is_suppressed("13800000001")
    assert numbers.get("13800000001") is None


def test_powered_off_needs_three_failures_over_two_days_and_lapses(
        redis_client: redis.Redis, clock: Clock) -> None:
    h = _hygiene(redis_client, clock)
    phone = "13900000009"
    for i, at in enumerate((T0, T0 + DAY, T0 + DAY + 60)):
        clock.now = at
        h.handle_batch([_report(phone, "%d^0" % i, False, "MK:0001", "用户关机", at)])
    # three failures, but only one day and a minute apart
    record = h.numbers.get(phone)
    assert record is not None and record.failures == 3 and not record.suppressed
    # the same receipt handled again is not a fourth failure
    h.handle_batch([_report(phone, "2^0", False, "MK:0001", "用户关机", T0 + DAY + 60)])
    assert h.numbers.get(phone).failures == 3  # type: ignore[union-attr]
    clock.now = T0 + 2 * DAY
    h.handle_batch([_report(phone, "9^0", False, "MK:0001", "用户关机", clock.now)])
    assert h.numbers.is_suppressed(phone)
    clock.now = T0 + 9 * DAY + 1  # 7 days after the last failure
    assert not h.numbers.is_suppressed(phone)
    assert h.numbers.suppressed() == []


def test_a_new_reason_starts_a_new_count(redis_client: redis.Redis, clock: Clock) -> None:
    h = _hygiene(redis_client, clock, policies={"stopped": {"after": 2}})
    phone = "13700000007"
    h.handle_batch([_report(phone, "0^0", False, "MK:0005", "用户手机号码不存在", T0 - 5)])
    assert h.numbers.is_suppressed(phone)
    h.handle_batch([_report(phone, "1^0", False, "MK:0001", "用户关机", T0)])
    assert not h.numbers.is_suppressed(phone)  # "powered off": the number exists after all
    h.handle_batch([_report(phone, "2^0", False, "IC:0015", "用户停机或欠费", T0 + 1)])
    assert not h.numbers.is_suppressed(phone)
    h.handle_batch([_report(phone, "3^0", False, "IC:0015", "用户停机或欠费", T0 + 2)])
    record = h.numbers.get(phone)
    assert record is not None and record.suppressed and record.reason == "stopped"
    assert (record.first_failure, record.last_failure, record.err_msg) == (
        T0 + 1, T0 + 2, "用户停机或欠费")


def test_manual_entries_ignore_deliveries_until_removed(redis_client: redis.Redis,
                                                        clock: Clock) -> None:
    numbers = NumberList(redis_client, clock=clock)
    numbers.add("13600000006", reason="complained")
    h = _hygiene(redis_client, clock)
    h.handle_batch([_report("13600000006", "1^0", True, "DELIVERED", "", T0 + 10)])
    [record] = numbers.suppressed(reason="manual")
    assert (record.number, record.err_msg) == ("13600000006", "complained")
    assert numbers.remove(["13600000006", "13600000000"]) == 1
    assert not numbers.is_suppressed("13600000006")


def test_hashed_numbers_are_looked_up_without_being_stored(
        redis_client: redis.Redis, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALICOM_RECEIPTS_DEDUP_KEY_SECRET", "0123456789abcdef-secret")
    h = _hygiene(redis_client, clock, hash_numbers=True)
    h.handle_batch([_report("13800000001", "1^0", False, "DB:0141", "号码在黑名单中", T0)])
    assert h.numbers.is_suppressed("13800000001")
    assert not h.numbers.is_suppressed("13800000002")
    dump = b"".join(redis_client.dump(k) or b"" for k in redis_client.keys("*"))
    assert b"13800000001" not in dump
    [record] = h.numbers.suppressed()
    assert record.number == PhoneIds(b"0123456789abcdef-secret")("+8613800000001")
    assert record.number.startswith("h:") and record.number != PhoneIds(b"other")("13800000001")
    monkeypatch.delenv("ALICOM_RECEIPTS_DEDUP_KEY_SECRET")
    with pytest.raises(ConfigError, match="dedup key secret"):
        phone_ids(True, {})


def test_policy_values_are_checked() -> None:
    with pytest.raises(ConfigError):
        Policy(after=0)


def test_a_page_reads_only_part_of_a_long_list(redis_client: redis.Redis, clock: Clock) -> None:
    numbers = NumberList(redis_client, clock=clock)
    for i in range(5):
        numbers.add("1380000000%d" % i, reason="x", expire_days=i + 1)
    numbers.add("13900000000", reason="for good")
    assert numbers.count_suppressed() == 6
    part = numbers.suppressed(limit=3)
    # the three whose suppression ends last (the manual one never ends)
    assert [r.number for r in part] == ["13800000003", "13800000004", "13900000000"]
    assert len(numbers.suppressed()) == 6
