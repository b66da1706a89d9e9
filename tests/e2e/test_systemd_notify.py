"""The worker under a service manager: the unit's own ExecStart line, run as systemd would run
it, with `$NOTIFY_SOCKET` pointing at a datagram socket this test listens on and a 2 s
`$WATCHDOG_USEC`.

The wedge: every receive hangs (the sandbox's hang_rate=1.0) while the socket timeout
(60 s) is longer than the test: the pollers sit in a call that does not return, which is
what a connection without a timeout (the MNS SDK's HTTPS default) or a middlebox that never
answers does in production. Nothing else is stopped: the process, its signal handling and
its health thread keep running, so a timer-driven ping (Sidekiq's) would carry on.
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, WorkerProcess, wait_until, worker_env

UNIT = REPO / "systemd" / "alicom-receipts@.service"
WATCHDOG_S = 2.0


def exec_start(instance: str, config: Path) -> list[str]:
    """The unit's ExecStart for `instance`, specifiers expanded as systemd does, with the
    installed paths pointed at this checkout's virtual environment and `config`."""
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    line = line.removeprefix("ExecStart=")
    line = re.sub(r"%(.)", lambda m: {"i": instance, "%": "%"}[m.group(1)], line)
    line = line.replace("$$", "$")
    line = line.replace("/opt/alicom-receipts/venv/bin/alicom-receipts",
                        str(Path(sys.executable).parent / "alicom-receipts"))
    line = line.replace("/etc/alicom-receipts/alicom-receipts.toml", str(config))
    return shlex.split(line)


@dataclass
class NotifyListener:
    """The service manager's end of the notify socket: every datagram, parsed, with its
    arrival time (monotonic)."""

    path: str
    sock: socket.socket
    messages: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages) if key in m]

    def statuses(self) -> list[str]:
        return [m["STATUS"] for _, m in self.with_key("STATUS")]

    def index(self, key: str) -> int:
        """Position of the first message with `key`, or -1."""
        return next((i for i, (_, m) in enumerate(list(self.messages)) if key in m), -1)

    def pings(self) -> list[float]:
        return [t for t, _ in self.with_key("WATCHDOG")]


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    directory = tempfile.mkdtemp(prefix="alicom-notify-", dir="/tmp")  # short: AF_UNIX limit
    path = str(Path(directory) / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    listener = NotifyListener(path, sock)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    yield listener
    listener._stop.set()
    thread.join(2)
    sock.close()
    Path(path).unlink(missing_ok=True)
    Path(directory).rmdir()


class UnitProcess(WorkerProcess):
    """A worker started the way the unit starts it."""

    notify_socket: str = ""

    def start(self) -> UnitProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        env = {**self.env, "NOTIFY_SOCKET": self.notify_socket,
               "WATCHDOG_USEC": str(int(WATCHDOG_S * 1_000_000))}
        self.proc = subprocess.Popen(exec_start("%s-1" % self.queue, self.config), cwd="/",
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)
        return self


def start_unit(stack: Stack, notify: NotifyListener, config: Path) -> UnitProcess:
    env = worker_env(stack.sandbox.access_key_id, stack.sandbox.access_key_secret)
    proc = UnitProcess(config, "SmsReport", env, stack.tmp / "unit.log")
    proc.notify_socket = notify.path
    stack.workers.append(proc)
    return proc.start()


def test_exec_start_runs_the_instance_type_through_a_shell_exec() -> None:
    argv = exec_start("SmsReport-3", Path("/etc/x.toml"))
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3:] == ["alicom-receipts", "SmsReport-3"]
    done = subprocess.run([*argv[:2], argv[2].replace("exec ", "exec echo "), *argv[3:]],
                          capture_output=True, text=True, check=True)
    assert "worker --queue SmsReport --config /etc/x.toml" in done.stdout


