"""Mistakes a user can make on the command line get one line saying what is wrong, never a
traceback (run as the real command, in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alicom_sandbox.redis_server import free_port


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumer", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--limit", "0", "--limit must be at least 1, got 0"),
    ("--offset", "-1", "--offset must be 0 or more, got -1"),
])
def test_dead_letters_list_refuses_a_bad_page_in_one_line(
        flag: str, value: str, expected: str) -> None:
    done = run("dead-letters", "list", flag, value)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["alicom-receipts dead-letters: " + expected]
    assert "Traceback" not in done.stdout + done.stderr


def test_a_redis_url_with_a_non_numeric_port_is_one_line_without_the_password() -> None:
    env = {"ALICOM_RECEIPTS_REDIS_URL": "redis://:hunter22@127.0.0.1:63x9/0", "PATH": ""}
    done = run("dead-letters", "list", env=env)
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "ALICOM_RECEIPTS_REDIS_URL: redis.url has a port that is not a number" in lines[0]
    assert "hunter22" not in lines[0]


@pytest.mark.parametrize(("args", "expected"), [
    (("demo", "--rate", "0"),
     "alicom-receipts demo: argument --rate: must be a number above 0, got '0'"),
    (("demo", "--seconds", "nan"),
     "alicom-receipts demo: argument --seconds: must be a number above 0, got 'nan'"),
    (("demo", "--duplicate-rate", "2"),
     "alicom-receipts demo: argument --duplicate-rate: must be a share from 0 to 1, got '2'"),
    (("numbers", "add", "13800000001", "--reason", "x", "--expire-days", "nan"),
     "alicom-receipts numbers add: argument --expire-days: must be a number, 0 or more, "
     "got 'nan'"),
    (("numbers", "add", "13800000001", "--reason", "x", "--expire-days", "-5"),
     "alicom-receipts numbers add: argument --expire-days: must be a number, 0 or more, "
     "got '-5'"),
    (("files", "--copy", "/proc/no-such-dir/x"),
     "alicom-receipts files: --copy /proc/no-such-dir/x: No such file or directory"),
])
def test_a_bad_number_or_copy_target_is_one_line(args: tuple[str, ...],
                                                   expected: str) -> None:
    done = run(*args)
    assert done.returncode == 2
    usage = {"demo": " (see alicom-receipts demo --help)",
             "numbers": " (see alicom-receipts numbers add --help)"}
    assert done.stderr.strip().splitlines() == [expected + usage.get(args[0], "")]
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize(("args", "status"), [
    (("worker", "--queue", "SmsReport"), 75),  # temporary: restarted later
    (("push-server",), 75),
    (("push-worker",), 75),
    (("dead-letters", "list"), 1),  # its Redis failure
])
def test_a_redis_cluster_no_node_of_which_answers_is_one_line_without_the_password(
        args: tuple[str, ...], status: int) -> None:
    # A cluster's client reads the slot map as it is made: that failing was a traceback.
    url = "redis+cluster://:hunter22@127.0.0.1:%d" % free_port()
    done = run(*args, env={"ALICOM_RECEIPTS_REDIS_URL": url, "PATH": ""})
    assert done.returncode == status
    assert "Traceback" not in done.stdout + done.stderr
    assert "hunter22" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"alicom-receipts {args[0]}: Redis did not answer: ConnectionError: redis cluster: ")


def test_a_handler_whose_redis_cluster_does_not_answer_is_temporary_not_a_mistake(
        tmp_path: Path) -> None:
    # Exit 2 would keep the service down (RestartPreventExitStatus=2); 75 is restarted later.
    config = tmp_path / "worker.toml"
    config.write_text(
        '[alicom]\npreset = "sandbox"\n[redis]\nurl = "redis://127.0.0.1:%d/0"\n'
        '[[handlers]]\nuse = "number-hygiene"\n'
        'options = {url = "redis+cluster://:hunter22@127.0.0.1:%d"}\n'
        % (free_port(), free_port()))
    done = run("worker", "--queue", "SmsReport", "--config", str(config), env={"PATH": ""})
    assert done.returncode == 75
    assert "Traceback" not in done.stdout + done.stderr
    assert "hunter22" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "alicom-receipts worker: handler 'number-hygiene': Redis did not answer: ")
