"""`jsonl`: append each receipt as one JSON object per line to a file."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from consumer.errors import ConfigError, RetryLater
from consumer.handler_api import BatchResult
from consumer.handlers import receipt_json
from consumer.receipts import Receipt


class JsonLinesHandler:
    """Appends `Receipt.to_dict()` as one JSON line per receipt to `path`.

    One `write` (O_APPEND) and, with `fsync`, one fsync per batch: a batch is acknowledged
    only once its lines are on disk. Thread-safe. A failed write raises RetryLater for the
    whole batch, so a line may appear twice after a retry (at-least-once; dedupe downstream
    on `meta.message_id` or the dedup key); a line cut short by a failed write is ended by a
    newline before the next batch, so a reader skips one unparseable line at most. Several
    processes appending to one file do not interleave lines on local Linux file systems, but
    one file per process is the safe choice.
    """

    name = "jsonl"
    types: tuple[str, ...] | None = None

    def __init__(self, path: str, fsync: bool = True) -> None:
        self._path = os.fspath(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._cut_short = False
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            self._fd = os.open(self._path, flags, 0o640)
        except OSError as exc:
            raise ConfigError(f"jsonl handler cannot open {self._path!r}: {exc.strerror}") from exc

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """Writes all lines of the batch at once; all succeed or all are retried."""
        data = "".join(receipt_json(receipt) + "\n" for receipt in receipts).encode("utf-8")
        with self._lock:
            if self._fd < 0:
                raise RetryLater("jsonl handler is closed")
            if self._cut_short:
                data = b"\n" + data
            try:
                self._write_all(data)
                if self._fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                raise RetryLater(f"jsonl write to {self._path} failed: {exc.strerror}") from exc
        return BatchResult()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        self._cut_short = True  # until the last byte is written
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._cut_short = False

    def close(self) -> None:
        """Closes the file; later batches get RetryLater."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
