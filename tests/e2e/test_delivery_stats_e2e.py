"""Delivery statistics in the real pipeline: a worker process with the `delivery-stats` handler
beside a handler that fails some receipts once, so they come back and the stats handler sees
them twice; `alicom-receipts stats` must still count every receipt exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter

from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO


def test_stats_count_each_receipt_once_through_the_worker(stack: Stack) -> None:
    # Sent in the past, as real receipts are: the fakes' send times step 0-2 s from the start,
    # so starting now put the last ones up to 160 s ahead, past the current hour near its end,
    # and `stats` (up to the current hour) missed them.
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 80, duplicate_rate=0.2, seed=11,
                             start_epoch_s=time.time() - 300)
    originals = [m.obj for m in report.originals]
    keys = ["SmsReport:%s:%s" % (o["biz_id"], o["phone_number"]) for o in originals]
    flaky = keys[:8]  # the recorder fails these on their first delivery: both handlers rerun
    config = stack.config(recorder={"flaky_keys": flaky})
    with config.open("a", encoding="utf-8") as f:
        f.write('\n[[handlers]]\nuse = "consumer.handlers.delivery_stats:DeliveryStatsHandler"\n'
                'options = { url = "%s" }\n' % stack.redis_server.url)
    worker = stack.worker(config)
    stack.wait(lambda: len(stack.applied()) == len(originals), "all receipts applied")
    stack.wait(stack.queue_is_empty, "every message deleted")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert any(r["dequeue_count"] >= 2 for r in stack.records()), "no receipt came back"

    done = subprocess.run(
        [sys.executable, "-m", "consumer", "stats", "--redis-url", stack.redis_server.url,
         "--since", "3h", "--json", "--top", "50"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    doc = json.loads(done.stdout)
    delivered = sum(1 for o in originals if o["success"])
    failures = Counter(o["err_code"] for o in originals if not o["success"])
    assert (doc["totals"]["delivered"], doc["totals"]["failed"]) == (
        delivered, len(originals) - delivered)
    assert {f["code"]: f["count"] for f in doc["failures"]} == dict(failures)
    assert doc["totals"]["delay_count"] == len(originals)
