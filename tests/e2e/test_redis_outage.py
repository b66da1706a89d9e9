"""A Redis outage while batches are being settled: nothing applied twice, nothing lost.

The real `worker` and `push-worker` processes (with `push-server`), the sandbox through the
official SDK, a real Redis with AOF that the test stops and starts again (no process is
killed), and the recording handler that fsyncs one line per application. Both workers run
at once and meet the same outage. Poison: malformed MNS bodies, two receipts the handler
refuses for good, and pushed elements that are no receipt: each must be dead-lettered
exactly once.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alicom_sandbox.redis_server import RedisServer, running_redis
from alicom_sandbox.testing import SandboxHandle
from consumer.keys import dedup_key
from consumer.pipeline.decode import parse_object
from consumer.receipts import ReceiptMeta
from tests.e2e.conftest import Stack, open_stack
from tests.e2e.harness import wait_until
from tests.e2e.test_push_e2e import Procs, post, push_stored

STREAM, GROUP = "alicom:push", "alicom-push"

# Hundreds of messages held through the outage on a 4 s visibility: one heartbeat thread must
# extend each within 2 s, which a CPU shared with other tests' processes cannot promise.
pytestmark = pytest.mark.alone


@pytest.fixture(scope="module")
def durable_redis() -> Iterator[RedisServer]:
    with running_redis(persistent=True) as server:
        yield server


@pytest.fixture
def durable_stack(e2e_sandbox: SandboxHandle, durable_redis: RedisServer,
                  tmp_path: Path) -> Iterator[Stack]:
    client = durable_redis.client()
    client.flushall()
    with open_stack(e2e_sandbox, durable_redis, client, tmp_path) as stack:
        yield stack
    client.close()


def identity(obj: dict[str, Any]) -> str:
    """What the recording handler writes as "key": the receipt's business identity."""
    return "SmsReport:%s:%s" % (obj["biz_id"], obj["phone_number"])


def pushed_report(i: int) -> dict[str, Any]:
    return {"phone_number": "1390000%04d" % i, "send_time": "2017-01-01 00:00:00",
            "report_time": "2017-01-01 00:00:01", "success": True, "err_code": "DELIVERED",
            "err_msg": "ok", "sms_size": "1", "biz_id": "push^%d" % i, "out_id": "p%d" % i}


