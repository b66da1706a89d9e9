"""The configured dedup identity is the one the running worker applies."""

from __future__ import annotations

import json
import signal

from alicom_sandbox.fakes import encode_body
from tests.e2e.conftest import Stack

SAMPLE = {"send_time": "2026-01-01 00:00:00", "report_time": "2026-01-01 00:00:05",
          "success": True, "err_code": "DELIVERED", "err_msg": "ok", "sms_size": "1",
          "out_id": "order-1"}


def test_a_worker_configured_to_identify_reports_by_biz_id_alone_applies_one(
        stack: Stack) -> None:
    bodies = [encode_body({**SAMPLE, "biz_id": "biz-7", "phone_number": phone})[0]
              for phone in ("13800000001", "13800000002")]
    bodies.append(encode_body({**SAMPLE, "biz_id": "biz-8", "phone_number": "13800000001"})[0])
    with stack.publisher() as pub:
        pub.send_bodies(stack.queue_name(), bodies)
    worker = stack.worker(stack.config(dedup_keys={"SmsReport": ["biz_id"]}))
    stack.wait(stack.queue_is_empty, "all three settled")
    worker.signal(signal.SIGTERM)  # its log is complete once it exited
    assert worker.wait(30) == 0
    # The Recorder names receipts by their default identity (biz_id:phone): one of the two
    # biz-7 receipts was applied, the other acknowledged as its duplicate.
    applied = [str(r["key"]).split(":")[1] for r in stack.records()]
    assert sorted(applied) == ["biz-7", "biz-8"]
    outcomes = sorted(e["outcome"] for e in stack.log_events("receipt_settled"))
    assert outcomes.count("handled") == 2, json.dumps(outcomes)
