"""Poison isolation with real processes: one receipt whose handler kills its process, among
48, under `run` (which restarts the worker each time it dies). Only that receipt is
dead-lettered (`crashed_worker`), the 47 others are applied, and only receipts of the first
crash's batch may repeat (handlers that returned in the instant before the crash)."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.misbehaving import Stamps
from tests.e2e.test_stops_that_end import dead_letter_ids, publish, stamper_config, stamps
from tests.e2e.test_supervisor import Run, start_run

__all__ = ["start_run"]  # the fixture, used by name

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_one_receipt_that_kills_the_worker_is_dead_lettered_alone(
        stack: Stack, start_run: Any) -> None:
    report, keys = publish(stack, 48, seed=41)
    poison = keys[5]
    poison_id = report.messages[5].message_id
    config = stamper_config(stack, {"exit_keys": [poison], "sleep_s": 0.05},
                            run={"restart_initial_s": 0.5, "restart_max_s": 2})
    run: Run = start_run(config, 1)
    run.wait(lambda: dead_letter_ids(stack) == {poison_id: "crashed_worker"},
             "the poison dead-lettered as crashed_worker", 240)
    others = set(keys) - {poison}
    run.wait(lambda: set(stamps(stack).ended()) >= others, "the 47 others applied", 120)
    run.wait(stack.queue_is_empty, "every message settled", 60)

    assert dead_letter_ids(stack) == {poison_id: "crashed_worker"}
    s: Stamps = stamps(stack)
    assert set(s.ended()) == others
    deaths = [e for e in run.events("child_exited") if e["code"] != 0]
    assert len(deaths) == 3  # once in its batch, then twice running alone
    first_pid = deaths[0]["child_pid"]
    first_batch = {str(r["key"]) for r in s.of("start") if r["pid"] == first_pid}
    repeated = {k for k, n in s.ended().items() if n > 1}
    assert repeated <= first_batch, "repeats outside the first crash's batch"
    assert s.started()[poison] == 3
    alone = {e["dedup_key"] for e in run.events("suspect_runs_alone")}
    assert len(alone) >= 2
    s.assert_no_overlap()
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 0
