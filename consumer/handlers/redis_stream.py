"""`redis-stream`: XADD each receipt to a Redis stream for other services to consume."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from consumer.clients.redis_client import connect_option
from consumer.errors import ConfigError, RetryLater
from consumer.handler_api import BatchResult
from consumer.handlers import one_line, receipt_json
from consumer.receipts import Receipt


class RedisStreamHandler:
    """Adds one stream entry per receipt to `stream`, one pipeline per batch.

    Entry fields: `type` (message type), `doc` (`Receipt.to_dict()` as JSON) and
    `message_id` (the MNS MessageId, "" for push). The stream is capped with an approximate
    `MAXLEN ~ maxlen` (cheap trimming; it may hold somewhat more). An entry the server refuses
    is retried alone; a connection failure retries the whole batch. The URL (which may hold a
    password) never appears in errors or logs.
    """

    name = "redis-stream"
    types: tuple[str, ...] | None = None

    def __init__(self, url: str, stream: str = "alicom:receipts", maxlen: int = 1_000_000,
                 timeout_s: float = 5.0) -> None:
        if maxlen < 1:
            raise ConfigError(f"redis-stream handler: maxlen must be >= 1, got {maxlen!r}")
        if not stream:
            raise ConfigError("redis-stream handler: stream must not be empty")
        self._client = connect_option("redis-stream handler", url, timeout_s)
        self._stream = stream
        self._maxlen = maxlen

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """XADDs the batch in one round trip; entries the server refused are retried."""
        pipe = self._client.pipeline(transaction=False)
        for receipt in receipts:
            fields: dict[Any, Any] = {  # redis-py's field types vary between its versions
                "type": receipt.message_type,
                "doc": receipt_json(receipt),
                "message_id": receipt.meta.message_id,
            }
            pipe.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise RetryLater(f"redis stream {self._stream}: {one_line(exc)}") from exc
        result = BatchResult()
        for receipt, reply in zip(receipts, replies, strict=True):
            if isinstance(reply, Exception):
                result.retry(receipt, f"redis stream {self._stream}: {one_line(reply)}")
        return result

    def close(self) -> None:
        """Closes the connection pool."""
        self._client.close()
