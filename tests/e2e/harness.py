"""Runs the real `alicom-receipts worker` as a subprocess against the sandbox and Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    config: Path
    queue: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    expected_exit: bool = False  # set once the test signalled or killed it
    _log: Any = field(default=None, repr=False)

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", "worker", "--queue", self.queue,
             "--config", str(self.config)],
            cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.expected_exit = True
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._close_log()

    def kill(self) -> None:
        self.expected_exit = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"event": "raw", "text": raw})
        return out


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60,
               what: str = "condition", interval_s: float = 0.1) -> None:
    """Polls `predicate` until true; fails the test with `what` after `timeout_s`.

    The timeout only bounds a hung test; no assertion is made on how fast it happened.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(interval_s)


def worker_env(access_key_id: str, access_key_secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICOM_RECEIPTS_")}
    env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = access_key_id
    env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = access_key_secret
    env["PYTHONPATH"] = str(REPO)
    env.pop("CREDENTIALS_DIRECTORY", None)
    return env
