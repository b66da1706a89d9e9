"""The scaling benchmark's handler: does nothing, and notes when it first ran.

`use = "bench.noop_handler:FirstSeenNoop"`, `options = { first_path = "..." }`: the first
receipt a process handles appends "<pid> <epoch seconds>" to `first_path`, so the benchmark
can time a drain from the first receipt applied by any process. Every other call returns at
once, so the benchmark measures the daemon's own cost per receipt.
"""

from __future__ import annotations

import os
import threading
import time

from consumer.receipts import Receipt


class FirstSeenNoop:
    name = "noop"

    def __init__(self, first_path: str = "") -> None:
        self._first_path = first_path
        self._lock = threading.Lock()
        self._seen = not first_path

    def handle(self, receipt: Receipt) -> None:
        """Accepts the receipt; the first call per process records the time."""
        if self._seen:
            return
        with self._lock:
            if self._seen:
                return
            self._seen = True
            line = "%d %.6f\n" % (os.getpid(), time.time())
            fd = os.open(self._first_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
