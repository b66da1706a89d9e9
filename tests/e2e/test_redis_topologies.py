"""The worker, push, reconcile, dead letters and statistics on a real Redis Cluster (3
masters with a replica each) and a real Sentinel set-up (primary, replica, 3 sentinels),
started by the tests; a failover in the middle of a run (CLUSTER FAILOVER on a replica;
SENTINEL FAILOVER) loses no receipt, the worker goes on without a restart, and with
`dedup.wait_replicas = 1` no receipt is applied twice."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from alicom_sandbox.redis_server import free_port
from alicom_sandbox.redis_topologies import running_cluster, running_sentinel
from consumer.clients.redis_client import connect
from consumer.pipeline.deadletter_store import RedisDeadLetterStore
from consumer.settings import DeadLetterSettings
from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, wait_until, worker_env
from tests.e2e.test_worker_delivery import report_key

pytestmark = pytest.mark.slow


@dataclass
class Topology:
    name: str
    url: str
    failover: Callable[[], int]
    masters: Callable[[], list[int]]

    def flush(self) -> None:
        for port in self.masters():
            redis.Redis(port=port).flushall()

    def stats_total(self, field: str) -> int:
        """`field` summed over every statistics bucket on every master."""
        total = 0
        for port in self.masters():
            node = redis.Redis(port=port)
            for key in node.scan_iter(match="{alicom:stats}:h:*"):
                total += int(node.hget(key, field) or 0)
        return total


@pytest.fixture(scope="module", params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    if request.param == "cluster":
        with running_cluster() as cluster:
            yield Topology("cluster", cluster.url, cluster.failover, cluster.masters)
    else:
        with running_sentinel() as sentinel:
            yield Topology("sentinel", sentinel.url, sentinel.failover,
                           lambda: [sentinel.current_primary()])


def _config(stack: Stack, topology: Topology, name: str = "worker.toml",
            **sections: Any) -> Any:
    recorder = {"use": "tests.e2e.recording:Recorder",
                "options": {"path": str(stack.records_path)}}
    stats = {"use": "delivery-stats",
             "options": {"url": topology.url, "wait_replicas": 1, "wait_timeout_s": 2}}
    return stack.config(name, handlers=[recorder, stats], redis={"url": topology.url},
                        dedup={"wait_replicas": 1, "wait_timeout_s": 2}, **sections)


def test_the_worker_loses_nothing_and_applies_nothing_twice_across_a_failover(
        stack: Stack, topology: Topology) -> None:
    topology.flush()
    worker = stack.worker(_config(stack, topology))
    reports: list[Any] = []
    with stack.publisher() as pub:
        def publish() -> None:
            reports.append(pub.publish("SmsReport", 400, duplicate_rate=0.1, rate_per_s=80,
                                       seed=11))
        publisher = threading.Thread(target=publish)
        publisher.start()
        stack.wait(lambda: len(stack.applied()) >= 80, "a fifth applied before the failover")
        with _sending_bad_bodies(stack) as bad:  # dead letters written in the failover's window
            promoted = topology.failover()
        publisher.join(60)
    report = reports[0]
    expected = {report_key(m.obj) for m in report.originals}
    stack.wait(lambda: len(stack.applied()) == len(expected), "every receipt applied",
               timeout_s=120)
    stack.wait(stack.queue_is_empty, "every message deleted", timeout_s=60)
    assert worker.proc is not None and worker.proc.poll() is None  # no restart needed
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    applied = stack.applied()
    assert set(applied) == expected
    assert max(applied.values()) == 1, [k for k, n in applied.items() if n > 1]
    assert promoted in topology.masters()
    # Dead letters and statistics are WAITed for like the dedup records: none the old
    # primary took in the failover's window is lost, none is counted twice.
    dead = RedisDeadLetterStore(connect(topology.url, socket_timeout_s=5), DeadLetterSettings())
    assert dead.count() == len(bad)
    assert sorted(d.message_id for d in dead.list(limit=len(bad) + 10)) == sorted(bad)
    outcomes = topology.stats_total("delivered") + topology.stats_total("failed")
    assert outcomes == len(expected)


def test_a_failover_while_the_worker_is_idle_does_not_stop_it(
        stack: Stack, topology: Topology) -> None:
    """Nothing in flight at the failover, so no claim is extended (a call without WAIT that
    would meet MOVED and correct the client's slot map): the next claims, WAITed for, must
    reach the new primary all the same. (They once met the demoted node's MOVED and its
    refusal of WAIT forever: the worker applied nothing more.)"""
    topology.flush()
    stack.worker(_config(stack, topology))
    with stack.publisher() as pub:
        first = pub.publish("SmsReport", 40, seed=21)
        stack.wait(lambda: len(stack.applied()) == 40, "the first receipts applied")
        stack.wait(stack.queue_is_empty, "the first messages deleted")
        time.sleep(5)  # past every claim's lease: nothing left to extend
        topology.failover()
        second = pub.publish("SmsReport", 40, seed=22)
    expected = {report_key(m.obj) for r in (first, second) for m in r.originals}
    stack.wait(lambda: len(stack.applied()) == len(expected), "every receipt applied")
    assert max(stack.applied().values()) == 1


@contextmanager
def _sending_bad_bodies(stack: Stack) -> Iterator[list[str]]:
    """Publishes one malformed body every 0.1 s while the block runs (and one more after
    it); yields the list of their MessageIds, filled as they go out."""
    sent: list[str] = []
    done = threading.Event()

    def send() -> None:
        with stack.publisher() as pub:
            for seed in itertools.count(100):
                report = pub.publish("SmsReport", 1, malformed=1, seed=seed)
                sent.extend(m.message_id for m in report.malformed)
                if done.wait(0.1):
                    return

    sender = threading.Thread(target=send)
    sender.start()
    try:
        yield sent
    finally:
        done.set()
        sender.join(30)


def test_push_and_reconcile_work_on_it(stack: Stack, topology: Topology) -> None:
    topology.flush()
    port = free_port()
    config = _config(stack, topology, "push.toml",
                     push={"listen": f"127.0.0.1:{port}", "reclaim_idle_s": 20, "block_s": 0.5,
                           "allow_volatile": True},
                     worker={"handler_deadline_s": 2, "shutdown_budget_s": 10})
    env = worker_env(stack.sandbox.access_key_id, stack.sandbox.access_key_secret)
    procs = [subprocess.Popen([sys.executable, "-m", "consumer", command, "--config",
                               str(config)], cwd=REPO, env=env, stderr=subprocess.STDOUT,
                              stdout=(stack.tmp / f"{command}.log").open("wb"))
             for command in ("push-server", "push-worker")]
    try:
        reports = [{"phone_number": "1381111%04d" % i, "send_time": "2017-01-01 00:00:00",
                    "report_time": "2017-01-01 00:00:01", "success": True,
                    "err_code": "DELIVERED", "err_msg": "ok", "sms_size": "1",
                    "biz_id": "910^%d" % i, "out_id": ""} for i in range(5)]
        body = json.dumps(reports).encode()
        url = f"http://127.0.0.1:{port}/alicom/SmsReport"

        def pushed() -> bool:
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=body),
                                            timeout=5) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_until(lambda: pushed() or _dead(procs, stack), 60, "the push server taking it")
        # The platform pushes again (again while answered 503): still applied once.
        wait_until(lambda: pushed() or _dead(procs, stack), 60, "the push taken again")
        stack.wait(lambda: len(stack.applied()) == 5, "the pushed receipts applied")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        assert max(stack.applied().values()) == 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    _reconcile_on(stack, topology)


def _dead(procs: list[subprocess.Popen[bytes]], stack: Stack) -> bool:
    for proc, name in zip(procs, ("push-server", "push-worker"), strict=True):
        if proc.poll() is not None:
            log = (stack.tmp / f"{name}.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{name} exited {proc.returncode}:\n{log}")
    return False


def _reconcile_on(stack: Stack, topology: Topology) -> None:
    """Two tracked sends without a receipt: reconcile asks QuerySendDetails (the sandbox
    knows neither), keeps its lease on the topology and reports them."""

    from consumer.reports.tracking import SendTracker, TrackedSend  # noqa: PLC0415

    tracker = SendTracker(connect(topology.url, socket_timeout_s=5))
    tracker.record_many(TrackedSend("920^%d" % i, "1390000%04d" % i, time.time() - 60)
                        for i in range(2))
    config = _config(stack, topology, "reconcile.toml")
    done = subprocess.run([sys.executable, "-m", "consumer", "reconcile", "--config",
                           str(config), "--grace", "0s"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False,
                          env=worker_env(stack.sandbox.access_key_id,
                                         stack.sandbox.access_key_secret))
    assert "2 pending past the grace period" in done.stdout, done.stdout + done.stderr[-2000:]
