"""Stops that end, and no receipt running twice at once: real worker processes, the sandbox
(with faults), a real Redis, and a handler that misbehaves on purpose (tests/e2e/misbehaving).

Every test checks the stamps: no run of a receipt started while another run of it was alive.
The exit bounds ("within budget + 5 s") are the process's wait timeouts: a worker that takes
longer fails the test, however fast the machine.
"""

from __future__ import annotations

import datetime
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from alicom_sandbox.publisher import PublishReport
from tests.e2e.conftest import Stack
from tests.e2e.harness import WorkerProcess
from tests.e2e.misbehaving import Stamps, hangs
from tests.e2e.test_supervisor import Run, start_run
from tests.e2e.test_worker_delivery import report_key

__all__ = ["start_run"]  # the fixture, used by name

pytestmark = pytest.mark.slow

STAMPER = "tests.e2e.misbehaving:Stamper"
EXIT_MARGIN_S = 5.0  # "exit within budget + 5 s"


def stamper_config(stack: Stack, options: dict[str, Any] | None = None,
                   **sections: dict[str, Any]) -> Path:
    opts = {"path": str(stack.tmp / "stamps.jsonl"), "markers": str(stack.tmp / "markers"),
            **(options or {})}
    return stack.config(handlers=[{"use": STAMPER, "options": opts}], **sections)


def stamps(stack: Stack) -> Stamps:
    return Stamps(stack.tmp / "stamps.jsonl")


def publish(stack: Stack, count: int, seed: int) -> tuple[PublishReport, list[str]]:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", count, seed=seed)
    return report, [report_key(m.obj) for m in report.messages]


def assert_exits_within(worker: WorkerProcess, budget_s: float) -> int:
    try:
        return worker.wait(budget_s + EXIT_MARGIN_S)
    except subprocess.TimeoutExpired:
        raise AssertionError("the worker did not exit within its budget + %.0f s"
                             % EXIT_MARGIN_S) from None


def unrecorded_ids(stack: Stack) -> set[str]:
    return {str(e["message_id"]) for e in stack.log_events("completion_unrecorded")}


def test_sigterm_with_a_20_s_handler_and_a_5_s_budget_applies_nothing_twice(
        stack: Stack) -> None:
    report, keys = publish(stack, 4, seed=31)
    config = stamper_config(stack, {"sleep_s": 20},
                            worker={"shutdown_budget_s": 5, "handler_deadline_s": 30})
    first = stack.worker(config)
    stack.wait(lambda: set(stamps(stack).started()) == set(keys), "four handlers running")

    first.signal(signal.SIGTERM)

    assert assert_exits_within(first, 5) == 0
    assert unrecorded_ids(stack) == {m.message_id for m in report.messages}
    assert stamps(stack).ended() == {}  # the exit ended the four runs: nothing applied yet
    second = stack.worker(config)  # MNS re-delivers them after their visibility
    stack.wait(lambda: stamps(stack).ended() == dict.fromkeys(keys, 1), "all applied", 120)
    stack.wait(stack.queue_is_empty, "every message deleted")
    second.signal(signal.SIGTERM)
    assert assert_exits_within(second, 5) == 0
    assert stamps(stack).ended() == dict.fromkeys(keys, 1)
    stamps(stack).assert_no_overlap()


def test_sigterm_with_a_hung_handler_exits_and_leaves_only_it_unrecorded(
        stack: Stack) -> None:
    report, keys = publish(stack, 4, seed=32)
    hung = keys[0]
    config = stamper_config(stack, {"hang_keys": [hung]},
                            worker={"shutdown_budget_s": 3, "handler_deadline_s": 2})
    worker = stack.worker(config)
    stack.wait(lambda: set(stamps(stack).ended()) == set(keys[1:]), "the others applied")
    stack.wait(lambda: hung in stamps(stack).started(), "the hung handler running")

    worker.signal(signal.SIGTERM)

    assert assert_exits_within(worker, 3) == 0
    assert unrecorded_ids(stack) == {report.messages[0].message_id}
    assert stack.log_events("handler_stuck")
    assert stamps(stack).ended() == dict.fromkeys(keys[1:], 1)
    stamps(stack).assert_no_overlap()


