"""The Redis guard as the commands apply it at start-up, and as `check` reports it: an evicting
policy or (for the push server) a Redis without AOF stops the process with one line saying
what could be lost, unless the setting allows it. A Redis of their own: its policy changes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from alicom_sandbox.config_file import write_config
from alicom_sandbox.redis_server import RedisServer, free_port, running_redis
from tests.e2e.harness import REPO, worker_env


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    c = own_redis.client()
    yield c
    c.config_set("maxmemory-policy", "noeviction")
    c.config_set("appendonly", "no")
    c.close()


def config(tmp_path: Path, url: str, **sections: dict[str, object]) -> Path:
    base: dict[str, dict[str, object]] = {
        "alicom": {"preset": "sandbox", "queues": ["SmsReport"]},
        "redis": {"url": url},
        "log": {"format": "json"},
        "push": {"listen": "127.0.0.1:%d" % free_port()},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return write_config(tmp_path / "guard.toml", base, [{"use": "log"}])


def start(command: str, cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Runs the command until it exits by itself (a refusal), or for 5 s (it started)."""
    env = worker_env("LTAIsandboxAccessKey", "sandbox-secret-not-for-production")
    try:
        return subprocess.run([sys.executable, "-m", "consumer", command, "--config", str(cfg),
                               *extra], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=5, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return subprocess.CompletedProcess(exc.cmd, -1, out, err)


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start printed on stderr ("alicom-receipts <command>: ...")."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    refused = [line for line in lines if line.startswith("alicom-receipts ")]
    assert len(refused) == 1, lines
    assert "Traceback" not in done.stdout + done.stderr
    return refused[0]


@pytest.mark.parametrize(("command", "extra"), [("worker", ("--queue", "SmsReport")),
                                                ("push-worker", ()), ("push-server", ())])
def test_an_evicting_policy_stops_every_command_at_start_in_one_line(
        client: redis.Redis, own_redis: RedisServer, tmp_path: Path, command: str,
        extra: tuple[str, ...]) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.config_set("appendonly", "yes")
    line = refusal(start(command, config(tmp_path, own_redis.url), *extra))
    assert "maxmemory-policy is allkeys-lru" in line and "applied twice" in line
    assert "redis.allow_eviction = true" in line


def test_allow_eviction_lets_the_worker_start_with_a_warning(
        client: redis.Redis, own_redis: RedisServer, tmp_path: Path) -> None:
    client.config_set("maxmemory-policy", "volatile-lru")
    done = start("worker", config(tmp_path, own_redis.url, redis={"allow_eviction": True}),
                 "--queue", "SmsReport")
    assert done.returncode == -1, done.stdout + done.stderr  # still running after 5 s
    assert '"redis_settings"' in done.stdout + done.stderr
    assert "volatile-lru" in done.stdout + done.stderr


def test_the_push_server_refuses_a_redis_without_aof_unless_allowed(
        client: redis.Redis, own_redis: RedisServer, tmp_path: Path) -> None:
    client.config_set("appendonly", "no")
    line = refusal(start("push-server", config(tmp_path, own_redis.url)))
    assert "no AOF" in line and "push.allow_volatile = true" in line
    allowed = start("push-server", config(tmp_path, own_redis.url,
                                          push={"allow_volatile": True}))
    assert allowed.returncode == -1, allowed.stdout + allowed.stderr  # serving
    client.config_set("appendonly", "yes")
    assert start("push-server", config(tmp_path, own_redis.url)).returncode == -1


def test_check_reports_the_eviction_policy_and_the_missing_aof(
        client: redis.Redis, own_redis: RedisServer, tmp_path: Path) -> None:
    client.config_set("maxmemory-policy", "allkeys-lfu")
    client.config_set("appendonly", "no")
    done = subprocess.run([sys.executable, "-m", "consumer", "check", "--config",
                           str(config(tmp_path, own_redis.url))], cwd=REPO, timeout=120,
                          env=worker_env("LTAIsandboxAccessKey", "x"), capture_output=True,
                          text=True, check=False)
    lines = done.stdout.splitlines()
    assert done.returncode == 1
    assert any(line.startswith("redis: Redis maxmemory-policy is allkeys-lfu")
               and "-> set maxmemory-policy noeviction" in line for line in lines), lines
    assert any(line.startswith("redis (push server): Redis has no AOF")
               and "-> set appendonly yes" in line for line in lines), lines
