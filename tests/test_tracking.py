"""Send tracking and the send-tracker handler, on a real Redis server."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import redis
from structlog.testing import capture_logs

from alicom_sandbox.redis_server import RedisServer
from consumer.errors import ConfigError, RetryLater
from consumer.handlers.tracking import SendTracker as SendTrackerHandler
from consumer.pipeline.decode import parse_object
from consumer.receipts import Receipt, ReceiptMeta
from consumer.reports.tasks import Outcome
from consumer.reports.tracking import (
    SHANGHAI,
    SendTracker,
    TrackedSend,
    epoch_of,
    normalise_phone,
)
from consumer.settings import TrackingSettings

DAY = 86400


@pytest.fixture
def tracker(redis_client: redis.Redis) -> SendTracker:
    return SendTracker(redis_client, TrackingSettings())


def _report(biz_id: str, phone: str, **extra: object) -> Receipt:
    obj = {"phone_number": phone, "biz_id": biz_id, "success": True, "err_code": "DELIVERED",
           "send_time": "2024-03-01 09:00:00", "report_time": "2024-03-01 09:00:05",
           "sms_size": "1", "out_id": "", **extra}
    return parse_object("SmsReport", obj, ReceiptMeta(source="mns"))


def test_record_then_pending_then_clear(tracker: SendTracker) -> None:
    now = time.time()
    assert tracker.record("100^0", "13800000001", now - 60, out_id="order-1")
    assert tracker.record("100^0", "13800000002", now - 30)
    assert tracker.record("101^0", "13800000003", now)
    old = tracker.pending(older_than_s=10)
    assert [(s.biz_id, s.phone_number, s.out_id) for s in old] == [
        ("100^0", "13800000001", "order-1"), ("100^0", "13800000002", "")]
    assert old[0].sent_at == pytest.approx(now - 60, abs=0.001)
    assert tracker.clear("100^0", "13800000001")
    assert not tracker.clear("100^0", "13800000001")
    assert [s.phone_number for s in tracker.pending()] == ["13800000002", "13800000003"]
    assert tracker.count() == 2


def test_recording_twice_keeps_the_first_send(tracker: SendTracker) -> None:
    now = time.time()
    assert tracker.record_many([TrackedSend("7^0", "13800000001", now - 100, "a"),
                                TrackedSend("7^0", "13800000002", now - 100)]) == [True, True]
    assert tracker.record_many([TrackedSend("7^0", "13800000001", now, "b")]) == [False]
    [first, _] = tracker.pending()
    assert first.sent_at == pytest.approx(now - 100, abs=0.001)
    assert first.out_id == "a"


def test_pending_is_oldest_first_and_limited(tracker: SendTracker) -> None:
    now = time.time()
    tracker.record_many(TrackedSend("%d^0" % i, "1380000%04d" % i, now - 1000 + i)
                        for i in range(50))
    page = tracker.pending(limit=5)
    assert [s.biz_id for s in page] == ["%d^0" % i for i in range(5)]


def test_phone_prefixes_are_normalised_on_both_sides(tracker: SendTracker) -> None:
    assert normalise_phone(" +8613800000001") == "13800000001"
    assert normalise_phone("008613800000001") == "13800000001"
    assert normalise_phone("85261234567") == "85261234567"
    tracker.record("9^0", "+8613800000001")
    assert tracker.clear("9^0", "13800000001")


def test_send_dates_follow_the_shanghai_calendar() -> None:
    # 2024-03-01 23:30 in Shanghai is still 2024-03-01 there, 15:30 UTC.
    late = dt.datetime(2024, 3, 1, 23, 30, tzinfo=SHANGHAI)
    assert TrackedSend("1^0", "1", epoch_of(late)).send_date == "20240301"
    assert epoch_of(dt.datetime(2024, 3, 1, 23, 30)) == late.timestamp()
    assert epoch_of(dt.date(2024, 3, 1)) == dt.datetime(2024, 3, 1, tzinfo=SHANGHAI).timestamp()
    assert epoch_of(12.5) == 12.5


def test_every_key_expires_past_the_query_window(tracker: SendTracker,
                                                 redis_client: redis.Redis) -> None:
    tracker.record("5^0", "13800000001", time.time(), out_id="o")
    keys = list(redis_client.keys("{alicom:track}:*"))
    # the sends, the send day's out_ids, and the send task (which shares the tag)
    names = {k.decode().split("}:", 1)[1].removeprefix("tasks:").split(":")[0] for k in keys}
    assert names == {"z", "d", "index", "t", "n"}
    for key in keys:
        ttl = redis_client.ttl(key)
        assert 31 * DAY < ttl <= 36 * DAY


def test_sends_older_than_the_ttl_are_trimmed_on_the_next_write(
        tracker: SendTracker) -> None:
    now = time.time()
    tracker.record("1^0", "13800000001", now - 40 * DAY, out_id="x")
    tracker.record("2^0", "13800000002", now)
    assert [s.biz_id for s in tracker.pending()] == ["2^0"]


def test_memory_stays_small(tracker: SendTracker, redis_client: redis.Redis) -> None:
    """A send without out_id costs one sorted-set member: no hash entry."""
    now = time.time()
    tracker.record_many(TrackedSend("%018d^0" % i, "138%08d" % i, now) for i in range(2000))
    assert redis_client.keys("{alicom:track}:d:*") == []
    used = redis_client.memory_usage("{alicom:track}:z") or 0
    assert used / 2000 < 160  # bytes per tracked send


def test_settings_refuse_a_ttl_inside_the_query_window() -> None:
    with pytest.raises(ConfigError, match="past the 30 days QuerySendDetails covers"):
        TrackingSettings(ttl_s=10 * DAY)
    with pytest.raises(ConfigError):
        TrackingSettings(key_prefix="")


def test_handler_clears_a_batch_and_ignores_untracked(redis_server: RedisServer,
                                                      tracker: SendTracker) -> None:
    tracker.record("1^0", "13800000001")
    tracker.record("1^0", "13800000002")
    tracker.record("2^0", "13800000003")
    handler = SendTrackerHandler(url=redis_server.url)
    try:
        receipts = [_report("1^0", "13800000001"), _report("1^0", "13800000002"),
                    _report("3^0", "13800000009")]
        result = handler.handle_batch(receipts)
    finally:
        handler.close()
    assert result.failed == []
    assert [(s.biz_id, s.phone_number) for s in tracker.pending()] == [("2^0", "13800000003")]


def test_handler_with_task_keys_in_another_slot_clears_and_settles_reading_first(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = TrackingSettings(tasks_prefix="other:tasks")  # its own hash tag
    tracker = SendTracker(redis_client, settings)
    tracker.record("1^0", "13800000001", time.time() - 60)
    tracker.record("1^0", "13800000002", time.time() - 60)
    handler = SendTrackerHandler(url=redis_server.url, tasks_prefix="other:tasks")
    try:
        result = handler.handle_batch([
            _report("1^0", "13800000001", send_time=""),  # no send time: today's guess
            _report("1^0", "13800000002", success=False, err_code="MK:0005",
                    err_msg="用户手机号码不存在")])
    finally:
        handler.close()
    assert result.failed == []
    assert tracker.pending() == []
    [task] = tracker.tasks.tasks()
    assert (task.delivered, task.failed, task.pending) == (1, 1, 0)


def test_handler_with_task_keys_in_another_slot_passes_a_batch_with_nothing_to_clear(
        redis_server: RedisServer) -> None:
    handler = SendTrackerHandler(url=redis_server.url, tasks_prefix="other:tasks")
    try:
        # Neither can be tracked: a '|' in the BizId; an international report has none.
        result = handler.handle_batch([_report("1|0", "13800000001")])
    finally:
        handler.close()
    assert result.failed == []


def _script_calls(client: redis.Redis) -> int:
    """Script calls Redis ran so far (a first call answered NOSCRIPT, then sent again once
    the script is loaded, is a failed call: not counted)."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))


