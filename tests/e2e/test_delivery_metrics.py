"""The delivery statistics are also metrics: the worker that serves the metrics address
exposes what the delivery-stats handler counted in Redis."""

from __future__ import annotations

import signal

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack
from tests.e2e.test_metrics_e2e import free_port, scrape_text


def test_the_delivery_statistics_are_served_as_metrics(stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 60, seed=11, start_epoch_s=None)
    delivered = sum(1 for m in report.messages if m.obj["success"])
    assert delivered > 0
    failed = len(report.messages) - delivered
    address = "127.0.0.1:%d" % free_port()
    config = stack.config(metrics={"address": address,
                                   "multiproc_dir": str(stack.tmp / "metrics")})
    with config.open("a", encoding="utf-8") as f:
        f.write('\n[[handlers]]\nuse = "delivery-stats"\n'
                'options = { url = "%s", once_ttl_s = 0 }\n' % stack.redis_server.url)
    worker = stack.worker(config)
    stack.wait(lambda: len(stack.applied()) == len(report.messages), "all receipts applied")

    def receipts(outcome: str) -> float:
        text = scrape_text(address) or ""
        return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                   if s.name == "alicom_delivery_receipts" and s.labels.get("outcome") == outcome)

    stack.wait(lambda: receipts("delivered") == delivered and receipts("failed") == failed,
               "the delivery counts in the metrics")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
