"""The `bulk-sender` handler: the three bulk handlers in one, on a real Redis. It writes what
the three write each on its own, in one round trip per batch; a part Redis refuses retries
the whole batch, and the retry counts nothing twice."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from alicom_sandbox.redis_server import RedisServer
from consumer.cli import numbers
from consumer.clients import redis_scripts
from consumer.errors import RetryLater
from consumer.handlers.bulk_sender import BulkSender
from consumer.handlers.number_hygiene import NumberHygiene
from consumer.handlers.plugins import PluginError, load_handlers
from consumer.handlers.review_status import ReviewStatus
from consumer.handlers.tracking import SendTracker as SendTrackerHandler
from consumer.pipeline.decode import parse_object
from consumer.receipts import SHANGHAI, Receipt, ReceiptMeta, SmsReport
from consumer.reports.numbers import NumberList
from consumer.reports.reviews import ReviewStore
from consumer.reports.tracking import SendTracker, TrackedSend
from consumer.settings import HandlerSpec

POLICIES = {"powered_off": {"after": 2, "over_days": 0}}
# Sent an hour ago (Asia/Shanghai, as receipts write it), tracked at that time: each send is
# found on the day its receipt says, as the sending code's tracking makes it.
SENT_AT = float(int(time.time()) - 3600)


def _shanghai(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


SENT_TEXT = _shanghai(SENT_AT)


def _report(biz_id: str, phone: str, code: str = "DELIVERED", msg: str = "",
            at: str = _shanghai(SENT_AT + 5)) -> Receipt:
    obj = {"phone_number": phone, "biz_id": biz_id, "success": code == "DELIVERED",
           "err_code": code, "err_msg": msg, "send_time": SENT_TEXT,
           "report_time": at, "sms_size": "1"}
    return parse_object("SmsReport", obj, ReceiptMeta(source="mns"))


def _review(order: str, status: str, reason: str = "", at_ms: int = 1000) -> Receipt:
    return parse_object("SignSmsReport", {"order_id": order, "sign_status": status,
                                          "sign_name": "shop-" + order, "reason": reason},
                        ReceiptMeta(source="mns", enqueue_time_ms=at_ms))


BATCHES = [
    [_report("1^0", "13800000001", "MK:0005", "用户手机号码不存在"),
     _report("1^0", "13800000002", "MK:0001", "用户关机"),
     _report("1^0", "13800000003"),
     _review("7", "approving")],
    [_report("2^0", "13800000002", "MK:0001", "用户关机", at=_shanghai(SENT_AT + 60)),
     _report("2^0", "13800000004"),
     _review("7", "rejected", "材料不全", at_ms=2000),
     _review("8", "approved")],
]


def _track(client: redis.Redis) -> SendTracker:
    tracker = SendTracker(client)
    tracker.record_many(TrackedSend(r.biz_id, r.phone_number, SENT_AT)
                        for batch in BATCHES for r in batch if isinstance(r, SmsReport))
    return tracker


def _what_was_written(client: redis.Redis, tracker: SendTracker) -> dict[str, Any]:
    """The three stores as the commands read them (their clocks' times left out)."""
    listed = NumberList(client).suppressed()
    tasks = [tracker.tasks.get(biz) for biz in ("1^0", "2^0")]
    return {
        "suppressed": [(r.number, r.reason, r.failures, r.first_failure, r.last_failure)
                       for r in listed],
        "tasks": [(t.delivered, t.failed, t.pending, t.codes, t.reasons) for t in tasks
                  if t is not None],
        "pending_sends": tracker.count(),
        "reviews": [(r.kind, r.name, r.state, r.reason) for r in ReviewStore(client).current()],
    }


def test_the_bulk_sender_writes_what_the_three_handlers_write(
        redis_client: redis.Redis, redis_server: RedisServer) -> None:
    alone_url, bundled_url = redis_server.url, redis_server.url[:-1] + "1"
    bundled_client = redis.Redis.from_url(bundled_url)
    trackers = (_track(redis_client), _track(bundled_client))
    three = [NumberHygiene(alone_url, policies=POLICIES), SendTrackerHandler(alone_url),
             ReviewStatus(alone_url)]
    bundle = BulkSender(bundled_url, number_hygiene={"policies": POLICIES})
    for batch in BATCHES:
        for handler in three:
            handler.handle_batch(batch)
        bundle.handle_batch(batch)
    alone = _what_was_written(redis_client, trackers[0])
    assert alone == _what_was_written(bundled_client, trackers[1])
    # what the batches should have left, so that equal cannot mean equally empty
    assert [row[:3] for row in alone["suppressed"]] == [
        ("13800000001", "empty_number", 1), ("13800000002", "powered_off", 2)]
    assert alone["tasks"] == [(1, 2, 0, {"MK:0005": 1, "MK:0001": 1},
                               {"empty_number": 1, "powered_off": 1}),
                              (1, 1, 0, {"MK:0001": 1}, {"powered_off": 1})]
    assert alone["pending_sends"] == 0
    assert alone["reviews"] == [("sign", "shop-7", "rejected", "材料不全"),
                                ("sign", "shop-8", "approved", "")]
    for handler in [*three, bundle]:
        handler.close()
    bundled_client.close()


def test_a_batch_is_one_round_trip_instead_of_one_per_handler(
        redis_client: redis.Redis, redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _track(redis_client)
    trips: list[int] = []
    real = redis_scripts._round_trip

    def counted(target: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
        trips.append(len(commands))
        return real(target, commands)

    monkeypatch.setattr(redis_scripts, "_round_trip", counted)
    bundle = BulkSender(redis_server.url)
    bundle.handle_batch(BATCHES[0])
    assert trips == [3]  # the numbers' call, the tasks' call, one review's call
    trips.clear()
    for handler in (NumberHygiene(redis_server.url), SendTrackerHandler(redis_server.url),
                    ReviewStatus(redis_server.url)):
        handler.handle_batch(BATCHES[1])
        handler.close()
    assert trips == [1, 1, 2]
    bundle.close()


def test_a_part_redis_refuses_retries_the_batch_and_the_retry_counts_nothing_twice(
        redis_client: redis.Redis, redis_server: RedisServer) -> None:
    tracker = _track(redis_client)
    bundle = BulkSender(redis_server.url, number_hygiene={"policies": POLICIES})
    redis_client.set("{alicom:reviews}:cur", "not a hash")  # the review part's key
    with pytest.raises(RetryLater) as refused:
        bundle.handle_batch(BATCHES[0])
    assert str(refused.value).startswith("bulk sender: ResponseError: WRONGTYPE")
    assert "\n" not in str(refused.value)
    redis_client.delete("{alicom:reviews}:cur")
    bundle.handle_batch(BATCHES[0])  # the retry: the other parts' writes are already there
    task = tracker.tasks.get("1^0")
    assert task is not None and (task.delivered, task.failed) == (1, 2)
    record = NumberList(redis_client).get("13800000002")
    assert record is not None and record.failures == 1
    assert [(r.name, r.state) for r in ReviewStore(redis_client).current()] == [
        ("shop-7", "approving")]
    bundle.close()


def test_parts_can_be_left_out_and_bad_part_options_are_one_line(
        redis_server: RedisServer) -> None:
    url = redis_server.url
    [routed] = load_handlers([HandlerSpec("bulk-sender", options={
        "url": url, "review_status": False})])["SmsReport"]
    assert routed.name == "bulk-sender"
    assert isinstance(routed.target, BulkSender)
    assert routed.target.types == ("SmsReport", "IntlSmsReport")
    bad = [({"url": url, "number_hygiene": {"url": url}},
            "number_hygiene: url is set once, for the whole handler"),
           ({"url": url, "send_tracker": {"prefix": "x"}},
            "send_tracker: SendTracker.__init__() got an unexpected keyword argument 'prefix'"),
           ({"url": url, "number_hygiene": 3}, "number_hygiene must be a table of options"),
           ({"url": url, "number_hygiene": False, "send_tracker": False,
             "review_status": False}, "every part is off")]
    for options, expected in bad:
        with pytest.raises(PluginError) as error:
            load_handlers([HandlerSpec("bulk-sender", options=options)])
        assert expected in str(error.value)
        assert "\n" not in str(error.value)


def test_the_commands_read_a_part_s_options_from_the_bulk_sender(
        redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(  # [redis] is another database: the part's url is the handler's
        '[alicom]\npreset = "sandbox"\n[redis]\nurl = "%s1"\n[[handlers]]\n'
        'use = "bulk-sender"\n'
        'options = { url = "%s", number_hygiene = { prefix = "shop:numbers" } }\n'
        % (redis_server.url[:-1], redis_server.url), encoding="utf-8")
    NumberList(redis_client, "shop:numbers").add("13800000009", "complaint")
    assert numbers.main(["--config", str(config), "check", "13800000009"]) == 1
    assert "13800000009\tsuppressed: manual" in capsys.readouterr().out
    # left out of the bulk-sender: nothing writes a number list ([redis], the default prefix)
    config.write_text(config.read_text().replace(
        'number_hygiene = { prefix = "shop:numbers" }', "number_hygiene = false"),
        encoding="utf-8")
    assert numbers.main(["--config", str(config), "check", "13800000009"]) == 0
