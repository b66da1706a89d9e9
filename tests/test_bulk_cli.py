"""The `numbers`, `tasks` and `reviews` commands against a real Redis."""

from __future__ import annotations

import csv
import io
import time

import pytest
import redis

from alicom_sandbox.redis_server import RedisServer
from consumer import cli
from consumer.cli import numbers, reviews, tasks
from consumer.handlers.review_status import ReviewStatus
from consumer.handlers.tracking import SendTracker as SendTrackerHandler
from consumer.pipeline.decode import parse_object
from consumer.receipts import ReceiptMeta
from consumer.reports.numbers import NumberList
from consumer.reports.tracking import SendTracker, TrackedSend


def _run(main: object, argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, out)  # type: ignore[operator]
    return code, out.getvalue()


def test_numbers_check_list_export_add_remove(redis_client: redis.Redis,
                                              redis_server: RedisServer,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--redis-url", redis_server.url]
    assert _run(numbers.main, [*url, "add", "+8613800000001", "--reason", "complaint"])[0] == 0
    code, text = _run(numbers.main, [*url, "check", "13800000001", "13800000002"])
    assert code == 1
    assert text.splitlines() == ["13800000001\tsuppressed: manual until never",
                                 "13800000002\tok"]
    assert _run(numbers.main, [*url, "check", "13800000002"])[0] == 0
    code, text = _run(numbers.main, [*url, "export", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["number"], r["reason"], r["err_msg"]) for r in rows] == [
        ("13800000001", "manual", "complaint")]
    assert "1 suppressed (manual)" in _run(numbers.main, [*url, "list", "--reason", "manual"])[1]
    assert _run(numbers.main, [*url, "remove", "13800000001"])[1] == "removed 1 of 1\n"
    assert NumberList(redis_client).suppressed() == []
    # through the command runner, as `alicom-receipts numbers ...` runs
    assert cli.main(["numbers", "--redis-url", "http://nope", "list"]) == 2
    assert capsys.readouterr().err.startswith("alicom-receipts numbers: ")
    assert cli.main(["numbers", "--redis-url", "redis://127.0.0.1:1/0", "list"]) == 3
    assert "Redis did not answer" in capsys.readouterr().err
    # Sentinel and Cluster URLs go through the one client factory too; a cluster reads its
    # slot map as its client is made, and that failing is still one line and exit 3.
    assert cli.main(["numbers", "--redis-url", "redis+cluster://127.0.0.1:1", "list"]) == 3
    assert capsys.readouterr().err == ("alicom-receipts numbers: Redis did not answer "
                                       "(ConnectionError)\n")


def test_tasks_list_show_export(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    tracker = SendTracker(redis_client)
    tracker.record_many(TrackedSend("5^0", p, time.time())
                        for p in ("13800000001", "13800000002", "13800000003"))
    receipt = parse_object("SmsReport", {
        "phone_number": "13800000002", "biz_id": "5^0", "success": False,
        "err_code": "DB:0141", "err_msg": "号码在黑名单中", "report_time": "2024-03-01 09:00:05",
    }, ReceiptMeta(source="mns"))
    SendTrackerHandler(redis_server.url).handle_batch([receipt])
    url = ["--redis-url", redis_server.url]
    code, text = _run(tasks.main, [*url, "list", "--status", "sending"])
    assert code == 0
    [_header, row] = text.splitlines()
    assert row.split()[0] == "5^0" and row.split()[-4:] == ["3", "0", "1", "2"]
    assert _run(tasks.main, [*url, "list", "--status", "done"])[1].count("\n") == 1
    code, text = _run(tasks.main, [*url, "show", "5^0"])
    assert "submitted 3, delivered 0, failed 1, pending 2" in text
    assert "blacklisted" in text and "DB:0141" in text
    code, text = _run(tasks.main, [*url, "export", "5^0", "--status", "failed"])
    assert text == "number,state,err_code\n13800000002,failed,DB:0141\n"
    code, text = _run(tasks.main, [*url, "export", "5^0", "--status", "pending"])
    assert text.splitlines()[1:] == ["13800000001,pending,", "13800000003,pending,"]
    assert tasks.main([*url, "show", "nope"]) == 1
    assert cli.main(["tasks", *url, "list", "--since", "soon"]) == 2


def test_reviews_list_and_history(redis_server: RedisServer) -> None:
    def review(status: str, reason: str, at_ms: int) -> object:
        return parse_object("TemplateSmsReport", {
            "order_id": "9", "template_status": status, "template_code": "SMS_7",
            "reason": reason}, ReceiptMeta(source="mns", enqueue_time_ms=at_ms))
    ReviewStatus(redis_server.url).handle_batch([review("approving", "", 1_000),
                                                 review("rejected", "变量不规范", 2_000)])
    url = ["--redis-url", redis_server.url]
    code, text = _run(reviews.main, [*url, "list", "--state", "rejected"])
    assert code == 0 and "SMS_7" in text and "reason: 变量不规范" in text
    assert "0 in state approved" in _run(reviews.main, [*url, "list", "--state", "approved"])[1]
    code, text = _run(reviews.main, [*url, "history", "template", "SMS_7"])
    assert [line.split()[2] for line in text.splitlines()] == ["rejected", "in"]
    assert reviews.main([*url, "history", "sign", "nothing"]) == 1
