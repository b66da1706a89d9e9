"""Upgrading a running deployment: receipts the previous version recorded under their names in
clear are still caught as duplicates by the new worker, which names records by a keyed hash."""

from __future__ import annotations

import signal

from alicom_sandbox.fakes import encode_body
from tests.e2e.conftest import Stack

SAMPLE = {"send_time": "2026-01-01 00:00:00", "report_time": "2026-01-01 00:00:05",
          "success": True, "err_code": "DELIVERED", "err_msg": "ok", "sms_size": "1",
          "out_id": "order-1", "biz_id": "biz-upgrade"}
OLD, NEW = "13800000001", "13800000002"


def test_an_old_format_record_still_catches_its_duplicate_after_the_upgrade(
        stack: Stack) -> None:
    # What the previous version left after applying OLD's receipt: "1" under the clear name.
    old_name = "alicom:dedup:SmsReport:biz-upgrade:%s" % OLD
    stack.redis.set(old_name, "1", ex=7 * 24 * 3600)
    bodies = [encode_body({**SAMPLE, "phone_number": phone})[0] for phone in (OLD, NEW)]
    with stack.publisher() as pub:
        pub.send_bodies(stack.queue_name(), bodies)
    worker = stack.worker(stack.config())
    stack.wait(stack.queue_is_empty, "both settled")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0

    assert [str(r["key"]) for r in stack.records()] == ["SmsReport:biz-upgrade:%s" % NEW]
    outcomes = sorted(e["outcome"] for e in stack.log_events("receipt_settled"))
    assert outcomes == ["duplicate", "handled"]
    keys = sorted(k.decode() for k in stack.redis.scan_iter("alicom:dedup:*"))
    # The old record is untouched (it expires on its own); the new one is a hash.
    assert old_name in keys and stack.redis.ttl(old_name) > 0
    assert len(keys) == 2 and not any(NEW in k for k in keys)
