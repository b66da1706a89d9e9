"""An example alicom-receipts handler plugin: prints one line per receipt.

Copy this package to start your own: a class (or a function decorated with
`consumer.handler`) plus one entry point in pyproject.toml is all a plugin is. Its tests
(`tests/`) use the daemon's testing kit, `consumer.testing`: no Redis, no queue needed.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from consumer import IntlSmsReport, Receipt, SmsReport, handler
from consumer.keys import dedup_key

__all__ = ["PrintHandler", "failed_deliveries"]


class PrintHandler:
    """Prints `<prefix> <message type> <dedup key> <MNS message id or ->` per receipt.

    Options (from the config's `options` table): `prefix` (default "receipt") and `stream`,
    "stdout" or "stderr". Handlers run in several threads at once, so lines are written
    under a lock to keep them whole.
    """

    name = "example-print"
    types: tuple[str, ...] | None = None  # None: whatever the config gives it, else all types

    def __init__(self, prefix: str = "receipt", stream: str = "stdout") -> None:
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', got {stream!r}")
        self._prefix = prefix
        self._stream: TextIO = sys.stdout if stream == "stdout" else sys.stderr
        self._lock = threading.Lock()

    def handle(self, receipt: Receipt) -> None:
        """Writes the line; an exception here would make the receipt come back later."""
        line = " ".join((self._prefix, receipt.message_type, dedup_key(receipt),
                         receipt.meta.message_id or "-"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


@handler(deadline_s=10, max_attempts=5)
def failed_deliveries(receipt: SmsReport | IntlSmsReport) -> None:
    """Prints `FAILED <receipt class> <error code>` to stderr for a failed delivery report.

    The annotation routes it: both kinds of delivery report (mainland `SmsReport` and the
    international `IntlSmsReport`, which has `error_code` instead of `err_code`), nothing
    else. Its own limits: a 10 s deadline, dead-lettered on a 5th failed delivery.
    """
    if receipt.success:
        return
    code = receipt.err_code if isinstance(receipt, SmsReport) else receipt.error_code
    sys.stderr.write(f"FAILED {type(receipt).__name__} {code or '-'}\n")