def test_handler_clears_a_batch_in_one_script_call_on_the_receipts_send_day_else_in_two(
        redis_server: RedisServer, tracker: SendTracker, redis_client: redis.Redis) -> None:
    yesterday = dt.datetime.now(SHANGHAI).replace(hour=0, minute=0, second=0,
                                                  microsecond=0) - dt.timedelta(days=1)
    on_time = yesterday + dt.timedelta(hours=9)
    tracker.record("1^0", "13800000001", on_time, out_id="order-1")
    tracker.record("1^0", "13800000002", on_time, out_id="order-2")
    tracker.record("5^0", "13800000005", on_time)
    # Tracked two seconds before midnight, sent by the platform three seconds after it.
    tracker.record("2^0", "13800000003", yesterday - dt.timedelta(seconds=2), out_id="order-3")
    assert len(redis_client.keys("{alicom:track}:d:*")) == 2  # the out_ids, per send day
    handler = SendTrackerHandler(url=redis_server.url)
    text = "%Y-%m-%d %H:%M:%S"
    try:
        before = _script_calls(redis_client)
        handler.handle_batch([
            _report("1^0", "13800000001", send_time=on_time.strftime(text)),
            _report("5^0", "13800000005", send_time=on_time.strftime(text)),
            _report("1^0", "13800000002", send_time=on_time.strftime(text))])
        assert _script_calls(redis_client) - before == 1  # two send calls, no read first
        assert [s.biz_id for s in tracker.pending()] == ["2^0"]
        assert sorted((t.task_id, t.delivered, t.status) for t in tracker.tasks.tasks()) == [
            ("1^0", 2, "done"), ("2^0", 0, "sending"), ("5^0", 1, "done")]

        before = _script_calls(redis_client)
        late = (yesterday + dt.timedelta(seconds=3)).strftime(text)
        handler.handle_batch([_report("2^0", "13800000003", send_time=late)])
        assert _script_calls(redis_client) - before == 2  # the guess missed: its day's clear
    finally:
        handler.close()
    assert tracker.pending() == []
    assert redis_client.keys("{alicom:track}:d:*") == []  # every out_id went with its send


