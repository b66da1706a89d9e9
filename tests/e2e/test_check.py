"""`alicom-receipts check` against the sandbox and a real Redis, as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from alicom_sandbox.config_file import write_config
from alicom_sandbox.redis_server import free_port
from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, worker_env


def _sections(stack: Stack, queues: list[str], redis_url: str | None = None,
              ) -> dict[str, dict[str, Any]]:
    """The configuration's sections for the stack's sandbox and Redis (without handlers)."""
    endpoint = stack.sandbox.endpoint
    return {
        "alicom": {"preset": "custom", "mns_endpoint": endpoint,
                   "token_endpoint": endpoint.removeprefix("http://"), "token_protocol": "http",
                   "account_id": stack.account_id, "queues": queues},
        "redis": {"url": redis_url or stack.redis_server.url},
        "push": {"allow_volatile": True},  # the session's Redis has no AOF
    }


def _config(stack: Stack, *, queues: list[str], redis_url: str | None = None,
            handler: str = "log", types: list[str] | None = None) -> Path:
    spec: dict[str, Any] = {"use": handler} if types is None else {"use": handler, "types": types}
    return write_config(stack.tmp / "check.toml", _sections(stack, queues, redis_url), [spec])


def _check(stack: Stack, config: Path, key_id: str | None = None,
           secret: str | None = None) -> tuple[int, list[str]]:
    env = worker_env(key_id or stack.sandbox.access_key_id,
                     secret or stack.sandbox.access_key_secret)
    done = subprocess.run([sys.executable, "-m", "consumer", "check", "--config", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    return done.returncode, done.stdout.splitlines()


def test_all_well_is_one_ok_line(stack: Stack) -> None:
    code, lines = _check(stack, _config(stack, queues=["SmsReport", "SmsUp"]))
    assert code == 0, lines
    assert len(lines) == 1
    assert lines[0].startswith("OK: ")
    assert "Redis" in lines[0] and "SmsReport" in lines[0] and "SmsUp" in lines[0]


def test_a_message_in_the_queue_stays_there_untouched(stack: Stack) -> None:
    stack.publisher().publish("SmsReport", 1, seed=1)
    code, lines = _check(stack, _config(stack, queues=["SmsReport"]))
    assert code == 0, lines
    # Peeked, not received: still visible at once, never dequeued.
    message = stack.sandbox.account().get_queue(stack.queue_name()).peek_message()
    assert message.dequeue_count == 0
    assert stack.queue_counts() == (1, 0)


def test_a_wrong_access_key_is_one_line(stack: Stack) -> None:
    code, lines = _check(stack, _config(stack, queues=["SmsReport", "SmsUp"]),
                         key_id="LTAIwrongkey", secret="wrong-secret-value")
    assert code == 1
    assert len(lines) == 1, lines  # refused once: not repeated for every queue type
    assert lines[0].startswith("access key: ")
    assert "InvalidAccessKeyId" in lines[0] and "LTAIwrongkey" in lines[0]
    assert "wrong-secret-value" not in lines[0]


def test_an_unreachable_redis_is_one_line(stack: Stack) -> None:
    url = "redis://:hunter2@127.0.0.1:%d/0" % free_port()
    code, lines = _check(stack, _config(stack, queues=["SmsReport"], redis_url=url))
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("redis: cannot reach redis://:***@127.0.0.1:")
    assert "redis.url" in lines[0]
    assert "hunter2" not in lines[0]


def test_a_missing_queue_is_one_line(stack: Stack) -> None:
    code, lines = _check(stack, _config(stack, queues=["SmsReport", "GlobeSmsReport"]))
    assert code == 1
    assert lines == [line for line in lines if "GlobeSmsReport" in line]
    assert len(lines) == 1
    assert "QueueNotExist" in lines[0] and "alicom.queues" in lines[0]


def test_a_plugin_that_fails_to_import_is_one_line(stack: Stack) -> None:
    config = _config(stack, queues=["SmsReport"], handler="no_such_package.handlers:on_report")
    code, lines = _check(stack, config)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("handlers: ")
    assert "no_such_package" in lines[0] and "ModuleNotFoundError" in lines[0]


def test_an_unusable_config_exits_2_with_a_line_per_problem(stack: Stack) -> None:
    config = stack.tmp / "bad.toml"
    config.write_text('[alicom]\npreset = "sandbox"\nqueues = ["SmsReprt"]\n'
                      '[poll]\nwait_seconds = 45\n', encoding="utf-8")
    code, lines = _check(stack, config)
    assert code == 2
    assert any("SmsReprt" in line and "SmsReport" in line for line in lines), lines
    assert any("poll.wait_seconds" in line for line in lines), lines


def test_declared_types_the_annotation_refuses_are_one_line(stack: Stack) -> None:
    config = _config(stack, queues=["SmsReport"], handler="tests.e2e.typed_handlers:on_report",
                     types=["SmsReport", "IntlSmsReport"])
    code, lines = _check(stack, config)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("handlers: handler 'on_report': declared types SmsReport, "
                               "IntlSmsReport do not match its annotation SmsReport")
    assert "(it would get IntlSmsReport)" in lines[0]


def test_a_queue_type_without_a_handler_fails_the_check(stack: Stack) -> None:
    sections = _sections(stack, ["SmsReport"])
    code, lines = _check(stack, write_config(stack.tmp / "none.toml", sections, []))
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("handlers: no handler takes SmsReport receipts: each one from "
                               "queue Alicom-Queue-")
    assert "add a [[handlers]] entry for SmsReport" in lines[0]


def test_two_broken_handlers_are_both_reported_each_with_its_own_hint(stack: Stack) -> None:
    sections = _sections(stack, ["SmsReport", "SmsUp"])
    handlers = [{"use": "no_such_package.handlers:on_report", "types": ["SmsReport"]},
                {"use": "jsonl", "options": {"path": "/x", "colour": "red"}},
                {"use": "log"}]
    code, lines = _check(stack, write_config(stack.tmp / "two.toml", sections, handlers))
    assert code == 1
    assert len(lines) == 2, lines
    assert "no_such_package" in lines[0] and "install the plugin's package" in lines[0]
    assert "(handlers[0]" in lines[0]
    assert "colour" in lines[1] and "fix `options`" in lines[1] and "(handlers[1]" in lines[1]
    assert "install the plugin's package" not in lines[1]


def test_a_handler_whose_redis_cluster_does_not_answer_is_a_problem_line_with_its_hint(
        stack: Stack) -> None:
    sections = _sections(stack, ["SmsReport"])
    handlers = [{"use": "number-hygiene",
                 "options": {"url": "redis+cluster://:hunter22@127.0.0.1:%d" % free_port()}}]
    code, lines = _check(stack, write_config(stack.tmp / "cluster.toml", sections, handlers))
    assert code == 1  # the check goes on: every other line is still checked
    assert len(lines) == 1, lines
    assert lines[0].startswith("handlers: handler 'number-hygiene': Redis did not answer: ")
    assert "start the service the handler writes to" in lines[0] and "hunter22" not in lines[0]
