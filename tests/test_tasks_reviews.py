"""Send tasks (recorded by SendTracker, settled by the send-tracker handler) and review
states (the review-status handler), on a real Redis."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import redis

from alicom_sandbox.redis_server import RedisServer
from consumer.handlers.number_hygiene import NumberHygiene
from consumer.handlers.review_status import ReviewStatus
from consumer.handlers.tracking import SendTracker as SendTrackerHandler
from consumer.pipeline.decode import parse_object
from consumer.receipts import SHANGHAI, Receipt, ReceiptMeta
from consumer.reports.hour_counts import read_hours
from consumer.reports.reviews import ReviewStore
from consumer.reports.tracking import SendTracker, TrackedSend


def _report(biz_id: str, phone: str, ok: bool = True, code: str = "DELIVERED",
            msg: str = "") -> Receipt:
    obj = {"phone_number": phone, "biz_id": biz_id, "success": ok, "err_code": code,
           "err_msg": msg, "send_time": "2024-03-01 09:00:00",
           "report_time": "2024-03-01 09:00:05", "sms_size": "1"}
    return parse_object("SmsReport", obj, ReceiptMeta(source="mns"))


def test_a_task_counts_each_number_once_from_pending_to_its_outcome(
        redis_client: redis.Redis, redis_server: RedisServer) -> None:
    tracker = SendTracker(redis_client)
    now = time.time()
    tracker.record_many(TrackedSend("7^0", "1380000000%d" % i, now) for i in range(4))
    tracker.record("8^0", "13900000001", now, task_id="campaign-1")
    tracker.record("9^0", "13900000002", now, task_id="campaign-1")
    handler = SendTrackerHandler(redis_server.url)
    batch = [_report("7^0", "13800000000"), _report("7^0", "13800000001", False, "MK:0001",
                                                    "用户关机"),
             _report("8^0", "13900000001", False, "MK:0005", "用户手机号码不存在"),
             _report("7^0", "13800000009")]  # not part of the task: changes nothing
    handler.handle_batch(batch)
    handler.handle_batch(batch[:2])  # handled again: counted once
    task = tracker.tasks.get("7^0")
    assert task is not None
    assert (task.submitted, task.delivered, task.failed, task.pending, task.status) == (
        4, 1, 1, 2, "sending")
    assert (task.codes, task.reasons) == ({"MK:0001": 1}, {"powered_off": 1})
    assert tracker.tasks.numbers("7^0", "failed") == [("13800000001", "failed", "MK:0001")]
    assert [n for n, _, _ in tracker.tasks.numbers("7^0", "pending")] == [
        "13800000002", "13800000003"]
    campaign = tracker.tasks.get("campaign-1")
    assert campaign is not None and (campaign.submitted, campaign.failed) == (2, 1)
    assert campaign.reasons == {"empty_number": 1}
    handler.handle_batch([_report("7^0", "13800000002"), _report("7^0", "13800000003"),
                          _report("9^0", "13900000002")])
    assert {t.task_id: t.status for t in tracker.tasks.tasks()} == {
        "7^0": "done", "campaign-1": "done"}
    assert tracker.tasks.tasks(status="sending") == []
    handler.close()


def test_tracked_sends_are_the_statistics_submitted_count(redis_client: redis.Redis) -> None:
    tracker = SendTracker(redis_client)
    sent = time.time() - 3600
    tracker.record_many(TrackedSend("1^0", "1380000000%d" % i, sent) for i in range(3))
    tracker.record("1^0", "13800000000", sent)  # again: not a new send
    [hour] = read_hours(redis_client, datetime.fromtimestamp(sent, timezone.utc), 1)
    assert hour.submitted == 3


def _review(kind: str, order: str, status: str, reason: str = "", enqueued_ms: int = 0,
            name: str = "shop") -> Receipt:
    meta = ReceiptMeta(source="mns", enqueue_time_ms=enqueued_ms)
    if kind == "SignSmsReport":
        obj = {"order_id": order, "sign_status": status, "sign_name": name, "reason": reason}
    else:
        obj = {"order_id": order, "template_status": status, "template_code": name,
               "template_name": "code", "reason": reason}
    return parse_object(kind, obj, meta)


def test_reviews_keep_the_latest_state_and_the_history(redis_client: redis.Redis,
                                                       redis_server: RedisServer) -> None:
    handler = ReviewStatus(redis_server.url)
    handler.handle_batch([
        _review("SignSmsReport", "1", "approving", enqueued_ms=1000),
        _review("SignSmsReport", "1", "rejected", "材料不全", enqueued_ms=2000),
        _review("TemplateSmsReport", "5", "approved", enqueued_ms=1500, name="SMS_1"),
    ])
    # late: an older state arrives after the newer one, and a repeat
    handler.handle_batch([_review("SignSmsReport", "1", "approving", enqueued_ms=1000),
                          _review("TemplateSmsReport", "4", "approving", enqueued_ms=1200,
                                  name="SMS_1")])
    store = ReviewStore(redis_client)
    current = {(r.kind, r.name): (r.state, r.reason) for r in store.current()}
    assert current == {("sign", "shop"): ("rejected", "材料不全"),
                       ("template", "SMS_1"): ("approved", "")}
    assert [r.state for r in store.history("template", "SMS_1")] == ["approved", "approving"]
    assert [r.state for r in store.history("sign", "shop")] == ["rejected", "approving"]
    assert [r.name for r in store.current(state="rejected")] == ["shop"]
    counts = store.state_counts()
    assert counts[("sign", "rejected")] == 1 and counts[("template", "approved")] == 1
    assert counts[("sign", "approving")] == 0
    handler.close()


def test_scripts_are_loaded_again_after_redis_forgot_them(redis_client: redis.Redis,
                                                          redis_server: RedisServer) -> None:
    tracker = SendTracker(redis_client)
    tracker.record("3^0", "13800000001", time.time())
    redis_client.script_flush()
    handler = SendTrackerHandler(redis_server.url)
    handler.handle_batch([_report("3^0", "13800000001")])
    task = tracker.tasks.get("3^0")
    assert task is not None and (task.delivered, task.pending) == (1, 0)
    assert tracker.count() == 0
    handler.close()
    hygiene = NumberHygiene(redis_server.url)
    redis_client.script_flush()
    now = datetime.now(timezone.utc).astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
    hygiene.handle_batch([parse_object("SmsReport", {
        "phone_number": "13800000002", "biz_id": "4^0", "success": False,
        "err_code": "MK:0005", "err_msg": "用户手机号码不存在", "send_time": now,
        "report_time": now}, ReceiptMeta(source="mns"))])
    assert hygiene.numbers.is_suppressed("13800000002")
    hygiene.close()
