"""Delivery outcomes are metrics of the worker that handled them: deliveries by success and
err_code as counters, and the delivery delay (report_time - send_time) as a histogram."""

from __future__ import annotations

import signal
from collections import Counter
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack
from tests.e2e.test_metrics_e2e import free_port, scrape_text


def test_deliveries_and_their_delay_are_counted_once_per_receipt(stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 60, seed=11, start_epoch_s=None)
    published = Counter("true" if m.obj["success"] else "false" for m in report.messages)
    codes = Counter(str(m.obj["err_code"]) for m in report.messages if not m.obj["success"])
    assert published["true"] and published["false"]
    address = "127.0.0.1:%d" % free_port()
    worker = stack.worker(stack.config(metrics={"address": address,
                                                "multiproc_dir": str(stack.tmp / "metrics")}))
    stack.wait(lambda: len(stack.applied()) == len(report.messages), "all receipts applied")

    def samples() -> list[tuple[str, dict[str, str], float]]:
        text = scrape_text(address) or ""
        return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text)
                for s in fam.samples]

    def deliveries(**want: str) -> float:
        return sum(v for n, ls, v in samples() if n == "alicom_receipts_sms_deliveries_total"
                   and want.items() <= ls.items())

    stack.wait(lambda: deliveries() == len(report.messages), "every delivery counted")
    assert deliveries(success="true") == published["true"]
    assert deliveries(success="false") == published["false"]
    for code, n in codes.items():
        assert deliveries(success="false", err_code=code) == n
    delays = {n: v for n, ls, v in samples()
              if n.startswith("alicom_receipts_delivery_delay_seconds")
              and ls.get("le") in (None, "+Inf")}
    assert delays["alicom_receipts_delivery_delay_seconds_count"] == len(report.messages)
    assert delays["alicom_receipts_delivery_delay_seconds_bucket"] == len(report.messages)
    # report_time - send_time of each published receipt (whole seconds, Shanghai both)
    expected_s = sum((_at(m.obj["report_time"]) - _at(m.obj["send_time"])).total_seconds()
                     for m in report.messages)
    assert expected_s > 0
    assert delays["alicom_receipts_delivery_delay_seconds_sum"] == pytest.approx(expected_s)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def _at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
