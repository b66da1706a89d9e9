"""The worker's promise, end to end: every receipt reaches the handler, once in effect."""

from __future__ import annotations

import signal
from collections import Counter

from tests.e2e.conftest import Stack
from tests.e2e.recording import read_records


def applied_keys(stack: Stack) -> Counter[str]:
    return Counter(str(r["key"]) for r in read_records(str(stack.records_path))
                   if r["what"] == "applied")


def test_every_published_receipt_reaches_the_handler_once(stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 300, seed=1)
    expected = {m.obj["biz_id"] + ":" + m.obj["phone_number"] for m in report.messages}
    worker = stack.worker(stack.config())
    stack.wait(lambda: len(applied_keys(stack)) == len(expected), "all receipts applied")
    stack.wait(stack.queue_is_empty, "every message deleted")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    applied = applied_keys(stack)
    assert {k.removeprefix("SmsReport:") for k in applied} == expected
    assert max(applied.values()) == 1
