"""The one retry helper (on tenacity) and the one exponential backoff formula.

`exponential_delay(attempt, base_s, max_s)` is base * 2^(attempt-1), capped: the formula of
every backoff here (message redelivery, worker restarts, the jittered waits below).
`retry_call` runs a call with a stop (attempts, and optionally elapsed time), a random
exponential wait (full jitter up to that formula), a log line before each sleep, and a sleep
that returns early when `stop` is set; tenacity's own defaults (retry forever, no wait) are
never used. The last error is re-raised unchanged.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import structlog
import tenacity

from consumer.errors import TransientError

T = TypeVar("T")
log = structlog.get_logger("alicom_receipts.retry")


def exponential_delay(attempt: int, base_s: float, max_s: float) -> float:
    """base_s * 2^(attempt-1), at most max_s; attempt 1 (or less) waits base_s."""
    return float(min(max_s, base_s * 2 ** min(max(attempt - 1, 0), 62)))


def jittered_delay(attempt: int, base_s: float, max_s: float) -> float:
    """A uniform random wait from 0 up to `exponential_delay` ("full jitter")."""
    return random.uniform(0, exponential_delay(attempt, base_s, max_s))  # noqa: S311 - jitter


def _wait(stop: threading.Event, seconds: float) -> None:
    stop.wait(seconds)  # returns early when `stop` is set


def transient(exc: BaseException) -> bool:
    """The default of what is worth another try: a TransientError."""
    return isinstance(exc, TransientError)


@dataclass(frozen=True)
class Tries:
    """How long to keep trying: at most `attempts` calls (None: no limit), within `within_s`
    seconds of the first (None: no limit), waiting a random time up to
    `exponential_delay(attempt, base_s, max_wait_s)` in between."""

    attempts: int | None = 5
    within_s: float | None = None
    base_s: float = 0.2
    max_wait_s: float = 10.0


def retry_call(
    what: str,
    fn: Callable[[], T],
    stop: threading.Event,
    tries: Tries = Tries(),
    *,
    retry_on: Callable[[BaseException], bool] = transient,
    event: str | None = "retrying",
    fields: Mapping[str, object] | None = None,
) -> T:
    """Calls `fn` until it returns, retrying what `retry_on` accepts as `tries` allows, and
    never after `stop` is set. Before each sleep, one `event` log line (None: quiet) with
    `what`, the attempt, the sleep and the error, plus `fields`.

    The first call is made directly: tenacity's set-up (17 us) is paid only once it failed,
    and then tenacity takes over as if it had made that call itself (attempt 1, its error,
    the time limit counted from its start)."""
    began = time.monotonic()
    try:
        return fn()
    except BaseException as exc:
        if not retry_on(exc):
            raise
        first: list[BaseException] = [exc]

    def call() -> T:
        if first:
            raise first.pop()
        return fn()

    return _retrying(what, stop, tries, began, retry_on, event, fields)(call)


def _retrying(what: str, stop: threading.Event, tries: Tries, began: float,
              retry_on: Callable[[BaseException], bool], event: str | None,
              fields: Mapping[str, object] | None) -> tenacity.Retrying:
    """`retry_call`'s tenacity set-up: every limit explicit, never tenacity's defaults."""
    limits: list[tenacity.stop.stop_base] = [tenacity.stop_when_event_set(stop)]
    if tries.attempts is not None:
        limits.append(tenacity.stop_after_attempt(tries.attempts))
    if tries.within_s is not None:
        limits.append(_StopAfter(began + tries.within_s))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        sleep_s = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(event, call=what, attempt=state.attempt_number,
                    sleep_s=round(sleep_s, 2), error=str(exc), **dict(fields or {}))

    return tenacity.Retrying(
        stop=tenacity.stop_any(*limits),
        wait=tenacity.wait_random_exponential(multiplier=tries.base_s, max=tries.max_wait_s),
        retry=tenacity.retry_if_exception(retry_on),
        before_sleep=None if event is None else before_sleep,
        sleep=lambda seconds: _wait(stop, seconds),
        reraise=True,
    )


class _StopAfter(tenacity.stop.stop_base):
    """Stop at `deadline` (time.monotonic): tenacity's stop_after_delay, counted from the
    first call, which `retry_call` makes before tenacity starts its clock."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return time.monotonic() >= self._deadline
