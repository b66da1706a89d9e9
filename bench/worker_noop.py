"""The worker benchmark's handler: accepts every receipt and does nothing with it.

Used as `use = "bench.worker_noop:noop"` (a single-receipt handler, the shape most users
write), so the benchmark measures the daemon's own cost per receipt and nothing else.
"""

from __future__ import annotations

from consumer.handler_api import handler
from consumer.receipts import Receipt


@handler(name="noop")
def noop(receipt: Receipt) -> None:
    """Returns at once: the receipt counts as handled."""
