"""Several worker processes on one queue share the work and still apply each receipt once."""

from __future__ import annotations

import signal
from collections import Counter

from tests.e2e.conftest import Stack

RECEIPTS = 3000
PROCESSES = 4


def report_key(obj: dict[str, str]) -> str:
    return "SmsReport:%s:%s" % (obj["biz_id"], obj["phone_number"])


def test_four_processes_on_one_queue_apply_each_receipt_once_and_delete_all(
        stack: Stack) -> None:
    # Visibility (and so the claims' leases) long enough that no message comes back while it
    # is still queued behind others in a busy process: every repeat would then be a real
    # double delivery.
    config = stack.config(ack={"visibility_timeout_s": 30, "extend_before_s": 10})
    workers = [stack.worker(config) for _ in range(PROCESSES)]
    # Every process polling before the receipts arrive: on a busy machine the first two to
    # start drained the queue before the others had imported (2 of 4 did all the work).
    stack.wait(lambda: all(any(e.get("event") == "ready" for e in w.log_lines())
                           for w in workers), "every process polling")
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", RECEIPTS, duplicate_rate=0.02, seed=31)
    expected = {report_key(m.obj) for m in report.messages}
    assert len(expected) == RECEIPTS - len(report.duplicates)
    stack.wait(lambda: len(stack.applied()) == len(expected), "every receipt applied",
               timeout_s=120)
    stack.wait(stack.queue_is_empty, "every message deleted", timeout_s=120)
    for w in workers:
        w.signal(signal.SIGTERM)
    assert [w.wait(60) for w in workers] == [0] * PROCESSES

    applied = stack.applied()
    assert set(applied) == expected
    assert max(applied.values()) == 1
    by_pid = Counter(r["pid"] for r in stack.records())
    assert set(by_pid) <= {w.pid for w in workers}
    assert len(by_pid) >= 3, "the work was not shared: %s" % dict(by_pid)
    settled = Counter(e["outcome"] for e in stack.log_events("receipt_settled"))
    assert settled["handled"] == len(expected)
    assert settled["duplicate"] >= len(report.duplicates) > 0
