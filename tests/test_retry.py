"""The one retry helper and the one backoff formula (consumer.clients.retry)."""

from __future__ import annotations

import threading
import time

import pytest
from structlog.testing import capture_logs

from consumer.clients.retry import Tries, exponential_delay, jittered_delay, retry_call
from consumer.errors import PermanentError, TransientError
from consumer.pipeline.backoff import Backoff
from consumer.pipeline.outcome import RetryPolicy
from consumer.runtime.supervisor import restart_delay
from consumer.settings import RunSettings


def test_the_formula_doubles_from_the_base_up_to_the_cap() -> None:
    assert [exponential_delay(n, 0.5, 3.0) for n in range(0, 6)] == [
        0.5, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert exponential_delay(10_000, 1.0, 60.0) == 60.0  # no overflow on a long outage


def test_every_backoff_is_that_formula() -> None:
    run = RunSettings(restart_initial_s=1.0, restart_max_s=8.0)
    assert [restart_delay(n, run) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    policy = RetryPolicy(retry_base_s=5.0, retry_max_s=3600.0, max_dequeue_count=20)
    for count in (1, 3, 12):
        low = exponential_delay(count, 5.0, 3600.0)
        assert low <= policy.delay_s(count) <= low * 1.1 + 1
    for attempt in (1, 4, 9):
        assert 0 <= jittered_delay(attempt, 0.2, 30.0) <= exponential_delay(attempt, 0.2, 30.0)
    stop = threading.Event()
    stop.set()  # sleeps return at once
    backoff = Backoff(max_s=1.0)
    assert all(0 <= backoff.sleep(stop) <= 1.0 for _ in range(8))


def test_transient_errors_are_retried_up_to_the_attempts_then_reraised() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("not yet")
        return "ok"

    tries = Tries(attempts=3, base_s=0.001, max_wait_s=0.001)
    assert retry_call("flaky", flaky, threading.Event(), tries) == "ok"
    calls.clear()
    with pytest.raises(TransientError, match="not yet"):
        retry_call("flaky", flaky, threading.Event(), Tries(attempts=2, base_s=0.001))
    assert len(calls) == 2


def test_what_retry_on_refuses_is_not_retried_and_a_set_stop_ends_retrying() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise PermanentError("no")

    with pytest.raises(PermanentError):
        retry_call("broken", broken, threading.Event())
    assert len(calls) == 1

    def transient() -> None:
        calls.append(1)
        raise TransientError("down")

    stop = threading.Event()
    stop.set()
    calls.clear()
    with pytest.raises(TransientError):
        retry_call("down", transient, stop, Tries(attempts=None))
    assert len(calls) == 1


def test_the_first_failure_is_attempt_one_and_the_time_limit_counts_from_the_first_call(
) -> None:
    calls: list[int] = []

    def slow_then_ok() -> str:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.05)
            raise TransientError("slow")
        return "ok"

    with capture_logs() as logs:
        assert retry_call("s", slow_then_ok, threading.Event(),
                          Tries(attempts=3, base_s=0.001, max_wait_s=0.001)) == "ok"
    assert [(e["event"], e["attempt"], e["error"]) for e in logs] == [("retrying", 1, "slow")]
    calls.clear()
    # The first call alone outlasts `within_s`: no second one.
    with pytest.raises(TransientError, match="slow"):
        retry_call("s", slow_then_ok, threading.Event(),
                   Tries(attempts=None, within_s=0.03, base_s=0.001, max_wait_s=0.001))
    assert len(calls) == 1
