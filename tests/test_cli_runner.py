"""The one command runner: every command's configuration and usage errors are one line on
stderr with exit status 2, temporary start-up failures exit 75, `--config` goes anywhere,
`--queue` takes a type or a queue name, and every option has help. Run as the real command,
in a subprocess, where the behaviour is the user's."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from alicom_sandbox.context import DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET
from alicom_sandbox.redis_server import RedisServer
from consumer import __version__
from consumer.cli import COMMANDS
from consumer.clients.credentials import _metadata_down, chain_failures, load_access_key
from consumer.errors import EXIT_CONFIG, EXIT_UNAVAILABLE
from consumer.pipeline.deadletter import DeadLetter
from consumer.pipeline.deadletter_store import RedisDeadLetterStore
from consumer.settings import (
    SANDBOX_ACCESS_KEY_ID,
    SANDBOX_ACCESS_KEY_SECRET,
    DeadLetterSettings,
)

REPO = Path(__file__).resolve().parent.parent
QUEUE = "Alicom-Queue-1943695596114318-"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without AccessKeys or settings overrides, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_", "ALICOM_"))}
    return {**env, **extra}


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumer", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or clean_env(), cwd=REPO,
                          check=False)


def one_line_error(done: subprocess.CompletedProcess[str], prog: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("alicom-receipts %s: " % prog), lines
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


def test_version_is_the_package_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == "alicom-receipts %s" % __version__
    assert version("alicom-receipts") == __version__


def test_every_option_of_every_command_has_help(monkeypatch: pytest.MonkeyPatch) -> None:
    missing: list[tuple[str, list[str]]] = []
    original = argparse._ActionsContainer.add_argument
    current = [""]

    def recording(self: argparse._ActionsContainer, *args: object,
                  **kwargs: object) -> argparse.Action:
        action = original(self, *args, **kwargs)  # type: ignore[arg-type]
        if not action.help and not isinstance(action, argparse._HelpAction):
            missing.append((current[0], action.option_strings or [action.dest]))
        return action

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", recording)
    commands = [*COMMANDS.items(), ("sandbox publish", ("alicom_sandbox.publisher", "main", ""))]
    for name, (module, func, _) in commands:
        current[0] = name
        entry = getattr(importlib.import_module(module), func)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                code = entry(["--help"])
            except SystemExit as exited:
                code = exited.code
        assert code == 0, name
        assert "usage:" in out.getvalue(), name
    assert not missing, missing
    assert len(commands) >= 14


@pytest.mark.parametrize("command", ["worker", "push-server", "push-worker", "reconcile",
                                     "run", "dead-letters"])
def test_an_environment_override_error_is_one_line_on_stderr_naming_the_variable(
        command: str) -> None:
    argv = {"worker": ["--queue", "SmsReport"], "dead-letters": ["list"]}.get(command, [])
    done = run(command, *argv, env=clean_env(ALICOM_RECEIPTS_POLL_WAIT_SECONDS="0"))
    assert done.returncode == EXIT_CONFIG
    assert done.stdout == ""
    line = one_line_error(done, command)
    assert line.endswith("ALICOM_RECEIPTS_POLL_WAIT_SECONDS: poll.wait_seconds must be 1-30 "
                         "(0 would spin on empty receives), got 0")


def test_a_usage_error_is_one_line_and_exit_2() -> None:
    done = run("worker")
    assert done.returncode == EXIT_CONFIG
    assert "the following arguments are required: --queue" in one_line_error(done, "worker")


@pytest.mark.parametrize("argv", [["replay"], ["replay", "--all", "0000-abc"]])
def test_replay_needs_ids_or_all(argv: list[str]) -> None:
    done = run("dead-letters", *argv)
    assert done.returncode == EXIT_CONFIG
    assert "replay needs the IDs of dead letters, or --all" in one_line_error(done,
                                                                              "dead-letters")


@pytest.fixture
def letters(redis_server: RedisServer, tmp_path: Path) -> Iterator[Path]:
    store = RedisDeadLetterStore(redis_server.client(), DeadLetterSettings())
    store.purge()
    for kind in ("SmsReport", "SmsReport", "SmsUp"):
        store.put(DeadLetter(id="", queue=QUEUE + kind, message_type=kind, raw_body="{",
                             reason="decode_error", detail="not json", message_id="m",
                             dequeue_count=1, enqueue_time_ms=0, first_dequeue_time_ms=0,
                             dead_at_ms=int(time.time() * 1000), source="mns"))
    config = tmp_path / "c.toml"
    config.write_text('[alicom]\npreset = "sandbox"\n[redis]\nurl = "%s"\n' % redis_server.url,
                      encoding="utf-8")
    yield config
    store.purge()


@pytest.mark.parametrize("queue", ["SmsReport", QUEUE + "SmsReport"])
def test_dead_letters_queue_takes_the_type_or_the_queue_name_and_config_goes_anywhere(
        letters: Path, queue: str) -> None:
    before = run("dead-letters", "--config", str(letters), "list", "--queue", queue)
    after = run("dead-letters", "list", "--queue", queue, "--config", str(letters))
    for done in (before, after):
        assert done.returncode == 0, done.stderr
        rows = done.stdout.splitlines()
        assert rows[-1] == "2 shown, 2 in all", rows
        assert all("SmsReport" in row for row in rows[:-1])


def test_an_unknown_queue_is_one_line_with_a_suggestion(letters: Path) -> None:
    done = run("dead-letters", "list", "--queue", "SmsReprt", "--config", str(letters))
    assert done.returncode == EXIT_CONFIG
    assert "(did you mean 'SmsReport'?)" in one_line_error(done, "dead-letters")


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_sandbox_on_a_busy_port_is_one_line_and_exit_75(busy_port: int) -> None:
    done = run("sandbox", "--port", str(busy_port))
    assert done.returncode == EXIT_UNAVAILABLE
    assert ("127.0.0.1:%d is in use" % busy_port) in one_line_error(done, "sandbox")


def test_a_push_server_on_a_busy_port_is_one_line_and_exit_75(
        busy_port: int, redis_server: RedisServer) -> None:
    env = clean_env(ALICOM_RECEIPTS_PUSH_LISTEN="127.0.0.1:%d" % busy_port,
                    ALICOM_RECEIPTS_REDIS_URL=redis_server.url,
                    # the session's Redis has no AOF, which the push server's guard refuses
                    ALICOM_RECEIPTS_PUSH_ALLOW_VOLATILE="true",
                    ALICOM_RECEIPTS_LOG_LEVEL="error")
    done = run("push-server", env=env)
    assert done.returncode == EXIT_UNAVAILABLE
    assert ("127.0.0.1:%d is in use" % busy_port) in one_line_error(done, "push-server")


@pytest.mark.parametrize("port", ["-1", "70000", "http"])
def test_a_bad_port_is_a_usage_error(port: str) -> None:
    done = run("sandbox", "--port", port)
    assert done.returncode == EXIT_CONFIG
    assert "argument --port: must be a port number 0-65535" in done.stderr
    assert "Traceback" not in done.stderr


# -- credentials --------------------------------------------------------------------------------


def test_the_sandbox_preset_uses_the_sandbox_documented_key_when_none_is_given() -> None:
    assert (SANDBOX_ACCESS_KEY_ID, SANDBOX_ACCESS_KEY_SECRET) == (
        DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET)
    key = load_access_key({}, "sandbox")
    assert (key.access_key_id, key.access_key_secret) == (DEFAULT_ACCESS_KEY_ID,
                                                          DEFAULT_ACCESS_KEY_SECRET)
    given = load_access_key({"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIgiven",
                             "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "s"}, "sandbox")
    assert given.access_key_id == "LTAIgiven"  # a key that is given wins


def test_check_with_the_sandbox_preset_and_no_key_tries_the_sandbox_key(tmp_path: Path) -> None:
    # The embedded default is the sandbox preset; nothing listens on its port here, so the
    # token check fails, but with the sandbox key: there is no AccessKey problem at all.
    done = run("check", env=clean_env(HOME=str(tmp_path), ALICOM_RECEIPTS_ALICOM_TOKEN_ENDPOINT=
                                      "127.0.0.1:9", ALICOM_RECEIPTS_ALICOM_MNS_ENDPOINT=
                                      "http://127.0.0.1:9", ALICOM_RECEIPTS_REDIS_URL=
                                      "redis://127.0.0.1:9/0"))
    assert done.returncode == 1
    assert done.stderr == ""
    assert not [line for line in done.stdout.splitlines() if line.startswith("access key")]
    assert "Traceback" not in done.stdout


@pytest.mark.slow
def test_a_missing_access_key_is_one_line_saying_what_was_tried(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[alicom]\naccount_id = "1"\n[redis]\nurl = "redis://127.0.0.1:9/0"\n'
                      '[[handlers]]\nuse = "log"\n', encoding="utf-8")
    done = run("check", "--config", str(config), env=clean_env(HOME=str(tmp_path)), timeout=120)
    assert done.returncode == 1
    assert done.stderr == "", done.stderr  # the SDK's own lines and tracebacks stay quiet
    lines = [line for line in done.stdout.splitlines() if line.startswith("access key")]
    assert len(lines) == 1, done.stdout
    assert "no Alibaba Cloud AccessKey found; tried $CREDENTIALS_DIRECTORY, " in lines[0]
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in lines[0] and "credentials file" in lines[0]
    assert "Traceback" not in done.stdout


def test_the_chains_error_becomes_one_reason_per_provider() -> None:
    detail = ("unable to load credentials from any of the providers in the chain: "
              "['EnvironmentVariableCredentialsProvider: Environment variable accessKeyId "
              "cannot be empty', 'EcsRamRoleCredentialsProvider: Failed to get RAM session "
              "credentials from ECS metadata service. HttpCode=404']")
    assert chain_failures(detail) == {
        "environment": "Environment variable accessKeyId cannot be empty",
        "ECS RAM role": "Failed to get RAM session credentials from ECS metadata service. "
                        "HttpCode=404"}


def test_stats_without_a_delivery_stats_handler_says_so(redis_server: RedisServer,
                                                        tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[alicom]\npreset = "sandbox"\n[redis]\nurl = "%s"\n[[handlers]]\n'
                      'use = "log"\n' % redis_server.url, encoding="utf-8")
    done = run("stats", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "the configuration has no delivery-stats handler" in done.stderr
    with_it = tmp_path / "d.toml"
    with_it.write_text(config.read_text() + '[[handlers]]\nuse = "delivery-stats"\n'
                       'options = { url = "%s" }\n' % redis_server.url, encoding="utf-8")
    assert run("stats", "--config", str(with_it)).stderr == ""


def test_a_ram_role_whose_metadata_service_does_not_answer_is_temporary() -> None:
    role = {"ALIBABA_CLOUD_ECS_METADATA": "my-role"}
    down = {"ECS RAM role": "Failed to get RAM session credentials: connect timeout"}
    no_role = {"ECS RAM role": "Failed to get RAM session credentials from ECS metadata "
                               "service. HttpCode=404"}
    assert _metadata_down(down, role)  # exit 75, restarted later
    assert not _metadata_down(no_role, role)  # the service answered: no such role, exit 2
    assert not _metadata_down({"environment": "accessKeyId cannot be empty"}, role)
