"""Handlers the end-to-end tests configure by `module:attr`, as a user would their own.

`Recorder` appends one JSON line per application to a file (O_APPEND, one write per line,
fsync), so a test in another process can count how often each receipt was applied, and
which worker process applied it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from consumer import PermanentFailure, Receipt, RetryLater
from consumer.keys import business_key


class Recorder:
    name = "recorder"

    def __init__(
        self,
        path: str,
        poison_keys: Sequence[str] = (),
        flaky_keys: Sequence[str] = (),
        flaky_until_dequeue: int = 2,
        slow_s: float = 0.0,
        started_path: str = "",
        gate_path: str = "",
    ) -> None:
        self._path = path
        self._poison = frozenset(poison_keys)
        self._flaky = frozenset(flaky_keys)
        self._flaky_until = flaky_until_dequeue
        self._slow_s = slow_s
        self._started_path = started_path
        self._gate_path = gate_path

    def handle(self, receipt: Receipt) -> None:
        key = business_key(receipt)
        if self._started_path:
            self._append(self._started_path, receipt, "started")
        if key in self._poison:
            raise PermanentFailure("poison receipt %s" % key)
        if key in self._flaky and receipt.meta.dequeue_count < self._flaky_until:
            raise RetryLater("flaky on delivery %d" % receipt.meta.dequeue_count, delay_s=1)
        if self._slow_s:
            time.sleep(self._slow_s)
        if self._gate_path:
            # Blocks until the test opens the gate: "the handler is still running".
            deadline = time.monotonic() + 60
            while not os.path.exists(self._gate_path) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._append(self._path, receipt, "applied")

    @staticmethod
    def _append(path: str, receipt: Receipt, what: str) -> None:
        line = json.dumps({
            "what": what,
            "key": business_key(receipt),
            "out_id": receipt.raw.get("out_id"),
            "message_id": receipt.meta.message_id,
            "dequeue_count": receipt.meta.dequeue_count,
            "source": receipt.meta.source,
            "pid": os.getpid(),
            "t": time.time(),
        }) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def read_records(path: str) -> list[dict[str, object]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