def test_a_self_recycle_with_a_hung_handler_exits(stack: Stack) -> None:
    _report, keys = publish(stack, 4, seed=33)
    hung = keys[0]
    config = stamper_config(stack, {"hang_keys": [hung]},
                            worker={"shutdown_budget_s": 3, "handler_deadline_s": 2,
                                    "max_receipts": 4})
    worker = stack.worker(config)
    worker.expected_exit = True  # it recycles by itself
    code = worker.wait(120)
    exited = time.time()

    assert code == 0
    [recycling] = stack.log_events("recycling")
    assert recycling["reason"] == "max_receipts"
    began = datetime.datetime.fromisoformat(recycling["timestamp"]).timestamp()
    assert exited - began <= 3 + EXIT_MARGIN_S, "the recycle outlasted its budget + 5 s"
    assert [e["reason"] for e in stack.log_events("completion_unrecorded")] == [
        "handler_running_at_exit"]
    assert stamps(stack).ended() == dict.fromkeys(keys[1:], 1)
    stamps(stack).assert_no_overlap()


def test_a_handler_past_its_deadline_is_applied_once_and_its_success_recorded(
        stack: Stack) -> None:
    report, keys = publish(stack, 3, seed=34)
    config = stamper_config(stack, {"sleep_s": 4},
                            worker={"handler_deadline_s": 1}, ack={"max_in_flight_s": 30})
    worker = stack.worker(config)
    stack.wait(lambda: stamps(stack).ended() == dict.fromkeys(keys, 1), "all applied")
    stack.wait(stack.queue_is_empty, "every message deleted")
    time.sleep(5)  # longer than the queue's visibility: a re-delivery would run by now

    worker.signal(signal.SIGTERM)
    assert assert_exits_within(worker, 10) == 0
    assert len(stack.log_events("handler_stuck")) == 3
    settled = {e["message_id"]: e["outcome"] for e in stack.log_events("receipt_settled")}
    assert settled == {m.message_id: "handled" for m in report.messages}
    assert stamps(stack).ended() == dict.fromkeys(keys, 1)
    stamps(stack).assert_no_overlap()


def test_a_backlog_waiting_past_max_in_flight_is_applied_once(stack: Stack) -> None:
    _report, keys = publish(stack, 16, seed=35)
    # One handler thread, 1 s each: the last of a batch of 16 waits ~15 s in the process,
    # far past max_in_flight_s; waiting is not running, so its visibility is extended. A
    # call itself stays far below the deadline and max_in_flight_s however slow the machine
    # (a starved CI machine once stretched a 0.5 s call to 2.5 s: its stamps are fsynced).
    config = stamper_config(stack, {"sleep_s": 1.0},
                            worker={"handler_threads": 1, "handler_deadline_s": 4,
                                    "in_flight_max": 16},
                            ack={"max_in_flight_s": 8})
    worker = stack.worker(config)
    stack.wait(lambda: len(stamps(stack).ended()) == 16, "all applied", 120)
    stack.wait(stack.queue_is_empty, "every message deleted")
    worker.signal(signal.SIGTERM)
    assert assert_exits_within(worker, 10) == 0
    assert stamps(stack).ended() == dict.fromkeys(keys, 1)
    assert not stack.log_events("recycling")
    stamps(stack).assert_no_overlap()


def test_a_call_late_past_its_deadline_does_not_recycle_the_worker(stack: Stack) -> None:
    _report, keys = publish(stack, 2, seed=39)
    # The only handler thread runs each call 1.5 s past its deadline: stuck (warned), but only
    # late, not hung; a whole further deadline (5 s) would have to pass for a recycle.
    config = stamper_config(stack, {"sleep_s": 6.5},
                            worker={"handler_threads": 1, "handler_deadline_s": 5},
                            ack={"max_in_flight_s": 60},
                            # the push rule's bound on one thread's queue of 64 (unused here)
                            push={"reclaim_idle_s": 600})
    worker = stack.worker(config)
    stack.wait(lambda: stamps(stack).ended() == dict.fromkeys(keys, 1), "all applied", 120)
    stack.wait(stack.queue_is_empty, "every message deleted")
    worker.signal(signal.SIGTERM)
    assert assert_exits_within(worker, 10) == 0
    assert len(stack.log_events("handler_stuck")) == 2
    assert not stack.log_events("recycling")
    settled = [e["outcome"] for e in stack.log_events("receipt_settled")]
    assert settled == ["handled", "handled"]
    stamps(stack).assert_no_overlap()


