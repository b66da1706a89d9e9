"""End-to-end fixtures: the real worker process, the sandbox subprocess, a real Redis.

Each test gets its own account id, hence its own queue names, on one shared sandbox, and a
flushed Redis database, so tests never see each other's receipts.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from alicom_sandbox.config_file import write_config
from alicom_sandbox.publisher import Publisher
from alicom_sandbox.redis_server import RedisServer
from alicom_sandbox.testing import SandboxHandle, running_sandbox
from consumer.pipeline.deadletter_store import DeadLetterSettings, RedisDeadLetterStore
from tests.e2e.harness import WorkerProcess, wait_until, worker_env
from tests.e2e.recording import read_records


@pytest.fixture(scope="session")
def e2e_sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


#: The log events that say why a worker began to stop (a recycle, a signal).
STOP_EVENTS = frozenset({"recycling", "stopping", "second_signal_exit_now"})


@dataclass
class Stack:
    """One test's world: its queue on the sandbox, its Redis, its worker processes."""

    sandbox: SandboxHandle
    redis_server: RedisServer
    redis: redis.Redis
    tmp: Path
    account_id: str
    workers: list[WorkerProcess] = field(default_factory=list)
    #: Called when the test ends, whatever happened: other processes a test started.
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def records_path(self) -> Path:
        return self.tmp / "applied.jsonl"

    @property
    def started_path(self) -> Path:
        return self.tmp / "started.jsonl"

    def queue_name(self, message_type: str = "SmsReport") -> str:
        return "Alicom-Queue-%s-%s" % (self.account_id, message_type)

    def publisher(self) -> Publisher:
        return Publisher(self.sandbox.endpoint, self.sandbox.access_key_id,
                         self.sandbox.access_key_secret, account_id=self.account_id)

    def config(self, name: str = "worker.toml", *, recorder: Mapping[str, Any] | None = None,
               handlers: Sequence[Mapping[str, Any]] | None = None,
               **sections: Mapping[str, Any]) -> Path:
        """A worker config on this stack; `handlers` replaces the default Recorder."""
        endpoint = self.sandbox.endpoint
        base: dict[str, dict[str, Any]] = {
            "alicom": {"preset": "custom", "mns_endpoint": endpoint,
                       "token_endpoint": endpoint.removeprefix("http://"),
                       "token_protocol": "http", "account_id": self.account_id,
                       "queues": ["SmsReport"]},
            "redis": {"url": self.redis_server.url},
            "poll": {"pollers": 2, "wait_seconds": 1, "socket_timeout_s": 8},
            "ack": {"visibility_timeout_s": 4, "extend_before_s": 2, "retry_base_s": 1},
            "worker": {"shutdown_budget_s": 10, "handler_deadline_s": 10},
            "log": {"format": "json", "level": "info"},
        }
        for section, values in sections.items():
            base.setdefault(section, {}).update(values)
        if handlers is None:
            options = {"path": str(self.records_path), **(recorder or {})}
            handlers = [{"use": "tests.e2e.recording:Recorder", "options": options}]
        return write_config(self.tmp / name, base, handlers)

    def worker(self, config: Path, queue: str = "SmsReport") -> WorkerProcess:
        env = worker_env(self.sandbox.access_key_id, self.sandbox.access_key_secret)
        proc = WorkerProcess(config, queue, env, self.tmp / ("worker-%d.log" % len(self.workers)))
        self.workers.append(proc)
        return proc.start()

    def applied(self) -> Counter[str]:
        """How often each dedup key was applied by a handler, across all workers."""
        return Counter(str(r["key"]) for r in read_records(str(self.records_path))
                       if r["what"] == "applied")

    def records(self) -> list[dict[str, Any]]:
        return [r for r in read_records(str(self.records_path)) if r["what"] == "applied"]

    def started(self) -> list[dict[str, object]]:
        return [r for r in read_records(str(self.started_path)) if r["what"] == "started"]

    def dead_letters(self) -> RedisDeadLetterStore:
        return RedisDeadLetterStore(self.redis, DeadLetterSettings())

    def log_events(self, event: str) -> list[dict[str, Any]]:
        return [line for w in self.workers for line in w.log_lines() if line.get("event") == event]

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        """`wait_until`, failing at once (with the log) if a worker died on its own."""
        def check() -> bool:
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None and not w.expected_exit:
                    # Why it stopped comes first: the tail alone may be all drain lines.
                    why = [line for line in w.log_lines() if line.get("event") in STOP_EVENTS]
                    tail = w.log_path.read_text(errors="replace")[-3000:]
                    raise AssertionError("worker exited %s: %s\n%s" % (
                        w.proc.returncode, why or "no stop event logged", tail))
            return predicate()
        wait_until(check, timeout_s, what)

    def queue_counts(self, message_type: str = "SmsReport") -> tuple[int, int]:
        """(visible, in flight) messages of the queue, through the official SDK."""
        attrs = self.sandbox.account().get_queue(self.queue_name(message_type)).get_attributes()
        return int(attrs.active_messages), int(attrs.inactive_messages)

    def queue_is_empty(self, message_type: str = "SmsReport") -> bool:
        visible, in_flight = self.queue_counts(message_type)
        return visible == 0 and in_flight == 0


@contextmanager
def open_stack(sandbox: SandboxHandle, server: RedisServer, client: redis.Redis,
               tmp_path: Path) -> Iterator[Stack]:
    """A fresh account on the sandbox with its queues, on this Redis; workers killed after."""
    account_id = str(random.randrange(10**15, 10**16))
    s = Stack(sandbox, server, client, tmp_path, account_id)
    for message_type in ("SmsReport", "SmsUp"):
        # A short visibility makes re-deliveries (after a crash, a retry) quick to observe.
        sandbox.create_queue(s.queue_name(message_type), visibility_timeout_s=4)
    try:
        yield s
    finally:
        for w in s.workers:
            w.kill()
        for cleanup in s.cleanups:
            cleanup()
        sandbox.reset()


@pytest.fixture
def stack(e2e_sandbox: SandboxHandle, redis_server: RedisServer, redis_client: redis.Redis,
          tmp_path: Path) -> Iterator[Stack]:
    with open_stack(e2e_sandbox, redis_server, redis_client, tmp_path) as s:
        yield s
