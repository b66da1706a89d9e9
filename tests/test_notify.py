"""The sd_notify protocol over a real Unix datagram socket, and what `Health` tells systemd."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.pipeline.stats import Stats
from consumer.runtime.notify import Notifier
from consumer.runtime.service import POLL_BACKOFF_MAX_S, Health
from consumer.settings import ServiceSettings


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    directory = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
    path = os.path.join(directory, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_arrive_as_key_value_lines(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.status("waiting: Redis")
    assert received(sock) == "STATUS=waiting: Redis"
    n.ready("receiving")
    assert received(sock) == "READY=1\nSTATUS=receiving"
    n.stopping()
    assert received(sock) == "STOPPING=1"
    n.close()


def test_a_status_with_a_newline_stays_one_line(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    n.status("two\nlines")
    assert received(sock) == "STATUS=two lines"


def test_the_abstract_namespace() -> None:
    name = "alicom-test-%d" % os.getpid()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        assert received(sock) == "READY=1"
    finally:
        sock.close()


def test_without_systemd_everything_is_a_no_op() -> None:
    n = Notifier.from_env({"WATCHDOG_USEC": "2000000"})
    assert not n.enabled
    assert n.watchdog_interval_s is None
    assert n.send({"READY": "1"}) is False
    n.ready()
    n.watchdog()


def test_watchdog_interval_and_its_pid(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    mine = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000",
                              "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval_s == 2.0
    mine.watchdog()
    assert received(sock) == "WATCHDOG=1"
    other = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000",
                               "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval_s is None  # meant for another process (e.g. a parent)
    assert Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "0"}) \
        .watchdog_interval_s is None


def test_environment_is_read_when_built_not_later(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    env = {"NOTIFY_SOCKET": path}
    n = Notifier.from_env(env)
    env["NOTIFY_SOCKET"] = "/nonexistent/socket"
    n.ready()
    assert received(sock) == "READY=1"


def test_a_vanished_manager_never_raises(tmp_path: Path) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.send({"STATUS": "x"}) is False
    n.watchdog()
    n.stopping()
    assert n.send_failures == 2 and n.sent == 0  # no watchdog interval: no ping sent at all


# -- Health: what the worker tells systemd, on a clock the test turns ----------------------


class Recorded(Notifier):
    """A Notifier that keeps what it would send (the socket is tested above)."""

    def __init__(self, watchdog_interval_s: float | None) -> None:
        super().__init__("/unused", watchdog_interval_s)
        self.log: list[dict[str, str]] = []

    def send(self, fields: object) -> bool:
        self.log.append(dict(fields))  # type: ignore[call-overload]
        return True

    def kinds(self) -> list[str]:
        return [k for m in self.log for k in m]


class WorkerView:
    """The parts of consumer.sources.mns.worker.Worker that Health reads, driven by the test."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.stop_receiving = threading.Event()
        self.last_progress = 0.0
        self.line = "starting: first poll of SmsReport"
        self.stats = Stats()

    def status(self) -> str:
        return self.line


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def health(interval: float | None = 2.0, **settings: float) -> tuple[Health, WorkerView,
                                                                    Recorded, Clock]:
    worker, notifier, clock = WorkerView(), Recorded(interval), Clock()
    h = Health(worker, notifier, ServiceSettings(**settings), probe=lambda: 0,  # type: ignore[arg-type]
               clock=clock)
    return h, worker, notifier, clock


def test_ready_once_after_the_first_poll_and_redis() -> None:
    h, worker, notifier, clock = health()
    h.tick()
    assert "READY" not in notifier.kinds()
    worker.ready.set()  # a poll went through, Redis not confirmed yet
    h.redis.error = "Error 111 connecting"
    clock.now = 1.0
    h.tick()
    assert "READY" not in notifier.kinds()
    statuses = [m["STATUS"] for m in notifier.log if "STATUS" in m]
    assert statuses[-1].startswith("waiting: Redis: Error 111")
    h.redis.ok.set()
    h.redis.error = None
    worker.line = "receiving SmsReport: 0 in flight"
    clock.now = 5
    h.tick()
    h.tick()
    assert notifier.kinds().count("READY") == 1


def test_status_only_on_change_and_at_most_once_a_second() -> None:
    h, worker, notifier, clock = health(interval=None)
    h.tick()
    h.tick()
    assert [m["STATUS"] for m in notifier.log] == ["starting: first poll of SmsReport"]
    worker.line = "waiting: token"
    clock.now = 0.5
    h.tick()
    assert len(notifier.log) == 1  # too soon
    clock.now = 1.0
    h.tick()
    assert notifier.log[-1] == {"STATUS": "waiting: token"}


def pings(notifier: Recorded) -> int:
    return notifier.kinds().count("WATCHDOG")


def test_pings_every_half_interval_while_polls_turn_and_stop_when_they_do_not() -> None:
    h, worker, notifier, clock = health(interval=2.0)
    for step in range(8):  # 4 s of polls finishing every 0.5 s
        clock.now = step * 0.5
        worker.last_progress = clock.now
        h.tick()
    assert pings(notifier) == 4
    before = pings(notifier)
    for step in range(1, 20):  # then no poll turn finishes for 10 s
        clock.now = 3.5 + step * 0.5
        h.tick()
    assert pings(notifier) - before == 2  # only within the 2 s stall allowance
    worker.last_progress = clock.now
    h.tick()
    assert pings(notifier) - before == 3  # a turn finished again: pings resume


def test_a_failed_poll_is_given_its_backoff_before_the_pings_stop() -> None:
    h, worker, notifier, clock = health(interval=2.0)
    worker.last_progress = 0.0
    clock.now = 1.0
    worker.stats.incr("poll_errors")  # e.g. Redis refused the claim: backoff follows
    clock.now = POLL_BACKOFF_MAX_S
    h.tick()
    assert pings(notifier) == 1
    clock.now = 1.0 + POLL_BACKOFF_MAX_S + 2.0  # the backoff and the allowance are over
    h.tick()
    assert pings(notifier) == 1


def test_settling_messages_is_progress_while_pollers_wait_for_room() -> None:
    h, worker, notifier, clock = health(interval=2.0)
    clock.now = 60.0  # no poll turn for a minute: the window is full
    worker.stats.incr("deleted", 16)
    h.tick()
    assert pings(notifier) == 1


def test_stall_allowance_can_exceed_the_watchdog_interval() -> None:
    h, _worker, notifier, clock = health(interval=2.0, watchdog_stall_s=90.0)
    clock.now = 80.0
    h.tick()
    assert pings(notifier) == 1


def test_draining_keeps_pinging() -> None:
    h, worker, notifier, clock = health(interval=2.0)
    worker.stop_receiving.set()
    clock.now = 100.0
    h.tick()
    assert pings(notifier) == 1
