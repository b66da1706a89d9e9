"""`delivery-stats`: per-hour delivery counters of SmsReports in Redis (see
`consumer.reports.delivery_stats` for the keys, and `alicom-receipts stats` to read them)."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from consumer.clients.redis_client import connect_option, redis_error_text
from consumer.clients.redis_scripts import replication
from consumer.errors import ConfigError
from consumer.handler_api import BatchResult
from consumer.handlers import redis_retry, require_number, require_text, sink_key_function
from consumer.receipts import Receipt
from consumer.reports.delivery_stats import (
    DEFAULT_ONCE_TTL_S,
    DEFAULT_PREFIX,
    DEFAULT_TTL_S,
    StatsWriter,
)


class DeliveryStatsHandler:
    """Counts each delivery report (SmsReport and the international IntlSmsReport) into its
    send hour: delivered / failed, failures by err_code, receipt delay.

    Options: `url` (redis://, required; may hold a password, which never appears in errors),
    `prefix` (keys, default "alicom:stats"), `ttl_days` (how long an hour is kept after it
    ended, default 90), `once_ttl_s` (how long a counted receipt is remembered so that a
    redelivery is not counted again; 0 turns that off), `timeout_s` (Redis socket timeout),
    `wait_replicas` and `wait_timeout_s` (as in `[dedup]`: each batch's writes confirmed on
    that many replicas, or the batch is retried, counting nothing twice; needs once_ttl_s).

    One round trip per batch. A receipt Redis refused is retried alone; a connection failure
    retries the batch (receipts already counted are not counted again while remembered).
    """

    name = "delivery-stats"
    types: tuple[str, ...] | None = ("SmsReport", "IntlSmsReport")

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX,
                 ttl_days: float = DEFAULT_TTL_S / 86400,
                 once_ttl_s: float = DEFAULT_ONCE_TTL_S, timeout_s: float = 5.0,
                 wait_replicas: int = 0, wait_timeout_s: float = 1.0) -> None:
        require_text(self.name, "prefix", prefix)
        require_number(self.name, "ttl_days", ttl_days, above=0)
        require_number(self.name, "once_ttl_s", once_ttl_s, at_least=0)
        require_number(self.name, "timeout_s", timeout_s, above=0)
        require_number(self.name, "wait_replicas", wait_replicas, at_least=0, whole=True)
        require_number(self.name, "wait_timeout_s", wait_timeout_s, above=0)
        self._client = connect_option("delivery-stats handler", url, timeout_s)
        try:
            self._writer = StatsWriter(self._client, prefix, ttl_days * 86400, once_ttl_s,
                                       key_of=sink_key_function(),
                                       wait=replication(wait_replicas, wait_timeout_s))
        except ValueError as exc:
            self._client.close()
            raise ConfigError("delivery-stats handler: %s" % exc) from None

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """Counts the batch; receipts Redis did not count are handed back for a retry."""
        try:
            errors = self._writer.record(receipts)
        except redis.RedisError as exc:
            raise redis_retry("delivery stats", exc, self._client) from exc
        result = BatchResult()
        for receipt, error in zip(receipts, errors, strict=True):
            if error is not None:
                result.retry(receipt, "delivery stats: " + redis_error_text(error, self._client))
        return result

    def close(self) -> None:
        """Closes the connection pool."""
        self._client.close()
