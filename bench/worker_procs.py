"""The worker benchmark's world: queues on the sandbox, Redis, and real worker processes.

`Env` fills fresh queues and watches them drain through the sandbox's admin API;
`BenchWorker` runs `python -m consumer worker` with a TOML config written here and reads
its CPU time and RSS from /proc and its outcome lines from its log; `LongRun` samples the
RSS of one worker draining many receipts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from bench.common import context_switches, cpu_seconds, rss_mb
from consumer.sandbox.config_file import write_config
from consumer.sandbox.fakes import FakeReceipts
from consumer.sandbox.publisher import Publisher
from consumer.sandbox.redis_server import RedisServer
from consumer.sandbox.testing import SandboxHandle

REPO = Path(__file__).resolve().parents[1]
NOOP_HANDLER = "bench.worker_noop:noop"
_TIMEOUT_S = 600.0  # only bounds a hung run; nothing is asserted on it


@dataclass(frozen=True)
class BenchQueue:
    account_id: str
    name: str
    count: int


@dataclass
class Env:
    sandbox: SandboxHandle
    redis: RedisServer
    tmp: Path
    bodies: Sequence[str]
    overrides: tuple[str, ...] = ()

    def redis_cpu(self) -> float:
        return cpu_seconds(self.redis.process.pid)

    def fresh_queue(self, count: int, latency_ms: int, *, flush_redis: bool,
                    bodies: Sequence[str] | None = None) -> BenchQueue:
        """A new queue holding `count` bodies (sent at 0 ms), then `latency_ms` switched on."""
        account_id = str(random.randrange(10**15, 10**16))
        name = "Alicom-Queue-%s-SmsReport" % account_id
        self.sandbox.set_faults(latency_ms=0)
        self.sandbox.create_queue(name, visibility_timeout_s=60)
        with Publisher(self.sandbox.endpoint, self.sandbox.access_key_id,
                       self.sandbox.access_key_secret, account_id=account_id) as pub:
            pub.send_bodies(name, list((bodies or self.bodies)[:count]))
        if flush_redis:
            self.redis.client().flushdb()
        self.sandbox.set_faults(latency_ms=latency_ms)
        return BenchQueue(account_id, name, count)

    def remaining(self, queue: BenchQueue) -> int:
        s = self.sandbox.queue_state(queue.name)
        return int(s["active"]) + int(s["inactive"]) + int(s["delayed"])

    def wait_first_progress(self, queue: BenchQueue, count: int, worker: BenchWorker) -> int:
        """Waits for the first delete; returns how many were left at that moment."""
        return self._wait(queue, worker, lambda left: left < count, 0.01)[0]

    def wait_empty(self, queue: BenchQueue, worker: BenchWorker) -> float:
        """Waits until the queue is empty; returns the epoch time it was seen so."""
        return self._wait(queue, worker, lambda left: left == 0, 0.02)[1]

    def _wait(self, queue: BenchQueue, worker: BenchWorker, done: Any,
              every_s: float) -> tuple[int, float]:
        deadline = time.monotonic() + _TIMEOUT_S
        while True:
            left = self.remaining(queue)
            if done(left):
                return left, time.time()
            worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("queue %s stuck at %d; see %s"
                                   % (queue.name, left, worker.log_path))
            time.sleep(every_s)

    def config(self, queue: BenchQueue, name: str) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "alicom": {"preset": "custom", "mns_endpoint": self.sandbox.endpoint,
                       "token_endpoint": self.sandbox.endpoint.removeprefix("http://"),
                       "token_protocol": "http", "account_id": queue.account_id,
                       "queues": ["SmsReport"]},
            "redis": {"url": self.redis.url},
            "poll": {"wait_seconds": 1, "socket_timeout_s": 10},
            "log": {"format": "json", "level": "info"},
        }
        for item in self.overrides:
            key, _, raw = item.partition("=")
            section, _, option = key.partition(".")
            sections.setdefault(section, {})[option] = tomllib.loads("v = " + raw)["v"]
        return write_config(self.tmp / ("%s.toml" % name), sections, [{"use": NOOP_HANDLER}])

    def worker(self, queue: BenchQueue, name: str) -> BenchWorker:
        """A started worker process on `queue`."""
        return BenchWorker(self, queue, name).start()

    def long_run(self, count: int, every_s: float, fakes: FakeReceipts) -> LongRun:
        """One worker drains `count` receipts at 0 ms; its RSS is sampled every `every_s`."""
        bodies = [fakes.body("SmsReport").body for _ in range(count)]
        queue = self.fresh_queue(count, 0, flush_redis=True, bodies=bodies)
        worker = self.worker(queue, "long")
        run = LongRun(count)
        try:
            self.wait_first_progress(queue, count, worker)  # start: imports done, working
            began = time.monotonic()
            while self.remaining(queue) > 0:
                worker.check_alive()
                run.rss.append((time.monotonic() - began, worker.rss_mb()))
                time.sleep(every_s)
            run.rss.append((time.monotonic() - began, worker.rss_mb()))
        finally:
            worker.stop()
        _, settled = worker.settled_span()
        run.seconds, run.settled = run.rss[-1][0], settled
        return run


@dataclass
class LongRun:
    count: int
    rss: list[tuple[float, float]] = field(default_factory=list)
    seconds: float = 0.0
    settled: int = 0

    def summary(self) -> str:
        values = [r for _, r in self.rss]
        marks = ", ".join("%.0fs %.1f" % (t, r) for t, r in self.rss[:: max(1, len(values) // 12)])
        return ("Long run at 0 ms: %d receipts settled in %.0f s; worker RSS start %.1f MB, "
                "end %.1f MB, max %.1f MB over %d samples (%s)" % (
                    self.settled, self.seconds, values[0], values[-1], max(values),
                    len(values), marks))


class BenchWorker:
    """One `python -m consumer worker` process; its JSON log goes to a file."""

    def __init__(self, env: Env, queue: BenchQueue, name: str) -> None:
        self.config = env.config(queue, name)
        self.log_path = env.tmp / ("%s.log" % name)
        self._env_vars = {k: v for k, v in os.environ.items()
                          if not k.startswith("ALICOM_RECEIPTS_")}
        self._env_vars.update(ALIBABA_CLOUD_ACCESS_KEY_ID=env.sandbox.access_key_id,
                              ALIBABA_CLOUD_ACCESS_KEY_SECRET=env.sandbox.access_key_secret,
                              PYTHONPATH=str(REPO))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BenchWorker:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "consumer", "worker", "--queue", "SmsReport",
                 "--config", str(self.config)],
                cwd=REPO, env=self._env_vars, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError("worker exited %s:\n%s" % (self.proc.returncode, tail))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def context_switches(self) -> int:
        return context_switches(self.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def settled_span(self) -> tuple[float, int]:
        """(epoch time of the first `receipt_settled` line, how many say "handled")."""
        first: float | None = None
        handled = 0
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            for raw in log:
                if '"receipt_settled"' not in raw:
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    raise RuntimeError("not a JSON line in %s: %r"
                                       % (self.log_path, raw[:300])) from None
                if first is None:
                    first = dt.datetime.fromisoformat(line["timestamp"]).timestamp()
                handled += line.get("outcome") == "handled"
        if first is None:
            raise RuntimeError("no receipt_settled line in %s" % self.log_path)
        return first, handled

