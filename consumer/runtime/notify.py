"""The systemd notify protocol (sd_notify), without a dependency.

systemd hands a `Type=notify` service the address of a Unix datagram socket in
`$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) and, with `WatchdogSec=`,
the watchdog interval in `$WATCHDOG_USEC` (for the process `$WATCHDOG_PID`, when set). A
message is one datagram of newline-separated `KEY=VALUE` lines: `READY=1`, `STATUS=...`,
`STOPPING=1`, `WATCHDOG=1` (see sd_notify(3)).

`Notifier.from_env(env)` reads that environment once, when it is built (at start-up, never at
import). Without `$NOTIFY_SOCKET` (not under systemd, or `NotifyAccess=none`) every method is a
no-op, so callers never test whether they run under systemd.

Sending never raises: a service manager that went away must not take the worker with it.
A failed send is logged once per kind of message, then only counted.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping

import structlog

log = structlog.get_logger("alicom_receipts.notify")

#: sd_notify(3) has no documented limit for STATUS; keep the line short enough for
#: `systemctl status` and one datagram.
STATUS_MAX_CHARS = 400


def _address(raw: str) -> str | bytes | None:
    """The socket address of `$NOTIFY_SOCKET`: a path, or `@name` -> abstract `\\0name`."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode("utf-8")
    if raw.startswith("/"):
        return raw
    return None  # sd_notify also ignores anything else (e.g. vsock: addresses we don't speak)


def _watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """`$WATCHDOG_USEC` in seconds, or None when the watchdog is off or meant for another
    process (`$WATCHDOG_PID` names a different pid, e.g. a parent that exec'd a shell)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends sd_notify messages to the service manager; a no-op when there is none.

    `watchdog_interval_s` is systemd's WatchdogSec for this process (None: no watchdog):
    systemd kills the service when no `WATCHDOG=1` arrives within it, so ping at half of it.
    Thread-safe.
    """

    def __init__(self, address: str | bytes | None, watchdog_interval_s: float | None) -> None:
        self.address = address
        self.watchdog_interval_s = watchdog_interval_s if address is not None else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed: set[str] = set()
        self.sent = 0
        self.send_failures = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str], pid: int | None = None) -> Notifier:
        """The notifier systemd's environment describes (`$NOTIFY_SOCKET`, `$WATCHDOG_USEC`,
        `$WATCHDOG_PID`); `pid` defaults to this process."""
        address = _address(env.get("NOTIFY_SOCKET", ""))
        return cls(address, _watchdog_interval_s(env, os.getpid() if pid is None else pid))

    @classmethod
    def disabled(cls) -> Notifier:
        return cls(None, None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str | None = None) -> None:
        """READY=1: start-up finished (systemd leaves "activating" for "active")."""
        self.send({"READY": "1", **({"STATUS": status} if status is not None else {})})

    def status(self, text: str) -> None:
        """STATUS=: one line that `systemctl status` shows."""
        self.send({"STATUS": text})

    def stopping(self, status: str | None = None) -> None:
        """STOPPING=1: the service began to shut down (systemd shows "deactivating")."""
        self.send({"STOPPING": "1", **({"STATUS": status} if status is not None else {})})

    def watchdog(self) -> None:
        """WATCHDOG=1: the keep-alive ping; only meaningful with a watchdog interval."""
        if self.watchdog_interval_s is not None:
            self.send({"WATCHDOG": "1"})

    def send(self, fields: Mapping[str, str]) -> bool:
        """Sends one datagram of `KEY=VALUE` lines; True when it was sent."""
        if self.address is None:
            return False
        message = "\n".join("%s=%s" % (k, _one_line(v)) for k, v in fields.items())
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(message.encode("utf-8"), self.address)
            except OSError as exc:
                self.send_failures += 1
                kinds = ",".join(sorted(fields))
                if kinds not in self._failed:
                    self._failed.add(kinds)
                    log.warning("notify_failed", fields=kinds, error=str(exc))
                return False
            self.sent += 1
            return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _one_line(value: str) -> str:
    """A value fit for one `KEY=VALUE` line: a newline would start a new key."""
    text = " ".join(value.splitlines())
    return text[:STATUS_MAX_CHARS]
