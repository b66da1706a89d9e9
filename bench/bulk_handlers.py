"""The bulk sender's three handlers alone: CPU per receipt of their own code, in-process.

`python bench/bulk_handlers.py [--receipts 32000] [--runs 5] [--per-send 1]` starts a real
Redis, builds SmsReport receipts (15% failed, the sandbox's carrier codes; `--per-send`
numbers per BizId, default 1, the worst case), tracks their sends as the sending code would,
and calls each handler's `handle_batch` on batches of 16 (as a worker does), timing this
process's CPU (user + system) per receipt; Redis's own CPU is reported beside it.
`worker_bench.py --handlers noop,bulk` measures the same handlers inside the real worker,
where the dispatcher's work per handler adds to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alicom_sandbox.fakes import FakeReceipts
from alicom_sandbox.redis_server import running_redis
from bench.common import cpu_seconds
from consumer.handlers.number_hygiene import NumberHygiene
from consumer.handlers.review_status import ReviewStatus
from consumer.handlers.tracking import SendTracker as SendTrackerHandler
from consumer.pipeline.decode import parse_object
from consumer.receipts import Receipt, ReceiptMeta
from consumer.reports.tracking import SendTracker, TrackedSend, epoch_of


def _receipts(count: int, seed: int, per_send: int) -> tuple[list[Receipt], list[TrackedSend]]:
    """`count` receipts, `per_send` numbers sharing each BizId (consecutive, as the numbers
    of one send call arrive close together)."""
    # Sent in the last hours, tracked at their send time (as the sending code does).
    fakes = FakeReceipts(seed=seed, start_epoch_s=time.time() - 2.0 * count - 60)
    docs = [fakes.make("SmsReport") for _ in range(count)]
    for i, doc in enumerate(docs):
        doc["biz_id"] = docs[i - i % per_send]["biz_id"]
    receipts = [parse_object("SmsReport", d, ReceiptMeta(source="mns")) for d in docs]
    sent = [epoch_of(dt.datetime.strptime(d["send_time"], "%Y-%m-%d %H:%M:%S")) for d in docs]
    return receipts, [TrackedSend(d["biz_id"], d["phone_number"], at)
                      for d, at in zip(docs, sent, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--receipts", type=int, default=32_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--per-send", type=int, default=1,
                   help="numbers per BizId (1: every receipt its own send call, the worst case)")
    args = p.parse_args(argv)
    names = ("number-hygiene", "send-tracker", "review-status")
    own: dict[str, list[float]] = {n: [] for n in names}
    redis_us: dict[str, list[float]] = {n: [] for n in names}
    with running_redis() as server:
        for run in range(args.runs):
            client = server.client()
            client.flushall()
            receipts, sends = _receipts(args.receipts, run, max(1, args.per_send))
            tracker = SendTracker(client)
            for start in range(0, len(sends), 1000):
                tracker.record_many(sends[start:start + 1000])
            handlers = (NumberHygiene(server.url), SendTrackerHandler(server.url),
                        ReviewStatus(server.url))
            for name, handler in zip(names, handlers, strict=True):
                redis_before, before = cpu_seconds(server.process.pid), time.process_time()
                for i in range(0, len(receipts), 16):
                    handler.handle_batch(receipts[i:i + 16])
                own[name].append((time.process_time() - before) / len(receipts) * 1e6)
                redis_us[name].append((cpu_seconds(server.process.pid) - redis_before)
                                      / len(receipts) * 1e6)
                handler.close()
            client.close()
    print("Bulk handlers alone: `python bench/bulk_handlers.py --receipts %d --runs %d "
          "--per-send %d`, %d CPUs, medians\n" % (args.receipts, args.runs, args.per_send,
                                                    os.cpu_count() or 0))
    print("| handler | CPU µs/receipt (this process) | Redis CPU µs/receipt |")
    print("|---|---:|---:|")
    for name in names:
        print("| %s | %.1f | %.1f |" % (name, statistics.median(own[name]),
                                       statistics.median(redis_us[name])))
    total = sum(statistics.median(own[n]) for n in names)
    print("| **the three** | **%.1f** | %.1f |" % (
        total, sum(statistics.median(redis_us[n]) for n in names)))
    print("\n- the three handlers' own code: %.1f µs per receipt (goal < 30 µs): %s"
          % (total, "meets" if total < 30 else "MISSES"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