def test_a_server_refusing_the_batch_script_gets_one_call_per_send_call_from_then_on(
        redis_client: redis.Redis, tracker: SendTracker) -> None:
    now = time.time()
    for n in range(4):
        tracker.record("%d^0" % (n // 2), "1380000000%d" % n, now)
    # What Tair's proxy answers a script that reads its keys by index.
    tracker._clear_on_day_batch = redis_client.register_script(
        "return redis.error_reply('ERR bad lua script for redis cluster, all the keys that "
        "the script uses should be passed using the KEYS array')")
    outcomes = [Outcome("%d^0" % (n // 2), "1380000000%d" % n, True) for n in range(4)]
    keys = [(o.biz_id, o.number) for o in outcomes]
    with capture_logs() as logs:
        assert tracker.clear_many(keys[:2], settle=outcomes[:2], sent_at=[now] * 2) == [
            True, True]
        before = _script_calls(redis_client)
        assert tracker.clear_many(keys[2:], settle=outcomes[2:], sent_at=[now] * 2) == [
            True, True]
    assert _script_calls(redis_client) - before == 1  # one send call: one call, no retry
    assert not tracker.one_call_per_batch
    assert [e["event"] for e in logs] == ["tracking_batch_script_refused"]
    assert [(t.delivered, t.pending) for t in tracker.tasks.tasks()] == [(2, 0), (2, 0)]


def test_settling_without_send_times_reads_each_sends_day_then_clears_in_one_call(
        redis_client: redis.Redis, tracker: SendTracker) -> None:
    now = time.time()
    tracker.record("1^0", "13800000001", now - 2 * DAY, out_id="order-1")
    tracker.record("1^0", "13800000002", now)
    tracker.record("2^0", "13800000003", now, out_id="order-3")
    outcomes = [Outcome("1^0", "13800000001", True), Outcome("1^0", "13800000002", True),
                Outcome("2^0", "13800000003", False, "MK:0001", "empty_number"),
                Outcome("2^0", "13800000009", True)]  # never tracked: nothing to move
    before = _script_calls(redis_client)
    assert tracker.clear_many([(o.biz_id, o.number) for o in outcomes], settle=outcomes) == [
        True, True, True, False]
    assert _script_calls(redis_client) - before == 2  # the send days, then the batch
    assert tracker.pending() == []
    assert redis_client.keys("{alicom:track}:d:*") == []
    assert sorted((t.task_id, t.delivered, t.failed, t.pending)
                  for t in tracker.tasks.tasks()) == [("1^0", 2, 0, 0), ("2^0", 0, 1, 0)]


def test_another_error_of_the_batch_script_is_raised_and_keeps_it_on(
        redis_client: redis.Redis, tracker: SendTracker) -> None:
    tracker._clear_on_day_batch = redis_client.register_script(
        "return redis.error_reply('ERR out of memory')")
    with pytest.raises(redis.ResponseError, match="out of memory"):
        tracker.clear_many([("1^0", "13800000001")], settle=[
            Outcome("1^0", "13800000001", True)], sent_at=[time.time()])
    assert tracker.one_call_per_batch


def test_handler_retries_when_redis_is_away() -> None:
    handler = SendTrackerHandler(url="redis://127.0.0.1:1/0", timeout_s=0.5)
    try:
        with pytest.raises(RetryLater, match="send tracker: ConnectionError"):
            handler.handle_batch([_report("1^0", "13800000001")])
    finally:
        handler.close()


def test_handler_refuses_a_url_that_is_not_redis_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as err:
        SendTrackerHandler(url="http://user:hunter2@example")
    assert "hunter2" not in str(err.value)
