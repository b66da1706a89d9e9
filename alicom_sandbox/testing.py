"""Start a real sandbox process for tests, benchmarks and the demo.

    with running_sandbox(latency_ms=5) as sandbox:
        queue = sandbox.account().get_queue(sandbox.queue_name("SmsReport"))

The sandbox runs as a subprocess (`python -m alicom_sandbox.server --port 0`), so its CPU
time can be read from /proc/<pid>/stat; it picks a free loopback port itself and reports the
endpoint on its first lines of output. Its log goes to `SandboxHandle.log_path`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mns.account import Account
from mns.queue import QueueMeta

from alicom_sandbox.context import (
    ALICOM_ACCOUNT_ID,
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    queue_name_for,
)

_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 10.0
_PROJECT_ROOT = Path(__file__).resolve().parents[2]

# running_sandbox(**options): option -> command-line flag.
_FLAGS = {
    "token_lifetime_s": "--token-lifetime-s",
    "latency_ms": "--latency-ms",
    "error_rate": "--error-rate",
    "drop_rate": "--drop-rate",
    "hang_rate": "--hang-rate",
    "max_long_polls": "--max-long-polls",
    "token_latency_ms": "--token-latency-ms",
    "token_error_rate": "--token-error-rate",
    "token_throttle_rate": "--token-throttle-rate",
    "token_hang_rate": "--token-hang-rate",
    "clock_skew_s": "--clock-skew-s",
    "date_window_s": "--date-window-s",
    "seed": "--seed",
    "log_level": "--log-level",
}

# create_queue(**attrs): keyword -> QueueMeta argument.
_QUEUE_ATTRS = {
    "visibility_timeout_s": "vis_timeout",
    "maximum_message_size_bytes": "max_msg_size",
    "message_retention_s": "msg_ttl",
    "delay_s": "delay_sec",
    "polling_wait_s": "polling_wait_sec",
    "logging_enabled": "logging_enabled",
}


class SandboxError(RuntimeError):
    """The sandbox process did not start, or an admin call failed."""


@dataclass
class SandboxHandle:
    """A running sandbox: where it listens, its root AccessKey, and run-time controls."""

    endpoint: str  # "http://127.0.0.1:PORT"; MNS and the token API share it
    access_key_id: str
    access_key_secret: str = field(repr=False)
    account_id: str
    pid: int
    log_path: str
    process: subprocess.Popen[bytes] = field(repr=False)

    def queue_name(self, message_type: str) -> str:
        """`Alicom-Queue-<account>-<message_type>`."""
        return queue_name_for(self.account_id, message_type)

    def account(self) -> Account:
        """A fresh MNS SDK `Account` with the root AccessKey (one per thread: not thread-safe)."""
        return Account(self.endpoint, self.access_key_id, self.access_key_secret)

    def create_queue(self, name: str, **attrs: Any) -> str:
        """Create (or confirm) a queue with the root key; returns its URL.

        Keywords: visibility_timeout_s, maximum_message_size_bytes, message_retention_s,
        delay_s, polling_wait_s, logging_enabled.
        """
        unknown = set(attrs) - set(_QUEUE_ATTRS)
        if unknown:
            raise TypeError("unknown queue attribute(s): " + ", ".join(sorted(unknown)))
        meta = QueueMeta(**{_QUEUE_ATTRS[k]: v for k, v in attrs.items()})
        url: str = self.account().get_queue(name).create(meta)
        return url

    def set_faults(self, **faults: float) -> dict[str, Any]:
        """Change faults at run time: latency_ms, error_rate, drop_rate, hang_rate,
        error_next, drop_next, hang_next, clock_skew_s, token_lifetime_s."""
        answer: dict[str, Any] = self.admin("POST", "/_sandbox/faults", faults)
        return answer

    def reset(self) -> dict[str, Any]:
        """Faults off, clock skew 0, token lifetime back to its start value."""
        answer: dict[str, Any] = self.admin("POST", "/_sandbox/reset", {})
        return answer

    def set_clock_skew(self, seconds: float) -> None:
        self.admin("POST", "/_sandbox/clock", {"skew_s": seconds})

    def set_token_lifetime(self, seconds: float) -> None:
        self.admin("POST", "/_sandbox/token-lifetime", {"seconds": seconds})

    def issue_credential(self, message_type: str, lifetime_s: float | None = None) -> Any:
        """A temporary credential straight from the credential store (bypasses the token API):
        dict with access_key_id, access_key_secret, security_token, expires_at."""
        body: dict[str, Any] = {"message_type": message_type}
        if lifetime_s is not None:
            body["lifetime_s"] = lifetime_s
        return self.admin("POST", "/_sandbox/credentials", body)

    def state(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.admin("GET", "/_sandbox/state")
        return answer

    def queue_state(self, name: str) -> dict[str, Any]:
        """Live counts (active, inactive, delayed) and waiting long polls of one queue."""
        answer: dict[str, Any] = self.admin("GET", f"/_sandbox/queues/{name}")
        return answer

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - our own loopback endpoint
            self.endpoint + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise SandboxError(f"{method} {path}: {exc.code} {exc.read()!r}") from exc


def _command(options: dict[str, Any]) -> list[str]:
    cmd = [sys.executable, "-m", "alicom_sandbox.server", "--host",
           str(options.get("host", "127.0.0.1")), "--port", "0"]
    for name, value in options.items():
        if name == "host":
            continue
        if name == "queues":
            for queue in value:
                cmd += ["--queue", str(queue)]
        elif name in _FLAGS:
            cmd += [_FLAGS[name], str(value)]
        elif name not in ("access_key_id", "access_key_secret"):
            raise TypeError(f"unknown sandbox option: {name}")
    return cmd


def _read_banner(process: subprocess.Popen[bytes], log: Path) -> dict[str, str]:
    """Key/value lines of the start banner, up to the `account_id:` line."""
    assert process.stdout is not None  # started with stdout=PIPE
    fd = process.stdout.fileno()
    deadline = time.monotonic() + _START_TIMEOUT_S
    banner: dict[str, str] = {}
    pending = b""
    # Raw reads of the pipe: a buffered readline would hide lines from select().
    while "account_id" not in banner:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            raise SandboxError(f"sandbox did not start within {_START_TIMEOUT_S}s; see {log}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise SandboxError(f"sandbox exited with {process.wait()}: {log.read_text()[-2000:]}")
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            key, sep, value = line.decode("utf-8", "replace").strip().partition(": ")
            if sep:
                banner[key] = value
    return banner


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(_STOP_TIMEOUT_S)


@contextmanager
def running_sandbox(**options: Any) -> Iterator[SandboxHandle]:
    """Run a sandbox subprocess for the duration of the `with` block.

    Options: host (default 127.0.0.1; "0.0.0.0" to be reached from other network
    namespaces), token_lifetime_s, latency_ms, error_rate, drop_rate, hang_rate, clock_skew_s,
    date_window_s, seed, log_level, queues (names to create instead of the seven Alicom
    queues), access_key_id / access_key_secret (root key; default: the documented local one),
    keep_log (keep the log file after a clean stop; it is always kept if the process failed).
    """
    keep_log = bool(options.pop("keep_log", False))
    key_id = str(options.get("access_key_id", DEFAULT_ACCESS_KEY_ID))
    secret = str(options.get("access_key_secret", DEFAULT_ACCESS_KEY_SECRET))
    env = dict(os.environ)
    env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = key_id
    env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = secret
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    fd, log_name = tempfile.mkstemp(prefix="alicom-sandbox-", suffix=".log")
    log = Path(log_name)
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            _command(options), stdout=subprocess.PIPE, stderr=log_file, env=env
        )
    try:
        banner = _read_banner(process, log)
        handle = SandboxHandle(
            endpoint=banner["endpoint"],
            access_key_id=key_id,
            access_key_secret=secret,
            account_id=banner.get("account_id", ALICOM_ACCOUNT_ID),
            pid=process.pid,
            log_path=str(log),
            process=process,
        )
        yield handle
    finally:
        _stop(process)
        if process.stdout is not None:
            process.stdout.close()
        if process.returncode == 0 and not keep_log:
            log.unlink(missing_ok=True)
