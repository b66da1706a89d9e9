"""Built-in handlers, registered as entry points in group `alicom_receipts.handlers`.

| name           | class                                                | kind   |
|----------------|------------------------------------------------------|--------|
| `log`          | `consumer.handlers.log:LogHandler`                   | single |
| `jsonl`        | `consumer.handlers.jsonl:JsonLinesHandler`           | batch  |
| `redis-stream` | `consumer.handlers.redis_stream:RedisStreamHandler`  | batch  |
| `webhook`      | `consumer.handlers.webhook:WebhookHandler`           | single |
| `delivery-stats` | `consumer.handlers.delivery_stats:DeliveryStatsHandler` | batch |
| `send-tracker` | `consumer.handlers.tracking:SendTracker` | batch |
| `number-hygiene` | `consumer.handlers.number_hygiene:NumberHygiene` | batch |
| `review-status` | `consumer.handlers.review_status:ReviewStatus` | batch |
| `bulk-sender`  | `consumer.handlers.bulk_sender:BulkSender` (the three above in one) | batch |
| `postgres`     | `consumer.handlers.postgres:PostgresHandler`         | batch  |

They all write `Receipt.to_dict()` as their JSON document (see `receipt_json`).

Under kill -9: `redis-stream` and `postgres` are exactly-once (their write and their own
completion record are one Redis script / one INSERT ... ON CONFLICT DO NOTHING keyed by the
dedup key, so a redelivery after a crash adds nothing). `log`, `jsonl` and `webhook` are
at-least-once: a crash between their write and the daemon's completion record repeats it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis

from consumer.clients.redis_client import RedisClient, connect_option, redis_error_text
from consumer.clients.redis_scripts import ScriptPlan, run_plans
from consumer.errors import ConfigError, RetryLater, clipped
from consumer.handler_api import BatchResult
from consumer.keys import KeyFunction, key_secret, make_key_function
from consumer.receipts import Receipt


def require_text(handler: str, option: str, value: object) -> None:
    """A handler's option check: `value` is a non-empty string, else a one-line ConfigError
    naming the handler and the option (`<handler> handler: <option> must be a non-empty
    string, got ''`)."""
    if not (isinstance(value, str) and value):
        raise ConfigError(f"{handler} handler: {option} must be a non-empty string, got "
                          f"{_shown(value)}")


def require_number(handler: str, option: str, value: object, *, above: float | None = None,
                   at_least: float | None = None, whole: bool = False) -> None:
    """A handler's option check: `value` is a number (an int when `whole`) over `above` or at
    least `at_least` (give one of them), else a one-line ConfigError naming the handler and
    the option (`<handler> handler: <option> must be a number > 0, got 0`). A bool (TOML's
    true), NaN and infinity (TOML's inf) are refused."""
    if (above is None) == (at_least is None):
        raise TypeError("require_number takes one of above= and at_least=")
    kind = "a whole number" if whole else "a number"
    bound = f"> {above:g}" if above is not None else f">= {at_least:g}"
    number = value if isinstance(value, int if whole else (int, float)) else None
    if number is None or isinstance(number, bool) or not math.isfinite(number) or not (
            number > above if above is not None else number >= cast(float, at_least)):
        raise ConfigError(f"{handler} handler: {option} must be {kind} {bound}, got "
                          f"{_shown(value)}")


def _shown(value: object) -> str:
    """An option's value in an error: its repr, cut so that the message stays short."""
    return clipped(repr(value), 80)


def receipt_json(receipt: Receipt) -> str:
    """The receipt's `to_dict()` as compact JSON on one line, non-ASCII kept readable.

    A body may carry a lone surrogate (a JSON escape the platform sent); such a document is
    written with ASCII escapes instead, so the output is always valid UTF-8.
    """
    document = receipt.to_dict()
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(document, ensure_ascii=True, separators=(",", ":"), default=str)
    return text


def redis_retry(what: str, exc: BaseException, client: RedisClient) -> RetryLater:
    """A Redis-backed handler's RetryLater for a failed call on `client`: `<what>: Type:
    message`, one line, credentials masked (`consumer.clients.redis_client.redis_error_text`).
    Raise it `from exc`."""
    return RetryLater(f"{what}: {redis_error_text(exc, client)}")


def write_plans(what: str, client: RedisClient, plans: Sequence[ScriptPlan[Any]]) -> BatchResult:
    """A Redis-backed handler's batch: its stores' `plans` in one round trip
    (`consumer.clients.redis_scripts.run_plans`); any Redis failure, or an error Redis
    answered a call with, is `redis_retry` (the batch is retried: the writes must be
    idempotent)."""
    try:
        run_plans(client, plans)
    except redis.RedisError as exc:
        raise redis_retry(what, exc, client) from exc
    return BatchResult()


class PlannedRedisHandler:
    """A Redis-backed built-in whose batch write is a plan (`plan`, a `ScriptPlan`):
    `handle_batch` sends it in one round trip (`write_plans`; a Redis failure retries the
    batch). `bulk-sender` sends several such handlers' plans in one.

    A subclass calls `_connect(url, timeout_s)` with its `url` option: a redis:// URL (the
    handler opens, and `close` closes, its own client), or the client of the handler that
    holds this one (`bulk-sender`), which then stays open when this one closes.
    """

    name: str
    types: tuple[str, ...] | None
    _client: RedisClient
    _owns_client: bool = False

    def _connect(self, url: str | RedisClient, timeout_s: float) -> RedisClient:
        if isinstance(url, str):
            self._client = connect_option(f"{self.name} handler", url, timeout_s)
            self._owns_client = True
        else:
            self._client = url
        return self._client

    def plan(self, receipts: Sequence[Receipt]) -> ScriptPlan[Any]:
        """The batch's write: the script calls and what to make of their answers."""
        raise NotImplementedError

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """The batch's write in one round trip (`write_plans`)."""
        return write_plans(self.name.replace("-", " "), self._client, [self.plan(receipts)])

    def close(self) -> None:
        """Closes the handler's connection pool (not one it was given)."""
        if self._owns_client:
            self._client.close()


def sink_key_function(dedup_keys: Mapping[str, Sequence[str]] | None = None) -> KeyFunction:
    """The dedup key a sink stores its completion under: the daemon's key function over the
    default fields (or `dedup_keys`, the same shape as the config's `[dedup_keys]`) and the
    deployment's key secret, read like the daemon reads it (consumer.keys.key_secret)."""
    return make_key_function(dedup_keys, key_secret(os.environ))
