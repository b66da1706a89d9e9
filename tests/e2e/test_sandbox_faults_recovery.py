"""The worker under the sandbox's long-poll cap and token API faults: it backs off instead of
flooding, and recovers with every receipt applied once and nothing lost."""

from __future__ import annotations

import signal
import time

from tests.e2e.conftest import Stack
from tests.e2e.harness import WorkerProcess
from tests.e2e.test_worker_delivery import report_key


def all_applied_once(stack: Stack, worker: WorkerProcess, expected: set[str]) -> None:
    """Every expected receipt applied exactly once, the queue empty, a clean stop."""
    stack.wait(lambda: len(stack.applied()) == len(expected), "all receipts applied", 120)
    stack.wait(stack.queue_is_empty, "every message deleted", 60)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    applied = stack.applied()
    assert set(applied) == expected
    assert max(applied.values()) == 1


def test_past_the_long_poll_cap_the_pollers_back_off_and_every_receipt_arrives(
        stack: Stack) -> None:
    stack.sandbox.set_faults(max_long_polls=1)
    config = stack.config(poll={"pollers": 4, "wait_seconds": 3},
                          worker={"adaptive_concurrency": False})
    worker = stack.worker(config)
    stack.wait(lambda: stack.sandbox.state()["injected"]["long_poll_refused"] >= 3,
               "long polls refused past the cap")
    refused_before = stack.sandbox.state()["injected"]["long_poll_refused"]
    time.sleep(3)
    refused = stack.sandbox.state()["injected"]["long_poll_refused"] - refused_before
    # Three pollers beyond the cap, answered at once: polling again at once would be
    # thousands of refused polls in 3 s; backing off (0.2 s doubling) keeps it to a few.
    assert refused < 60, "%d long polls refused in 3 s: the pollers do not back off" % refused
    assert any("too many long polls" in str(e.get("error"))
               for e in stack.log_events("poll_failed"))
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 100, seed=21)
    expected = {report_key(m.obj) for m in report.messages}
    all_applied_once(stack, worker, expected)


def test_token_api_errors_throttling_and_hangs_are_retried_and_nothing_is_lost(
        stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 100, seed=22)
    expected = {report_key(m.obj) for m in report.messages}
    # Every token request fails or hangs at first; the credentials expire every 4 s, so the
    # worker must keep fetching through the faults.
    stack.sandbox.set_token_lifetime(4)
    stack.sandbox.set_faults(token_error_rate=0.4, token_throttle_rate=0.3,
                             token_latency_ms=100, token_hang_next=1)
    config = stack.config(token={"refresh_before_s": 2, "read_timeout_s": 1,
                                 "backoff_initial_s": 0.1, "backoff_max_s": 1})
    worker = stack.worker(config)
    stack.wait(lambda: len(stack.applied()) >= 10, "receipts applied despite the faults", 120)

    def faulted() -> int:
        injected = stack.sandbox.state()["injected"]
        return int(injected["token_error"] + injected["token_throttle"])

    stack.wait(lambda: faulted() >= 3, "token requests refused with 5xx or throttling", 120)
    assert stack.sandbox.state()["injected"]["token_hang"] == 1
    stack.sandbox.set_faults(token_error_rate=0, token_throttle_rate=0, token_latency_ms=0)
    all_applied_once(stack, worker, expected)
