"""Three worker hosts (network namespaces, a veth each) against Redis and the sandbox in the
root namespace. Mid-run one host is cut off from Redis for 30 s, then another from MNS: not
a receipt is lost, none is applied twice (no process crashes here, so the crash window is
empty), and every worker leaves on SIGTERM with status 0."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from alicom_sandbox.config_file import write_config
from alicom_sandbox.publisher import Publisher
from alicom_sandbox.redis_server import free_port
from alicom_sandbox.testing import SandboxHandle, running_sandbox
from tests.e2e.harness import REPO, wait_until, worker_env
from tests.e2e.netns import MNS_IP, REDIS_IP, Host, hosts
from tests.e2e.recording import read_records
from tests.e2e.test_worker_delivery import report_key

pytestmark = pytest.mark.slow

REDIS_CUT_S = 30.0
MNS_CUT_S = 15.0


@pytest.fixture
def net() -> Iterator[list[Host]]:
    with hosts(3) as made:
        yield made


@pytest.fixture
def redis_port(net: list[Host]) -> Iterator[int]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="alicom-netns-redis-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             REDIS_IP, "--save", "", "--appendonly", "no", "--dir", workdir,
                             "--protected-mode", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _pings(port), 10, "redis answering")
        yield port
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _worker(host: Host, sandbox: SandboxHandle, redis_port: int, tmp: Path,
            records: Path) -> subprocess.Popen[bytes]:
    port = sandbox.endpoint.rsplit(":", 1)[1]
    config = write_config(tmp / f"{host.name}.toml", {
        "alicom": {"preset": "custom", "mns_endpoint": f"http://{MNS_IP}:{port}",
                   "token_endpoint": f"{MNS_IP}:{port}", "token_protocol": "http",
                   "account_id": sandbox.account_id, "queues": ["SmsReport"]},
        "redis": {"url": f"redis://{REDIS_IP}:{redis_port}/0"},
        "poll": {"pollers": 2, "wait_seconds": 1, "socket_timeout_s": 8},
        "worker": {"shutdown_budget_s": 10, "handler_deadline_s": 10},
        "log": {"format": "json", "level": "info"},
    }, [{"use": "tests.e2e.recording:Recorder", "options": {"path": str(records)}}])
    log = (tmp / f"{host.name}.log").open("ab")
    return subprocess.Popen(
        [*host.exec_prefix(), sys.executable, "-m", "consumer", "worker", "--queue",
         "SmsReport", "--config", str(config)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env=worker_env(sandbox.access_key_id, sandbox.access_key_secret))


def _queue_empty(sandbox: SandboxHandle) -> bool:
    state = sandbox.queue_state(sandbox.queue_name("SmsReport"))
    return int(state["active"]) + int(state["inactive"]) + int(state["delayed"]) == 0


def test_three_hosts_lose_nothing_through_a_redis_and_an_mns_partition(
        net: list[Host], redis_port: int, tmp_path: Path) -> None:
    records = tmp_path / "applied.jsonl"
    h1, h2, h3 = net
    with running_sandbox(host="0.0.0.0") as sandbox:
        workers = [_worker(h, sandbox, redis_port, tmp_path, records) for h in (h1, h2, h3)]
        reports: list[Any] = []
        try:
            with Publisher(sandbox.endpoint, sandbox.access_key_id, sandbox.access_key_secret,
                           account_id=sandbox.account_id) as pub:
                publisher = threading.Thread(target=lambda: reports.append(pub.publish(
                    "SmsReport", 900, duplicate_rate=0.1, rate_per_s=30, seed=21)))
                publisher.start()
                # Every host is applying receipts before the cuts: a cut then meets work in
                # progress (and a host cut before it took any would leave it nothing to do).
                wait_until(lambda: records.exists() and len({
                    r["pid"] for r in read_records(str(records)) if r["what"] == "applied"}) == 3,
                    60, "each of the three hosts applying receipts")
                h1.cut(REDIS_IP)
                time.sleep(REDIS_CUT_S / 2)
                h2.cut(MNS_IP)
                time.sleep(REDIS_CUT_S / 2)
                h1.restore(REDIS_IP)
                time.sleep(MNS_CUT_S - REDIS_CUT_S / 2)
                h2.restore(MNS_IP)
                publisher.join(120)
            expected = {report_key(m.obj) for m in reports[0].originals}

            def applied() -> Counter[str]:
                return Counter(str(r["key"]) for r in read_records(str(records))
                               if r["what"] == "applied")

            wait_until(lambda: set(applied()) == expected and _queue_empty(sandbox), 180,
                       "every receipt applied and deleted")
            for proc in workers:
                assert proc.poll() is None, "a worker exited during the partitions"
                proc.send_signal(signal.SIGTERM)
            assert [proc.wait(30) for proc in workers] == [0, 0, 0]
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        counts = applied()
        assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
        by_host = Counter(int(r["pid"]) for r in read_records(str(records))
                          if r["what"] == "applied")
        assert len(by_host) == 3  # every host did its share
        for host in (h1, h2):  # the partitions did bite: each cut host failed polls
            log = (tmp_path / f"{host.name}.log").read_text(errors="replace")
            assert '"event":"poll_failed"' in log, host.name
