"""What wakes `alicom-receipts run` (consumer.runtime.supervisor): signals, and its workers'
own notifications.

`SignalPipe` delivers SIGCHLD, SIGTERM and SIGINT as bytes on a self-pipe
(`signal.set_wakeup_fd`), so the loop can sleep in select() without missing a signal that
arrives between two checks.

`NotifyInbox` gives every worker slot its own sd_notify socket (an abstract Unix datagram
socket named after `run`'s pid and the slot), passed to the worker as `$NOTIFY_SOCKET`: the
worker speaks the protocol it speaks to systemd (consumer.runtime.notify), and `run` learns
when one begins to stop (`STOPPING=1`), by itself (a recycle) or not, so it can hold that
worker to its stop budget.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import socket
from collections.abc import Callable, Iterable, Sequence
from types import FrameType, TracebackType
from typing import Any

#: What signal.signal() takes and returns (typeshed's private `_HANDLER`).
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class SignalPipe:
    """SIGCHLD, SIGTERM and SIGINT as bytes on a self-pipe. Main thread only; restores the
    previous handlers on exit."""

    SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._old_fd = -1
        self._old: dict[int, _Handler] = {}

    def __enter__(self) -> SignalPipe:
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            self._old[signum] = signal.signal(signum, _noted)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._read)
        os.close(self._write)

    def wait(self, timeout_s: float | None, also: Iterable[int] = ()) -> tuple[list[int],
                                                                               list[int]]:
        """Sleeps until a signal arrives, one of the `also` descriptors is readable, or
        `timeout_s` passes; returns (the signals seen, the readable `also` descriptors)."""
        ready, _, _ = select.select([self._read, *also], [], [], timeout_s)
        signals: list[int] = []
        if self._read in ready:
            with contextlib.suppress(BlockingIOError):
                signals = list(os.read(self._read, 4096))
        return signals, [fd for fd in ready if fd != self._read]


def _noted(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: nothing to do, the wakeup byte carries the news."""


class NotifyInbox:
    """One sd_notify socket per worker slot; `stopping(fds)` reads what arrived."""

    def __init__(self, names: Sequence[str]) -> None:
        tag = "alicom-run-%d-%s" % (os.getpid(), secrets.token_hex(4))
        self._by_fd: dict[int, tuple[str, socket.socket]] = {}
        self._address: dict[str, str] = {}
        for name in names:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            address = "%s-%s" % (tag, name)
            sock.bind(b"\0" + address.encode())
            sock.setblocking(False)
            self._by_fd[sock.fileno()] = (name, sock)
            self._address[name] = "@" + address

    def env_for(self, name: str) -> dict[str, str]:
        """The environment that points one slot's worker at its socket (no watchdog)."""
        return {"NOTIFY_SOCKET": self._address[name], "WATCHDOG_USEC": "0"}

    def fds(self) -> list[int]:
        return list(self._by_fd)

    def stopping(self, ready: Iterable[int]) -> list[str]:
        """Reads every datagram waiting on the `ready` sockets; the slots that said
        STOPPING=1."""
        out: list[str] = []
        for fd in ready:
            name, sock = self._by_fd[fd]
            while True:
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                if b"STOPPING=1" in data.split(b"\n"):
                    out.append(name)
        return out

    def close(self) -> None:
        for _name, sock in self._by_fd.values():
            sock.close()
