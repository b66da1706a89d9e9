"""Completion per handler, through the real worker and the real replay command.

Two handlers on one queue: `steady` always succeeds; `flaky` raises RetryLater on the first
delivery of every receipt and PermanentFailure on some. `steady` applies every receipt
exactly once (a retry or a dead letter caused by `flaky` never runs it again); the dead
letters name `flaky`, and replaying them runs `flaky` only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO
from tests.e2e.recording import read_records

COUNT = 16


def report_key(obj: dict[str, str]) -> str:
    return "SmsReport:%s:%s" % (obj["biz_id"], obj["phone_number"])


def applied(path: Path) -> Counter[str]:
    return Counter(str(r["key"]) for r in read_records(str(path)) if r["what"] == "applied")


def handlers(stack: Stack, keys: list[str], poison: list[str]) -> list[dict[str, Any]]:
    return [
        {"use": "tests.e2e.recording:Recorder", "name": "steady",
         "options": {"path": str(stack.tmp / "steady.jsonl")}},
        {"use": "tests.e2e.recording:Recorder", "name": "flaky",
         "options": {"path": str(stack.tmp / "flaky.jsonl"), "flaky_keys": keys,
                     "flaky_until_dequeue": 2, "poison_keys": poison}},
    ]


def test_a_handler_that_finished_never_runs_again_for_another_handlers_failure(
        stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", COUNT, seed=21)
    keys = [report_key(m.obj) for m in report.originals]
    poison = keys[:3]
    config = stack.config(handlers=handlers(stack, keys, poison))
    stack.worker(config)

    stack.wait(lambda: stack.queue_is_empty() and stack.dead_letters().count() == len(poison),
               "every receipt settled", timeout_s=120)

    steady, flaky = applied(stack.tmp / "steady.jsonl"), applied(stack.tmp / "flaky.jsonl")
    assert steady == Counter(keys)  # every receipt exactly once, retries and poison included
    assert flaky == Counter(keys[len(poison):])
    letters = stack.dead_letters().list(50, 0)
    assert {d.handlers for d in letters} == {("flaky",)}
    settled = [e for e in stack.log_events("receipt_settled") if e.get("outcome") == "retry"]
    assert settled and all(  # each handler's own outcome on the line
        {h["handler"]: h["outcome"] for h in e["handlers"]} == {"steady": "ok", "flaky": "retry"}
        for e in settled)

    # The handler is fixed (no more poison), then its dead letters are replayed: only it runs.
    fixed = stack.config("fixed.toml", handlers=handlers(stack, [], []))
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "dead-letters", "--config", str(fixed),
         "replay", "--all"], cwd=REPO, env=stack.workers[0].env, capture_output=True,
        text=True, timeout=120, check=False)
    assert "%d replayed" % len(poison) in done.stdout, done.stdout + done.stderr
    assert applied(stack.tmp / "steady.jsonl") == Counter(keys)  # not run again
    assert applied(stack.tmp / "flaky.jsonl") == Counter(keys)
    replayed = [r for r in read_records(str(stack.tmp / "flaky.jsonl")) if r["key"] in poison]
    assert {r["source"] for r in replayed} == {"replay"}
    assert stack.dead_letters().count() == 0


def test_replay_with_handler_runs_only_that_one_and_the_letter_keeps_the_others(
        stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 2, seed=22)
    keys = [report_key(m.obj) for m in report.originals]
    both = [{**h, "options": {"path": h["options"]["path"], "poison_keys": keys}}
            for h in handlers(stack, keys, keys)]
    stack.worker(stack.config(handlers=both))
    stack.wait(lambda: stack.queue_is_empty() and stack.dead_letters().count() == 2,
               "both receipts dead-lettered by both handlers")
    assert {d.handlers for d in stack.dead_letters().list(50, 0)} == {("flaky", "steady")}

    fixed = stack.config("fixed.toml", handlers=handlers(stack, [], []))
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "dead-letters", "--config", str(fixed),
         "replay", "--all", "--handler", "flaky"], cwd=REPO, env=stack.workers[0].env,
        capture_output=True, text=True, timeout=120, check=False)

    assert "0 replayed, 2 still dead" in done.stdout, done.stdout + done.stderr
    assert applied(stack.tmp / "flaky.jsonl") == Counter(keys)
    assert applied(stack.tmp / "steady.jsonl") == Counter()
    letters = stack.dead_letters().list(50, 0)
    assert [d.handlers for d in letters] == [("steady",), ("steady",)]
    shown = subprocess.run(
        [sys.executable, "-m", "consumer", "dead-letters", "--config", str(fixed), "show",
         letters[0].id], cwd=REPO, env=stack.workers[0].env, capture_output=True, text=True,
        timeout=60, check=False)
    assert json.loads(shown.stdout)["failed_handlers"] == ["steady"]


def test_a_handlers_own_max_attempts_from_the_config_dead_letters_it_early(
        stack: Stack) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 2, seed=23)
    keys = [report_key(m.obj) for m in report.originals]
    steady, flaky = handlers(stack, keys, [])
    flaky = {**flaky, "max_attempts": 2,
             "options": {**flaky["options"], "flaky_until_dequeue": 99}}  # never succeeds
    stack.worker(stack.config(handlers=[steady, flaky]))  # ack.max_dequeue_count stays 20

    stack.wait(lambda: stack.queue_is_empty() and stack.dead_letters().count() == 2,
               "both receipts dead-lettered on their 2nd delivery")

    letters = stack.dead_letters().list(50, 0)
    assert {(d.dequeue_count, d.handlers) for d in letters} == {(2, ("flaky",))}
    assert all("max_attempts 2 reached: flaky on delivery 2" in d.detail for d in letters)
    assert applied(stack.tmp / "steady.jsonl") == Counter(keys)