class Outage:
    """Both workers with a slow handler, their receipts, and what must come of them."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        with stack.publisher() as pub:
            report = pub.publish("SmsReport", 400, malformed=4, seed=91)
        good = [m for m in report.messages if not m.malformed]
        self.malformed_ids = {m.message_id for m in report.malformed}
        self.refused = {identity(m.obj): m.message_id for m in good[:2]}
        self.mns = {identity(m.obj) for m in good} - set(self.refused)
        self.push = Procs(stack, recorder={"slow_s": 0.05}, handler_threads=2,
                          handler_deadline_s=0.9)
        self.push.start("push-server")
        self.push.start("push-worker")
        wait_until(lambda: self.push.alive() and post(self.push.url + "/SmsReport")[0] == 200,
                   60, "the push server to answer")
        self.pushed: set[str] = set()
        self.bad_elements = 0
        self.bad_maybe_stored_twice = 0  # in a body answered 503, then pushed again
        for n in range(60):  # 600 receipts and 3 elements that are no receipt
            elements: list[dict[str, Any]] = [pushed_report(n * 10 + i) for i in range(10)]
            self.pushed |= {identity(e) for e in elements}
            bad = n % 20 == 7
            if bad:
                elements.append({"phone_number": "1", "note": "no biz_id"})
                self.bad_elements += 1
            status, _answer, refused = push_stored(self.push.url + "/SmsReport",
                                                   json.dumps(elements).encode())
            assert status == 200
            self.bad_maybe_stored_twice += refused if bad else 0
        self.worker = stack.worker(stack.config(
            recorder={"slow_s": 0.05, "poison_keys": sorted(self.refused)},
            worker={"handler_threads": 4}))

    def applied(self, source: str) -> Counter[str]:
        return Counter(str(r["key"]) for r in self.stack.records() if r["source"] == source)

    def mid_way(self) -> bool:
        mns, push = len(self.applied("mns")), len(self.applied("push"))
        return 60 <= mns < len(self.mns) - 60 and push >= 60

    def settled(self) -> bool:
        r = self.stack.redis
        return (self.push.alive() and set(self.applied("mns")) == self.mns
                and set(self.applied("push")) == self.pushed and self.stack.queue_is_empty()
                and r.xlen(STREAM) == 0 and r.xpending(STREAM, GROUP)["pending"] == 0)

    def logs(self) -> list[dict[str, Any]]:
        lines = [line for w in self.stack.workers for line in w.log_lines()]
        for raw in self.push.log_path("push-worker").read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines


def _outage(stack: Stack, seconds: float) -> None:
    o = Outage(stack)
    stack.wait(o.mid_way, "both workers part way through their receipts")
    stack.redis_server.stop()  # AOF: what was written before comes back with the server
    try:
        time.sleep(seconds)
    finally:
        stack.redis_server.start_again()
    stack.wait(o.settled, "every receipt applied, every message and entry settled", 300)

    o.worker.signal(signal.SIGTERM)
    assert o.worker.wait(60) == 0
    assert o.push.stop("push-worker") == 0

    # 0 applied twice, 0 lost.
    applied = o.applied("mns") + o.applied("push")
    assert set(applied) == o.mns | o.pushed
    assert max(applied.values()) == 1, [k for k, n in applied.items() if n > 1]
    # Each poison body dead-lettered once.
    letters = stack.dead_letters().list(100, 0)
    by_message = Counter(d.message_id for d in letters if d.source == "mns")
    expected = o.malformed_ids | set(o.refused.values())
    assert set(by_message) == expected and set(by_message.values()) == {1}
    pushed_letters = [d for d in letters if d.source == "push"]
    # (a body answered 503 may have been stored all the same: its re-push stores it again)
    assert o.bad_elements <= len(pushed_letters) <= o.bad_elements + o.bad_maybe_stored_twice
    assert {d.reason for d in pushed_letters} == {"missing_field"}

    logs = o.logs()
    events = Counter(str(e.get("event")) for e in logs)
    # The outage met completions being written (it hit while batches were settled) ...
    assert events["completion_held"] or any(
        e.get("event") == "retrying" and e.get("call") == "dedup complete" for e in logs)
    # ... and no completion was given up: nobody stopped the processes during it.
    assert events["completion_unrecorded"] == 0
    # Keeping messages invisible through the outage is logged per state change, not per
    # message and pass.
    assert events["visibility_extend_failing"] <= 2
    assert events["lease_extend_failing"] <= 3
    assert events["push_lease_renew_failing"] <= 2
    assert events["visibility_extend_failed"] == 0 and events["lease_extend_failed"] == 0
    assert events["push_lease_renew_failed"] == 0


def test_a_2_s_redis_outage_while_settling_applies_nothing_twice(
        durable_stack: Stack) -> None:
    _outage(durable_stack, 2.0)


@pytest.mark.slow
def test_a_30_s_redis_outage_while_settling_applies_nothing_twice(
        durable_stack: Stack) -> None:
    _outage(durable_stack, 30.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_120_s_redis_outage_while_settling_applies_nothing_twice(
        durable_stack: Stack) -> None:
    _outage(durable_stack, 120.0)


def test_sigterm_during_an_outage_waits_then_names_each_unrecorded_completion(
        durable_stack: Stack) -> None:
    stack = durable_stack
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 200, seed=92)
    worker = stack.worker(stack.config(recorder={"slow_s": 0.05},
                                       worker={"handler_threads": 4, "shutdown_budget_s": 3}))
    stack.wait(lambda: len(stack.applied()) >= 40, "a good part applied")
    stack.redis_server.stop()
    try:
        stack.wait(lambda: bool(stack.log_events("completion_held")), "completions held")
        began = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        waited_s = time.monotonic() - began
    finally:
        stack.redis_server.start_again()
    unrecorded = stack.log_events("completion_unrecorded")
    assert unrecorded, "nothing was held at the stop"
    assert waited_s >= 3.0  # it waited for Redis for its whole shutdown budget
    assert all(e["handler"] and e["dedup_key"].startswith("SmsReport:") for e in unrecorded)
    assert stack.log_events("worker_stopped")[-1]["completion_unrecorded"] == len(unrecorded)
    named = {e["dedup_key"] for e in unrecorded}

    # A new worker finishes the rest; the only receipts applied twice are the ones named.
    stack.worker(stack.config("again.toml"))
    expected = {identity(m.obj) for m in report.messages}
    stack.wait(lambda: set(stack.applied()) == expected and stack.queue_is_empty(),
               "all applied after the restart")
    hashed = {identity(m.obj): dedup_key(parse_object(
        "SmsReport", m.obj, ReceiptMeta(source="mns"))) for m in report.messages}
    twice = {hashed[k] for k, n in stack.applied().items() if n > 1}
    assert twice <= named
