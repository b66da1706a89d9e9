"""/healthz and /readyz on the metrics address, for container probes: the worker is alive
(healthy) but not ready through a Redis outage, and unhealthy while its receive loop is
wedged (every receive hangs), without any service manager around it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from alicom_sandbox.redis_server import free_port
from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, wait_until, worker_env

pytestmark = pytest.mark.slow  # real worker / push processes

STALL_S = 3.0
PUSH_STALL_S = 12.0


def probe(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, "not answering"


def health_config(stack: Stack, **poll: object) -> tuple[str, Path]:
    address = f"127.0.0.1:{free_port()}"
    config = stack.config(metrics={"address": address,
                                   "multiproc_dir": str(stack.tmp / "metrics")},
                          service={"watchdog_stall_s": STALL_S},
                          poll={"pollers": 2, "wait_seconds": 1, **poll},
                          worker={"shutdown_budget_s": 3})
    return address, config


def test_healthy_but_not_ready_through_a_redis_outage(stack: Stack) -> None:
    address, config = health_config(stack)
    worker = stack.worker(config)
    stack.wait(lambda: probe(address, "/readyz")[0] == 200, "ready once the first poll went")
    assert probe(address, "/healthz") == (200, "alive\n")

    stack.redis_server.stop()
    try:
        stack.wait(lambda: probe(address, "/readyz")[0] == 503, "not ready without Redis")
        _, body = probe(address, "/readyz")
        assert body.startswith("waiting: Redis"), body
        # Long past the stall allowance: the loop turns through the outage, so it lives.
        time.sleep(2 * STALL_S)
        assert probe(address, "/healthz") == (200, "alive\n")
        assert probe(address, "/readyz")[0] == 503
    finally:
        stack.redis_server.start_again()
    stack.wait(lambda: probe(address, "/readyz")[0] == 200, "ready again once Redis is back")
    stack.publisher().publish("SmsReport", 5, seed=3)
    stack.wait(lambda: sum(stack.applied().values()) == 5, "5 receipts applied")
    worker.signal(15)
    assert worker.wait(30) == 0


def test_unhealthy_while_the_receive_loop_is_wedged(stack: Stack) -> None:
    address, config = health_config(stack, socket_timeout_s=60)
    worker = stack.worker(config)
    stack.wait(lambda: probe(address, "/healthz") == (200, "alive\n"), "alive while receiving")

    stack.sandbox.set_faults(hang_rate=1.0)
    stack.wait(lambda: stack.sandbox.state()["injected"]["hang"] >= 2, "both pollers hung")
    stack.wait(lambda: probe(address, "/healthz")[0] == 503, "unhealthy once wedged",
               timeout_s=30)
    assert probe(address, "/healthz")[1].startswith("wedged: no poll turn finished")
    assert worker.proc is not None and worker.proc.poll() is None  # alive, only not moving

    stack.sandbox.set_faults(hang_rate=0.0)
    worker.signal(15)
    assert worker.wait(30) == 0


def test_the_push_server_is_alive_and_ready_only_while_redis_answers(stack: Stack) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = stack.config("push.toml", push={"listen": f"127.0.0.1:{free_port()}",
                                             "allow_volatile": True},
                          metrics={"address": address,
                                   "multiproc_dir": str(stack.tmp / "push-metrics")})
    _alive_but_not_ready_through_an_outage(stack, spawn(stack, "push-server", config),
                                           address, stall_s=0)


def test_the_push_worker_is_alive_and_ready_only_while_redis_answers(stack: Stack) -> None:
    address = f"127.0.0.1:{free_port()}"
    # Its loop backs off at most 10 s in an outage: the allowance must exceed that.
    config = stack.config("push.toml", push={"block_s": 0.5},
                          service={"watchdog_stall_s": PUSH_STALL_S},
                          metrics={"address": address,
                                   "multiproc_dir": str(stack.tmp / "push-metrics")})
    # Past the allowance in the outage: its loop keeps turning, so it stays alive.
    _alive_but_not_ready_through_an_outage(stack, spawn(stack, "push-worker", config),
                                           address, stall_s=PUSH_STALL_S + 1)


def spawn(stack: Stack, command: str, config: Path) -> subprocess.Popen[bytes]:
    """`alicom-receipts <command>` on `config`, its output in `<command>.log`; killed when the
    test ends if it is still running."""
    log = open(stack.tmp / ("%s.log" % command), "ab")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen([sys.executable, "-m", "consumer", command, "--config",
                             str(config)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=worker_env("unused", "unused"))
    log.close()

    def kill() -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    stack.cleanups.append(kill)
    return proc


def _alive_but_not_ready_through_an_outage(stack: Stack, proc: subprocess.Popen[bytes],
                                           address: str, stall_s: float) -> None:
    """Ready while Redis answers; through an outage (and `stall_s` into it) alive but not
    ready, "waiting: Redis"; ready again after; exits 0 on SIGTERM."""
    wait_until(lambda: probe(address, "/readyz") == (200, "ready\n"), 60, "ready")
    assert probe(address, "/healthz") == (200, "alive\n")
    stack.redis_server.stop()
    try:
        wait_until(lambda: probe(address, "/readyz")[0] == 503, 30, "not ready")
        assert probe(address, "/readyz")[1].startswith("waiting: Redis")
        time.sleep(stall_s)
        assert probe(address, "/healthz") == (200, "alive\n")
    finally:
        stack.redis_server.start_again()
    wait_until(lambda: probe(address, "/readyz")[0] == 200, 30, "ready again")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
