"""The worker's promise, end to end: every receipt reaches the handler, once in effect,
and none is lost: real worker processes, the sandbox through the official SDK, real Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO


def report_key(obj: dict[str, str]) -> str:
    return "SmsReport:%s:%s" % (obj["biz_id"], obj["phone_number"])


def test_every_published_receipt_reaches_the_handler_once(stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 300, seed=1)
    expected = {report_key(m.obj) for m in report.messages}
    worker = stack.worker(stack.config())
    stack.wait(lambda: len(stack.applied()) == len(expected), "all receipts applied")
    stack.wait(stack.queue_is_empty, "every message deleted")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    applied = stack.applied()
    assert set(applied) == expected
    assert max(applied.values()) == 1


def test_a_platform_duplicate_with_a_new_message_id_is_applied_once(stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 120, duplicate_rate=0.25, seed=2)
    assert report.duplicates, "the publisher made no duplicates"
    unique = {report_key(m.obj) for m in report.messages}
    worker = stack.worker(stack.config())
    stack.wait(stack.queue_is_empty, "every message, duplicates too, deleted")
    worker.signal(signal.SIGTERM)  # its log is complete once it exited
    assert worker.wait(30) == 0
    applied = stack.applied()
    assert set(applied) == unique
    assert max(applied.values()) == 1
    duplicate_ids = {m.message_id for m in report.duplicates}
    acked = {e["message_id"] for e in stack.log_events("receipt_settled")
             if e.get("outcome") == "duplicate"}
    assert duplicate_ids & acked, "no duplicate was acknowledged as a duplicate"


def test_an_mns_redelivery_after_a_lost_delete_is_applied_once(stack: Stack) -> None:
    gate = stack.tmp / "gate"
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 1, seed=3)
    worker = stack.worker(stack.config(recorder={"gate_path": str(gate),
                                                 "started_path": str(stack.started_path)}))
    stack.wait(lambda: len(stack.started()) == 1, "the handler started")
    # Every MNS call now fails: the handler finishes and its completion is recorded in
    # Redis, but the delete cannot reach MNS, so MNS delivers the message again later.
    stack.sandbox.set_faults(error_rate=1.0)
    gate.touch()
    stack.wait(lambda: len(stack.applied()) == 1, "the handler finished")
    stack.wait(lambda: bool(stack.log_events("settle_failed")), "the delete gave up")
    stack.sandbox.reset()
    stack.wait(stack.queue_is_empty, "the re-delivered message deleted")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert stack.applied() == {report_key(report.messages[0].obj): 1}
    outcomes = [(e["outcome"], e["dequeue_count"]) for e in stack.log_events("receipt_settled")]
    # One message was published: a duplicate can only be its re-delivery.
    assert any(o == "duplicate" and n >= 2 for o, n in outcomes), outcomes


def test_a_failing_handlers_receipt_comes_back_and_succeeds_later(stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 20, seed=4)
    flaky = [report_key(m.obj) for m in report.messages[:5]]
    worker = stack.worker(stack.config(recorder={"flaky_keys": flaky}))
    stack.wait(lambda: len(stack.applied()) == 20, "all applied, the flaky ones too")
    stack.wait(stack.queue_is_empty, "all deleted")
    worker.signal(signal.SIGTERM)  # its log is complete once it exited
    assert worker.wait(30) == 0
    records = {r["key"]: r for r in stack.records()}
    assert all(records[k]["dequeue_count"] >= 2 for k in flaky)
    assert max(stack.applied().values()) == 1
    retried = [e for e in stack.log_events("receipt_settled") if e.get("outcome") == "retry"]
    assert len(retried) >= len(flaky)


def test_poison_is_dead_lettered_with_its_raw_body_and_replay_applies_it(stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 10, malformed=3, seed=5)
    good = [m for m in report.messages if not m.malformed]
    poison = [report_key(good[0].obj), report_key(good[1].obj)]
    stack.worker(stack.config(recorder={"poison_keys": poison}))
    stack.wait(stack.queue_is_empty, "every message settled")
    letters = stack.dead_letters().list(50, 0)
    by_message = {d.message_id: d for d in letters}
    for m in report.malformed:
        d = by_message[m.message_id]
        assert d.raw_body == m.body
        assert d.reason in {"bad_base64", "md5_mismatch", "not_utf8", "not_json",
                            "not_object", "missing_field", "bad_field", "too_large"}
    for m in good[:2]:
        assert by_message[m.message_id].reason == "permanent_failure"
        assert by_message[m.message_id].raw_body == m.body
    assert len(letters) == len(report.malformed) + 2
    assert len(stack.applied()) == len(good) - 2
    # The handler is fixed (no more poison), then the dead letters are replayed.
    fixed = stack.config("fixed.toml")
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "dead-letters", "--config", str(fixed),
         "replay", "--all"], cwd=REPO, env=stack.workers[0].env, capture_output=True,
        text=True, timeout=60, check=False)
    assert "2 replayed" in done.stdout, done.stdout + done.stderr
    applied = stack.applied()
    assert all(applied[report_key(m.obj)] == 1 for m in good)
    assert {r["source"] for r in stack.records() if r["key"] in poison} == {"replay"}
    assert stack.dead_letters().count() == len(report.malformed)


def test_nothing_is_deleted_before_its_handler_finished(stack: Stack) -> None:
    gate = stack.tmp / "gate"
    with stack.publisher() as pub:
        pub.publish("SmsReport", 3, seed=6)
    worker = stack.worker(stack.config(recorder={"gate_path": str(gate),
                                                 "started_path": str(stack.started_path)}))
    stack.wait(lambda: len(stack.started()) == 3, "all three handlers running")
    # Longer than the queue's 4 s visibility: the heartbeat must keep them invisible
    # and nothing may be deleted while the handlers run.
    for _ in range(3):
        threading.Event().wait(2.0)
        assert stack.queue_counts() == (0, 3)
    assert stack.applied() == {}
    gate.touch()
    stack.wait(stack.queue_is_empty, "deleted after the handlers finished")
    assert len(stack.applied()) == 3
    assert len(stack.started()) == 3, "a message was delivered again while in progress"
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_an_expired_token_is_replaced_without_losing_a_receipt(stack: Stack) -> None:
    stack.sandbox.set_token_lifetime(3)
    worker = stack.worker(stack.config(token={"refresh_before_s": 1}))
    # The sending must span the worker's rotations: on a starved machine the worker can take
    # longer to start than the 8 s of sending, and then drain the queue within one or two tokens.
    stack.wait(lambda: bool(stack.log_events("worker_started")), "the worker started")
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 240, rate_per_s=30, seed=7)  # about 8 s of sending
    expected = {report_key(m.obj) for m in report.messages}
    stack.wait(lambda: set(stack.applied()) == expected, "all applied across token rotations")
    stack.wait(stack.queue_is_empty, "all deleted")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert max(stack.applied().values()) == 1
    stopped = stack.log_events("worker_stopped")[-1]
    assert stopped["token_refreshes"] >= 3
    # Several tokens went through this worker: none of their secrets, nor the AccessKey
    # secret, is in its log (the sandbox's security tokens start with "CAIS", as STS's do).
    log_text = "".join(w.log_path.read_text() for w in stack.workers)
    assert stack.sandbox.access_key_secret not in log_text
    assert "CAIS" not in log_text
    assert "access_key_secret" not in log_text.replace('"access_key_secret":"***"', "")


def _publish_and_interrupt(stack: Stack, signum: int) -> set[str]:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 400, seed=8)
    worker = stack.worker(stack.config(recorder={"slow_s": 0.1},
                                       worker={"handler_threads": 8, "in_flight_max": 48}))
    stack.wait(lambda: len(stack.applied()) >= 40, "a good part applied")
    worker.signal(signum)
    code = worker.wait(30)
    assert code == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
    assert len(stack.applied()) < 400, "the worker finished everything before the signal"
    stack.worker(stack.config())
    return {report_key(m.obj) for m in report.messages}


def test_sigterm_in_the_middle_of_a_batch_drains_and_loses_nothing(stack: Stack) -> None:
    expected = _publish_and_interrupt(stack, signal.SIGTERM)
    stack.wait(lambda: set(stack.applied()) == expected, "all applied after the restart")
    stack.wait(stack.queue_is_empty, "all deleted")
    assert max(stack.applied().values()) == 1
    assert stack.log_events("worker_stopped")[0]["drained"] is True


def test_kill_9_in_the_middle_of_a_batch_loses_nothing(stack: Stack) -> None:
    expected = _publish_and_interrupt(stack, signal.SIGKILL)
    stack.wait(lambda: set(stack.applied()) == expected, "all applied after the restart")
    stack.wait(stack.queue_is_empty, "all deleted")
    # A receipt whose handler returned in the instant before the kill, before its
    # completion was recorded, runs again: that is the documented window, and nothing else
    # repeats. Each repeat is counted: once by the killed process, once by its successor.
    killed, successor = stack.workers[0].pid, stack.workers[1].pid
    by_key: dict[str, list[object]] = {}
    for r in stack.records():
        by_key.setdefault(str(r["key"]), []).append(r["pid"])
    repeated = {k: pids for k, pids in by_key.items() if len(pids) > 1}
    assert all(pids == [killed, successor] for pids in repeated.values()), repeated
    # At most what the killed process had in its hands: its window of 48 receipts.
    assert len(repeated) <= 48
    print("kill -9: %d receipts, %d applied twice (the crash window)"  # noqa: T201
          % (len(expected), len(repeated)))


def test_redis_going_away_stops_deletes_and_the_worker_resumes(stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 200, seed=9)
    expected = {report_key(m.obj) for m in report.messages}
    stack.worker(stack.config(recorder={"slow_s": 0.05}))
    stack.wait(lambda: len(stack.applied()) >= 30, "a good part applied")
    stack.redis_server.stop()
    try:
        threading.Event().wait(1.0)  # deletes already on the wire may land
        before = sum(stack.queue_counts())
        threading.Event().wait(3.0)
        assert sum(stack.queue_counts()) == before, "a message was deleted while Redis was away"
    finally:
        stack.redis_server.start_again()
    stack.wait(lambda: set(stack.applied()) == expected, "all applied after Redis came back")
    stack.wait(stack.queue_is_empty, "all deleted")
    # Finished receipts were held until Redis took their completions, none given up on.
    assert stack.log_events("poll_failed") or stack.log_events("completion_held")
    assert not stack.log_events("completion_unrecorded")
    assert max(stack.applied().values()) == 1
