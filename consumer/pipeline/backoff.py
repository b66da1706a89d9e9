"""Bounded, jittered, interruptible retries around calls to MNS, the token API and Redis.

tenacity's defaults retry forever without waiting; every use here has a stop, a wait, a log
line before each sleep, and a sleep that returns early when shutdown is requested.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    stop_when_event_set,
    wait_random_exponential,
)

from consumer.errors import TransientError

T = TypeVar("T")
log = structlog.get_logger("alicom_receipts.backoff")


def _log_before_sleep(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        sleep_s = state.next_action.sleep if state.next_action else 0.0
        log.warning("retrying", call=what, attempt=state.attempt_number,
                    sleep_s=round(sleep_s, 2), error=str(exc))
    return before_sleep


def call_with_retry(
    what: str,
    fn: Callable[[], T],
    stop: threading.Event,
    *,
    attempts: int | None = 5,
    max_wait_s: float = 10.0,
    quiet: bool = False,
) -> T:
    """Calls `fn`, retrying TransientError up to `attempts` times (None: until it answers)
    or until `stop` is set.

    The last error is re-raised unchanged when the attempts run out or `stop` is set. Each
    retry is logged unless `quiet` (a caller that logs the state change itself).
    """
    limit = stop_never if attempts is None else stop_after_attempt(attempts)
    retrying = Retrying(
        stop=limit | stop_when_event_set(stop),
        wait=wait_random_exponential(multiplier=0.2, max=max_wait_s),
        retry=retry_if_exception_type(TransientError),
        before_sleep=None if quiet else _log_before_sleep(what),
        sleep=lambda seconds: _interruptible_sleep(stop, seconds),
        reraise=True,
    )
    return retrying(fn)


def _interruptible_sleep(stop: threading.Event, seconds: float) -> None:
    stop.wait(seconds)


#: The cap of `Backoff`'s delays by default; the systemd watchdog allows for one such sleep.
BACKOFF_MAX_S = 30.0


class Backoff:
    """Delays for a loop that must keep going (a poller facing an outage): 0.2 s doubling,
    jittered, capped at `max_s`; `reset()` after a success."""

    def __init__(self, max_s: float = BACKOFF_MAX_S) -> None:
        self._wait = wait_random_exponential(multiplier=0.2, max=max_s)
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def sleep(self, stop: threading.Event) -> float:
        """Sleeps the next delay (returns early on `stop`); returns the delay chosen."""
        self._attempt += 1
        delay = float(self._wait(cast(RetryCallState, _FakeState(self._attempt))))
        stop.wait(delay)
        return delay


class _FakeState:
    """tenacity's wait strategies read only `attempt_number` from the call state."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


class Trouble:
    """One log line per state change of an operation repeated every pass: when it starts
    failing (with the count and the first error) and when it works again (with how many
    failed meanwhile), never a line per message per pass."""

    def __init__(self, what: str) -> None:
        self._failing_event = what + "_failing"
        self._recovered_event = what + "_recovered"
        self._failed_since: float | None = None
        self._failures = 0

    def report(self, ok: int, failed: int, error: str) -> None:
        if failed:
            self._failures += failed
            if self._failed_since is None:
                self._failed_since = time.monotonic()
                log.warning(self._failing_event, failed=failed, ok=ok, error=error)
        elif ok and self._failed_since is not None:
            log.info(self._recovered_event, failed_meanwhile=self._failures, ok=ok,
                     failing_s=round(time.monotonic() - self._failed_since, 1))
            self._failed_since, self._failures = None, 0
