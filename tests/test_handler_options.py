"""A built-in handler's bad option is one ConfigError line naming the handler and the option
(the shared checks `consumer.handlers.require_text` / `require_number`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from consumer.errors import ConfigError
from consumer.handlers import require_number, require_text
from consumer.handlers.bulk_sender import BulkSender
from consumer.handlers.delivery_stats import DeliveryStatsHandler
from consumer.handlers.number_hygiene import NumberHygiene
from consumer.handlers.plugins import HandlerSpec, PluginError, load_handlers
from consumer.handlers.postgres import PostgresHandler
from consumer.handlers.redis_stream import RedisStreamHandler
from consumer.handlers.review_status import ReviewStatus
from consumer.handlers.tracking import SendTracker
from consumer.handlers.webhook import WebhookHandler

URL = "redis://:s3cret-pw@127.0.0.1:1/0"  # never connected to: the checks come first

BUILT_INS: dict[str, Callable[..., object]] = {
    "delivery-stats": lambda **o: DeliveryStatsHandler(url=URL, **o),
    "redis-stream": lambda **o: RedisStreamHandler(url=URL, **o),
    "webhook": lambda **o: WebhookHandler(url="http://127.0.0.1:1/hook", **o),
    "postgres": lambda **o: PostgresHandler(dsn="postgresql://u:pw@h/db", **o),
    "number-hygiene": lambda **o: NumberHygiene(url=URL, **o),
    "send-tracker": lambda **o: SendTracker(url=URL, **o),
    "review-status": lambda **o: ReviewStatus(url=URL, **o),
    "bulk-sender": lambda **o: BulkSender(url=URL, **o),
}


@pytest.mark.parametrize(("handler", "options", "message"), [
    ("delivery-stats", {"prefix": ""}, "prefix must be a non-empty string, got ''"),
    ("delivery-stats", {"prefix": 5}, "prefix must be a non-empty string, got 5"),
    ("delivery-stats", {"ttl_days": 0}, "ttl_days must be a number > 0, got 0"),
    ("delivery-stats", {"once_ttl_s": -1}, "once_ttl_s must be a number >= 0, got -1"),
    ("delivery-stats", {"timeout_s": 0}, "timeout_s must be a number > 0, got 0"),
    ("delivery-stats", {"wait_replicas": 1.5},
     "wait_replicas must be a whole number >= 0, got 1.5"),
    ("delivery-stats", {"wait_timeout_s": float("nan")},
     "wait_timeout_s must be a number > 0, got nan"),
    ("redis-stream", {"stream": ""}, "stream must be a non-empty string, got ''"),
    ("redis-stream", {"maxlen": 0}, "maxlen must be a whole number >= 1, got 0"),
    ("redis-stream", {"timeout_s": -5}, "timeout_s must be a number > 0, got -5"),
    ("redis-stream", {"done_ttl_s": 0.5}, "done_ttl_s must be a number >= 1, got 0.5"),
    ("webhook", {"timeout_s": "5"}, "timeout_s must be a number > 0, got '5'"),
    ("webhook", {"timeout_s": True}, "timeout_s must be a number > 0, got True"),
    ("postgres", {"timeout_s": 0}, "timeout_s must be a number > 0, got 0"),
    ("number-hygiene", {"prefix": ""}, "prefix must be a non-empty string, got ''"),
    ("number-hygiene", {"retention_days": 0}, "retention_days must be a number > 0, got 0"),
    ("number-hygiene", {"retention_days": float("inf")},
     "retention_days must be a number > 0, got inf"),
    ("send-tracker", {"tasks_prefix": ""}, "tasks_prefix must be a non-empty string, got ''"),
    ("send-tracker", {"timeout_s": 0}, "timeout_s must be a number > 0, got 0"),
    ("review-status", {"history": 0}, "history must be a whole number >= 1, got 0"),
    ("review-status", {"prefix": 5}, "prefix must be a non-empty string, got 5"),
    ("bulk-sender", {"timeout_s": -1}, "timeout_s must be a number > 0, got -1"),
])
def test_a_bad_option_is_one_line_naming_the_handler_and_the_option(
        handler: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        BUILT_INS[handler](**options)

    assert str(caught.value) == f"{handler} handler: {message}"


def test_the_loader_reports_the_same_line_for_a_configured_handler() -> None:
    with pytest.raises(PluginError) as caught:
        load_handlers([HandlerSpec("redis-stream", options={"url": URL, "maxlen": 0})])

    text = str(caught.value)
    assert "redis-stream handler: maxlen must be a whole number >= 1, got 0" in text
    assert "\n" not in text and "s3cret-pw" not in text


def test_a_long_or_multi_line_value_is_cut_to_a_short_single_line() -> None:
    with pytest.raises(ConfigError) as caught:
        require_number("x", "timeout_s", "1\n" * 200, above=0)

    text = str(caught.value)
    assert "\n" not in text and len(text) < 140 and text.endswith("...")


def test_good_values_pass_the_checks() -> None:
    require_text("x", "prefix", "alicom:stats")
    require_number("x", "timeout_s", 0.1, above=0)
    require_number("x", "once_ttl_s", 0, at_least=0)
    require_number("x", "maxlen", 1, at_least=1, whole=True)


def test_a_check_needs_exactly_one_bound() -> None:
    with pytest.raises(TypeError):
        require_number("x", "n", 1)
    with pytest.raises(TypeError):
        require_number("x", "n", 1, above=0, at_least=0)
