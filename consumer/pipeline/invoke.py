"""One handler call turned into outcomes: what a handler returned or raised, classified.

The table of what an exception means is in `consumer.handler_api`'s docstring; this is
where it is applied. Nothing a handler does escapes: a handler that leaves by a
BaseException (SystemExit, KeyboardInterrupt, a bare BaseException subclass) or returns a
malformed BatchResult has a bug; it is logged at error level (with its traceback) and
retried like any other crash. Only the process dying ends a call without an outcome.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import cast

import structlog

from consumer.errors import PermanentError, PermanentFailure, RetryLater, one_line
from consumer.handler_api import (
    AnyHandler,
    BatchHandler,
    BatchResult,
    Handler,
    HandlerOutcome,
    HandlerPolicy,
    OutcomeKind,
)
from consumer.pipeline.outcome import RetryPolicy
from consumer.receipts import Receipt

log = structlog.get_logger("consumer.pipeline.dispatch")  # the name its log lines always had

_REASON_MAX_CHARS = 300


def invoke_one(target: AnyHandler, name: str, receipt: Receipt) -> HandlerOutcome:
    """Runs one single-receipt handler call; never raises. The hot path."""
    started = time.monotonic()
    try:
        cast(Handler, target).handle(receipt)
    except BaseException as exc:  # noqa: BLE001 - any handler error is an outcome, not a crash
        kind, reason, delay = _classify(exc, name, [receipt])
        return HandlerOutcome(kind, name, reason, delay, time.monotonic() - started)
    return HandlerOutcome("ok", name, "", None, time.monotonic() - started)


def invoke_batch(target: AnyHandler, name: str, receipts: list[Receipt],
                  ) -> list[HandlerOutcome]:
    """Runs one batch handler call and turns whatever happened into outcomes; never raises."""
    started = time.monotonic()
    result: object = None
    try:
        # object: a third-party handler may return anything, whatever its annotation says
        result = cast(object, cast(BatchHandler, target).handle_batch(receipts))
    except BaseException as exc:  # noqa: BLE001 - any handler error is an outcome, not a crash
        kind, reason, delay = _classify(exc, name, receipts)
        # One outcome object for all: it is immutable, and building one per receipt costs
        # a microsecond each on the hot path.
        return [HandlerOutcome(kind, name, reason, delay, time.monotonic() - started)
                ] * len(receipts)
    elapsed = time.monotonic() - started
    if result is not None and not isinstance(result, BatchResult):
        log.error("bad_batch_result", handler=name, got=type(result).__name__,
                  message_ids=[r.meta.message_id for r in receipts],
                  note="handle_batch must return None or a BatchResult: all are retried")
        result = BatchResult([(r, RetryLater("bad_batch_result")) for r in receipts])
    if result is None or not result.failed:
        return [HandlerOutcome("ok", name, "", None, elapsed)] * len(receipts)
    outcomes: list[HandlerOutcome] = []
    for receipt in receipts:
        signal = result.failure_for(receipt)
        kind, reason, delay = ("ok", "", None) if signal is None else _classify(
            signal, name, receipts)
        outcomes.append(HandlerOutcome(kind, name, reason, delay, elapsed))
    return outcomes


def _classify(exc: BaseException, name: str, receipts: Sequence[Receipt],
              ) -> tuple[OutcomeKind, str, float | None]:
    if isinstance(exc, RetryLater):
        return "retry", exc.reason or "retry_later", exc.delay_s
    if isinstance(exc, PermanentFailure):
        return "permanent", exc.reason or "permanent_failure", None
    if isinstance(exc, PermanentError):  # not exported for handlers, but its name says so
        return "permanent", one_line(exc)[:_REASON_MAX_CHARS], None
    log.error("handler_raised" if isinstance(exc, Exception) else "handler_crashed",
              handler=name, exc_info=exc, error_type=type(exc).__name__,
              message_types=sorted({r.message_type for r in receipts}),
              message_ids=[r.meta.message_id for r in receipts])
    return "retry", one_line(exc)[:_REASON_MAX_CHARS], None


def under_policy(outcome: HandlerOutcome, dequeue_count: int, policy: HandlerPolicy | None,
                 defaults: HandlerPolicy) -> HandlerOutcome:
    """A retry under its handler's own policy: on its `max_attempts`-th delivery or later it
    is permanent, and without a delay of its own it gets the handler's backoff for this
    delivery (the `defaults` fill what the handler leaves unset). Others pass unchanged."""
    if outcome.kind != "retry" or policy is None:
        return outcome
    attempt = max(dequeue_count, 1)
    if policy.max_attempts is not None and attempt >= policy.max_attempts:
        return dataclasses.replace(
            outcome, kind="permanent", delay_s=None,
            reason=f"max_attempts {policy.max_attempts} reached: {outcome.reason}")
    if outcome.delay_s is None and (policy.retry_base_s or policy.retry_max_s):
        full = policy.over(defaults)
        backoff = RetryPolicy(full.retry_base_s or 0.0, full.retry_max_s or 0.0)
        return dataclasses.replace(outcome, delay_s=float(backoff.delay_s(attempt)))
    return outcome
