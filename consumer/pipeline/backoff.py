"""Bounded, jittered, interruptible retries around calls to MNS, the token API and Redis,
on the one retry helper (consumer.clients.retry): every use has a stop, a wait, a log line
before each sleep, and a sleep that returns early when shutdown is requested.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from consumer.clients.retry import Tries, jittered_delay, retry_call

T = TypeVar("T")
log = structlog.get_logger("alicom_receipts.backoff")


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
    or until `stop` is set (consumer.clients.retry.retry_call, the one retry helper).

    The last error is re-raised unchanged when the attempts run out or `stop` is set. Each
    retry is logged unless `quiet` (a caller that logs the state change itself).
    """
    return retry_call(what, fn, stop, Tries(attempts=attempts, max_wait_s=max_wait_s),
                      event=None if quiet else "retrying")


#: The cap of `Backoff`'s delays by default; the systemd watchdog allows for one such sleep.
BACKOFF_MAX_S = 30.0


class Backoff:
    """Delays for a loop that must keep going (a poller facing an outage): 0.2 s doubling,
    jittered, capped at `max_s`; `reset()` after a success."""

    def __init__(self, max_s: float = BACKOFF_MAX_S) -> None:
        self._max_s = max_s
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def sleep(self, stop: threading.Event) -> float:
        """Sleeps the next delay (returns early on `stop`); returns the delay chosen."""
        self._attempt += 1
        delay = jittered_delay(self._attempt, 0.2, self._max_s)
        stop.wait(delay)
        return delay


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