@pytest.mark.parametrize("fault", [
    {"token_error_rate": 1.0},
    {"token_hang_rate": 1.0},
    {"freeze_rate": 1.0},
], ids=["token-api-refusing", "token-api-hanging", "mns-frozen"])
def test_sigterm_during_an_outage_exits_within_the_budget_and_loses_nothing(
        stack: Stack, fault: dict[str, float]) -> None:
    _report, keys = publish(stack, 12, seed=36)
    stack.sandbox.set_token_lifetime(6)  # the worker must fetch tokens while it stops
    config = stamper_config(
        stack, {"sleep_s": 1.5},
        worker={"handler_threads": 2, "shutdown_budget_s": 3, "handler_deadline_s": 5},
        token={"refresh_before_s": 3, "read_timeout_s": 5, "max_retry_s": 30})
    worker = stack.worker(config)
    stack.wait(lambda: len(stamps(stack).started()) >= 4, "handlers running, the rest queued")
    stack.sandbox.set_faults(**fault)

    worker.signal(signal.SIGTERM)

    assert assert_exits_within(worker, 3) == 0
    stack.sandbox.set_faults(**dict.fromkeys(fault, 0.0))
    second = stack.worker(config)
    stack.wait(lambda: set(stamps(stack).ended()) == set(keys), "all applied", 120)
    stack.wait(stack.queue_is_empty, "every message deleted", 60)
    second.signal(signal.SIGTERM)
    assert assert_exits_within(second, 3) == 0
    ended = stamps(stack).ended()
    # Only a run the first exit cut short (logged completion_unrecorded) may have ended
    # before: none here, every handler is shorter than the budget.
    assert ended == dict.fromkeys(keys, 1)
    stamps(stack).assert_no_overlap()


def dead_letter_ids(stack: Stack) -> dict[str, str]:
    """message id -> reason of every dead letter."""
    return {d.message_id: d.reason for d in stack.dead_letters().list(500, 0)}


@pytest.mark.timeout(300)
def test_hung_calls_filling_the_pool_recycle_the_worker_under_run_and_no_good_receipt_is_lost(
        stack: Stack, start_run: Any) -> None:
    report, keys = publish(stack, 40, seed=37)
    hung = {k for k in keys if hangs(k, 8)}
    good = set(keys) - hung
    assert 2 <= len(hung) <= 10, "the seed picks %d hanging receipts" % len(hung)
    # Half of 4 threads stuck (the default share) is a wedge: the worker recycles, `run`
    # restarts it at once, and the receipts the hung calls held come back after their
    # visibility, to hang again until they are dead-lettered.
    config = stamper_config(stack, {"hang_every": 8},
                            worker={"handler_threads": 4, "handler_deadline_s": 1,
                                    "shutdown_budget_s": 2},
                            # The last hung one may be alone: only its time in flight
                            # recycles the worker then.
                            ack={"max_dequeue_count": 4, "max_in_flight_s": 6})
    run: Run = start_run(config, 1)
    run.wait(lambda: set(stamps(stack).ended()) >= good, "every good receipt applied", 240)
    run.wait(lambda: len(dead_letter_ids(stack)) == len(hung), "the hung ones dead-lettered",
             240)

    reasons = {e.get("reason") for e in run.events("recycling")}
    assert "stuck_handlers" in reasons
    assert len(run.events("child_started")) >= 2
    assert all(e["code"] == 0 for e in run.events("child_exited")), "a recycle is an exit 0"
    hung_ids = {m.message_id for m in report.messages if report_key(m.obj) in hung}
    letters = dead_letter_ids(stack)
    assert set(letters) == hung_ids
    # A hung receipt comes back with no outcome recorded (the exit ended it): a suspect, it
    # then runs alone; either limit ends it, whichever it reaches first.
    assert set(letters.values()) <= {"max_dequeue_count", "crashed_worker"}
    assert stamps(stack).ended() == dict.fromkeys(good, 1)
    stamps(stack).assert_no_overlap()
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(2 + 10 + EXIT_MARGIN_S) == 0  # budget + run's stop margin


def test_the_rss_limit_is_enforced_between_batches(stack: Stack) -> None:
    _report, keys = publish(stack, 64, seed=38)
    # 8 MiB kept per receipt, batches of 8, at most 8 in flight: the worker may only pass
    # its limit by what it holds when a poller checks, before its next receive.
    config = stamper_config(stack, {"leak_mb": 8},
                            poll={"batch_size": 8, "pollers": 1},
                            worker={"in_flight_max": 8, "max_rss_mb": 160})
    worker = stack.worker(config)
    worker.expected_exit = True  # it recycles by itself
    assert worker.wait(120) == 0
    [recycling] = stack.log_events("recycling")
    assert recycling["reason"] == "max_rss_mb"
    peak = max(r["rss_mb"] for r in stamps(stack).of("end"))
    assert 160 < peak <= 160 + 8 * 8 + 16, "RSS %.0f MiB: not checked between batches" % peak
    assert len(stamps(stack).ended()) < len(keys)  # it stopped receiving at the limit
    stamps(stack).assert_no_overlap()
