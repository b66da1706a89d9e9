"""Poison isolation's parts: the gate that lets a suspect run alone, and the crash ledger on
a real Redis. (The whole of it, with a handler that kills its process: tests/e2e/test_poison.)"""

from __future__ import annotations

import threading

import redis

from consumer.pipeline.outcome import Verdict
from consumer.pipeline.poison import (
    CRASH_LIMIT,
    CRASH_MEMORY_S,
    CRASHED_WORKER,
    CrashLedger,
    Isolation,
    crashed_worker,
)

WAIT_S = 30.0


def test_alone_waits_for_the_batches_dispatching_and_keeps_new_ones_out() -> None:
    gate = Isolation()
    order: list[str] = []
    first_in = threading.Event()
    release_first = threading.Event()

    def normal(name: str, hold: threading.Event | None = None) -> None:
        with gate.shared():
            order.append(name + " in")
            if hold is not None:
                first_in.set()
                hold.wait(WAIT_S)
            order.append(name + " out")

    first = threading.Thread(target=normal, args=("first", release_first))
    first.start()
    assert first_in.wait(WAIT_S)

    def suspect() -> None:
        with gate.alone(lambda: 0, 0.0):
            order.append("alone")

    lone = threading.Thread(target=suspect)
    lone.start()
    # Until the suspect waits for the first batch (a starved machine may take long to get
    # the thread there; a batch arriving before it would rightly go first).
    for _ in range(int(WAIT_S / 0.01)):
        if gate.waiting:
            break
        threading.Event().wait(0.01)
    assert gate.waiting == 1
    later = threading.Thread(target=normal, args=("later",))
    later.start()
    for _ in range(int(WAIT_S / 0.01)):  # and the later batch waits for the suspect
        if gate.blocked or "later in" in order:
            break
        threading.Event().wait(0.01)
    assert (gate.blocked, order) == (1, ["first in"])
    release_first.set()
    for thread in (first, lone, later):
        thread.join(WAIT_S)
    assert order == ["first in", "first out", "alone", "later in", "later out"]


def test_alone_gives_running_handlers_until_the_wait_ends() -> None:
    gate = Isolation()
    looks: list[int] = []

    def running() -> int:
        looks.append(1)
        return 1 if len(looks) < 3 else 0  # the last handler returns on the third look

    with gate.alone(running, WAIT_S):
        assert len(looks) == 3


def test_the_ledger_counts_lone_runs_that_never_returned(redis_client: redis.Redis) -> None:
    ledger = CrashLedger(redis_client, lambda key: "alicom:dedup:" + key)
    assert ledger.count("k") == 0
    ledger.begin("k")
    ledger.begin("k")  # the process died in the first lone run, then in the second
    assert ledger.count("k") == CRASH_LIMIT
    assert 0 < redis_client.ttl("alicom:dedup:k:crashes") <= CRASH_MEMORY_S
    ledger.end("k")  # a lone run that returned forgets them
    assert ledger.count("k") == 0
    decision = crashed_worker(CRASH_LIMIT)
    assert (decision.verdict, decision.reason) == (Verdict.DEAD_LETTER, CRASHED_WORKER)
