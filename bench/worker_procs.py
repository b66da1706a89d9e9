"""The worker benchmark's world: queues on the sandbox, Redis, and real worker processes.

`Env` (a `bench.common.World`) fills fresh queues with given bodies and watches them drain
through the sandbox's admin API; `BenchWorker` (a `bench.common.Worker`) adds its RSS,
context switches and outcome lines; `LongRun` samples the RSS of one worker draining many
receipts.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from alicom_sandbox.fakes import FakeReceipts
from alicom_sandbox.redis_server import RedisServer
from alicom_sandbox.redis_topologies import ClusterSetup
from bench.common import (
    REPO,
    BenchQueue,
    Worker,
    World,
    context_switches,
    cpu_seconds,
    parse_sets,
    rss_mb,
)
from consumer.reports.tracking import SendTracker, TrackedSend, epoch_of

NOOP_HANDLER = "bench.worker_noop:noop"
BULK_HANDLERS = ("number-hygiene", "send-tracker", "review-status")


@dataclass
class Env(World):
    """`World` with the bodies to publish and the `--set` overrides of every worker."""

    bodies: Sequence[str] = ()
    overrides: tuple[str, ...] = ()
    repo: Path = REPO  # the tree whose build the workers run (`--against`: another one)

    def redis_cpu(self) -> float:
        return cpu_seconds(self.redis.process.pid)

    def fresh_queue(self, count: int, latency_ms: int, *, flush_redis: bool,
                    bodies: Sequence[str] | None = None) -> BenchQueue:
        """A new queue holding `count` bodies (sent at 0 ms), then `latency_ms` switched on."""
        self.latency_ms = latency_ms
        queue = self.fill_queue(count, bodies=list((bodies or self.bodies)[:count]))
        if flush_redis:
            self.redis.client().flushdb()
        return queue

    def wait_first_progress(self, queue: BenchQueue, count: int, worker: BenchWorker) -> int:
        """Waits for the first delete; returns how many were left at that moment."""
        left = [count]

        def moved() -> bool:
            left[0] = self.remaining(queue)
            return left[0] < count
        self.wait_until(moved, [worker], every_s=0.01)
        return left[0]

    def wait_empty(self, queue: BenchQueue, worker: BenchWorker) -> float:
        """Waits until the queue is empty; returns the epoch time it was seen so."""
        return self.wait_until(lambda: self.remaining(queue) == 0, [worker], every_s=0.02)

    def worker(self, queue: BenchQueue, name: str, handlers: str = "noop") -> BenchWorker:
        """A started worker process on `queue`, with the no-op handler; `handlers="bulk"`
        adds the bulk sender's three (number-hygiene, send-tracker, review-status),
        `"bulk-sender"` the three as one handler (`bulk-sender`)."""
        more = bulk_entries(self.redis.url, handlers)
        config = self.config(queue, name, handler=NOOP_HANDLER,
                             sections=parse_sets(self.overrides), more=more)
        return BenchWorker(config, self.tmp / ("%s.log" % name), self.env(), repo=self.repo)

    def track_sends(self, count: int) -> int:
        """`track_sends` of the first `count` bodies; how many."""
        return track_sends(self.redis.client(), self.bodies[:count])

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


def track_sends(client: redis.Redis, bodies: Sequence[str]) -> int:
    """Records the bodies' sends with `SendTracker` (pending tasks, as the sending code would
    have: at the moment of sending, the receipt's send time), so that send-tracker settles
    real tasks; how many."""
    tracker = SendTracker(client)
    sends = []
    for body in bodies:
        doc = json.loads(base64.b64decode(body))
        sent = dt.datetime.strptime(doc["send_time"], "%Y-%m-%d %H:%M:%S")
        sends.append(TrackedSend(doc["biz_id"], doc["phone_number"], epoch_of(sent)))
    for start in range(0, len(sends), 1000):
        tracker.record_many(sends[start:start + 1000])
    return len(sends)


def bulk_entries(url: str, handlers: str = "bulk") -> list[dict[str, Any]]:
    """The `[[handlers]]` tables a handler set adds to the no-op handler, on the Redis at
    `url`: "bulk" the bulk sender's three handlers, "bulk-sender" the three as one
    (`consumer.handlers.bulk_sender`), "noop" none."""
    uses = {"noop": (), "bulk": BULK_HANDLERS, "bulk-sender": ("bulk-sender",)}[handlers]
    return [{"use": use, "options": {"url": url}} for use in uses]


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


class BenchWorker(Worker):
    """A `Worker` whose RSS, context switches and `receipt_settled` lines the bench reads."""

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def context_switches(self) -> int:
        return context_switches(self.pid)

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



class ClusterServer(RedisServer):
    """A `running_cluster` set-up where the bench expects one server: its URL is the
    cluster's, `client()` a cluster client (FLUSHDB reaches every primary)."""

    def __init__(self, setup: ClusterSetup) -> None:
        first = next(iter(setup.procs.processes.values()))
        super().__init__(setup.ports[0], first, str(setup.procs.workdir))
        self.setup = setup

    @property
    def url(self) -> str:
        return self.setup.url

    def client(self) -> redis.RedisCluster:  # type: ignore[override]
        return self.setup.client()


@dataclass
class ClusterEnv(Env):
    """`Env` on a Redis Cluster: Redis CPU is the sum of every node's."""

    def redis_cpu(self) -> float:
        assert isinstance(self.redis, ClusterServer)
        return sum(cpu_seconds(p.pid) for p in self.redis.setup.procs.processes.values())