def test_ready_only_with_dependencies_status_watchdog_through_redis_outage_stopping(
        stack: Stack, notify: NotifyListener) -> None:
    stack.redis_server.stop()
    stack.sandbox.set_faults(error_rate=1.0)  # MNS answers 500 to everything
    config = stack.config(worker={"shutdown_budget_s": 5, "handler_deadline_s": 10})
    unit = start_unit(stack, notify, config)
    try:
        stack.wait(lambda: any("InternalError" in s for s in notify.statuses()),
                   "STATUS telling the MNS failure")
        assert notify.index("READY") == -1

        stack.sandbox.set_faults(error_rate=0.0)  # MNS back, Redis still away
        stack.wait(lambda: any(s.startswith("waiting: Redis") for s in notify.statuses()),
                   "STATUS telling Redis is unreachable")
        assert notify.index("READY") == -1
        redis_status_at = max(t for t, m in notify.with_key("STATUS")
                              if m["STATUS"].startswith("waiting: Redis"))

        stack.redis_server.start_again()
        stack.wait(lambda: notify.index("READY") >= 0, "READY=1 once Redis is back")
        ready_at = notify.with_key("READY")[0][0]
        assert ready_at > redis_status_at
        assert len(notify.with_key("READY")) == 1

        stack.publisher().publish("SmsReport", 20, seed=7)
        stack.wait(lambda: sum(stack.applied().values()) == 20, "20 receipts applied")
        stack.wait(lambda: any("20 handled" in s for s in notify.statuses()),
                   "STATUS counting the handled receipts")
        stack.wait(lambda: len([t for t in notify.pings() if t > ready_at]) >= 2,
                   "watchdog pings once running")

        stack.redis_server.stop()  # an outage: the pollers go on, backing off
        outage_at = time.monotonic()
        stack.publisher().publish("SmsReport", 5, seed=8)
        stack.wait(lambda: any(t > outage_at and m["STATUS"].startswith("waiting")
                               for t, m in notify.with_key("STATUS")),
                   "STATUS telling the Redis outage")
        stack.wait(lambda: len([t for t in notify.pings() if t > outage_at]) >= 5,
                   "watchdog pings all through the Redis outage", timeout_s=30)
        assert unit.proc is not None and unit.proc.poll() is None
        stack.redis_server.start_again()
        stack.wait(lambda: sum(stack.applied().values()) == 25, "the 5 receipts after it")
    finally:
        if stack.redis_server.process.poll() is not None:
            stack.redis_server.start_again()

    sent_at = time.monotonic()
    unit.signal(signal.SIGTERM)
    assert unit.wait(30) == 0
    assert any(t > sent_at for t, _ in notify.with_key("STOPPING"))
    assert len(set(notify.statuses())) >= 4  # starting/waiting/receiving/draining, each once


def test_watchdog_pings_stop_when_the_receive_loop_is_wedged(
        stack: Stack, notify: NotifyListener) -> None:
    config = stack.config(poll={"pollers": 2, "wait_seconds": 1, "socket_timeout_s": 60},
                          worker={"shutdown_budget_s": 3})
    unit = start_unit(stack, notify, config)
    stack.wait(lambda: notify.index("READY") >= 0, "READY=1")
    stack.wait(lambda: len(notify.pings()) >= 2, "watchdog pings while receiving")

    stack.sandbox.set_faults(hang_rate=1.0)
    # Both pollers inside a receive that will not return within the test.
    stack.wait(lambda: stack.sandbox.state()["injected"]["hang"] >= 2, "both pollers hung")

    def quiet_for(seconds: float) -> bool:
        pings = notify.pings()
        return bool(pings) and time.monotonic() - pings[-1] > seconds

    stack.wait(lambda: quiet_for(1.5 * WATCHDOG_S), "the pings to stop", timeout_s=30)
    assert unit.proc is not None and unit.proc.poll() is None  # alive, only not moving
    assert any(e.get("event") == "watchdog_withheld" for e in unit.log_lines())

    stack.sandbox.set_faults(hang_rate=0.0)
    sent_at = time.monotonic()
    unit.signal(signal.SIGTERM)
    wait_until(lambda: any(t > sent_at for t, _ in notify.with_key("STOPPING")), 30,
               "STOPPING=1 on SIGTERM")
    assert unit.wait(30) == 0
