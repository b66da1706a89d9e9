"""`log`: one structured log line per receipt; handy to watch the flow or as a first handler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from consumer.errors import ConfigError
from consumer.receipts import Receipt, typed_field_names

_LEVELS = ("debug", "info", "warning", "error")

DEFAULT_FIELDS: tuple[str, ...] = (
    "biz_id", "out_id", "success", "err_code", "status", "order_id", "sign_status",
    "template_status", "template_code", "render_status",
)
"""Logged when present. Phone numbers and message content are left out by default: they are
personal data; name them in `fields` to log them anyway."""


class LogHandler:
    """Logs event `event` at `level` for each receipt.

    Every line carries `message_type`, `receipt_class`, `source`, `queue`, `mns_message_id`
    and `dequeue_count`, plus each name in `fields` that the receipt has: a typed attribute
    first (e.g. `biz_id`), else a key of the raw JSON object (e.g. `extData`).
    """

    name = "log"
    types: tuple[str, ...] | None = None

    def __init__(self, fields: Sequence[str] = DEFAULT_FIELDS, level: str = "info",
                 event: str = "receipt", logger: str = "alicom_receipts.receipts") -> None:
        if isinstance(fields, str):
            raise ConfigError("log handler: fields must be a list of names, not a string")
        if level not in _LEVELS:
            raise ConfigError(f"log handler: level must be one of {_LEVELS}, got {level!r}")
        self._fields = tuple(fields)
        self._event = event
        self._emit = getattr(structlog.get_logger(logger), level)

    def handle(self, receipt: Receipt) -> None:
        """Writes the line; never fails on a missing field."""
        meta = receipt.meta
        line: dict[str, Any] = {
            "message_type": receipt.message_type,
            "receipt_class": type(receipt).__name__,
            "source": meta.source,
            "queue": meta.queue,
            "mns_message_id": meta.message_id,
            "dequeue_count": meta.dequeue_count,
        }
        cls = type(receipt)
        for name in self._fields:
            # typed fields and properties (IntlSmsReport.success), never methods or raw/meta
            if name in typed_field_names(cls) or isinstance(getattr(cls, name, None), property):
                line[name] = getattr(receipt, name)
            elif name in receipt.raw:
                line[name] = receipt.raw[name]
        self._emit(self._event, **line)
