"""`review-status`: the current review state of every signature and template
(`consumer.reports.reviews`)."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from consumer.clients.redis_client import connect_option
from consumer.errors import ConfigError
from consumer.handler_api import BatchResult
from consumer.handlers import redis_retry
from consumer.receipts import Receipt
from consumer.reports.reviews import DEFAULT_PREFIX, ReviewStore


class ReviewStatus:
    """Keeps the latest state (approving, approved, rejected with its reason) of each
    signature and template, with its history, from SignSmsReport / TemplateSmsReport.

    Options: `url` (redis://, required; a password in it never appears in errors), `prefix`
    (default "alicom:reviews"), `history` (reviews kept per item, default 50), `timeout_s`.
    One script call per batch; a Redis failure retries the batch (a repeat changes nothing).
    """

    name = "review-status"
    types: tuple[str, ...] | None = ("SignSmsReport", "TemplateSmsReport")

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, history: int = 50,
                 timeout_s: float = 5.0) -> None:
        if not prefix or history < 1:
            raise ConfigError("review-status handler: prefix must not be empty, history >= 1")
        self._client = connect_option("review-status handler", url, timeout_s)
        self.store = ReviewStore(self._client, prefix, history)

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """Records the batch's reviews in one round trip."""
        try:
            self.store.record(receipts)
        except redis.RedisError as exc:
            raise redis_retry("review status", exc, self._client) from exc
        return BatchResult()

    def close(self) -> None:
        """Closes the connection pool."""
        self._client.close()
