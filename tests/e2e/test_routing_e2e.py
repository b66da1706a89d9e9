"""Routing by class through the real worker: international reports never reach a function
typed `SmsReport`, though they arrive in the same queue."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.typed_handlers import RECORD_ENV


def test_an_international_report_never_reaches_a_function_typed_sms_report(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    records = stack.tmp / "typed.jsonl"
    monkeypatch.setenv(RECORD_ENV, str(records))
    with stack.publisher() as pub:
        mainland = pub.publish("SmsReport", 12, seed=3)
        international = pub.publish("SmsReport-intl", 8, seed=4)
    stack.worker(stack.config(handlers=[{"use": "tests.e2e.typed_handlers:on_report"}]))

    stack.wait(stack.queue_is_empty, "every message settled")

    seen = [json.loads(line) for line in records.read_text().splitlines()]
    assert [s["class"] for s in seen] == ["SmsReport"] * len(mainland.originals)
    letters = stack.dead_letters().list(50, 0)
    assert sorted(d.message_id for d in letters) == sorted(
        m.message_id for m in international.messages)
    assert {(d.reason, d.detail) for d in letters} == {("permanent_failure", ": no_handler")}
    assert stack.log_events("handler_raised") == []  # no AttributeError, no retry loop
