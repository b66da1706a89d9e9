"""The Redis guard on a real Redis: every eviction policy but noeviction is refused in one
line unless allowed, the push server's need for AOF, a managed Redis that refuses CONFIG."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import structlog

from alicom_sandbox.redis_server import RedisServer, free_port
from consumer.clients.redis_guard import guard, inspect
from consumer.errors import ConfigError
from consumer.runtime.instruments import redis_memory_sampler
from consumer.runtime.metrics import MetricsSettings, setup_metrics
from tests.test_metrics import scrape

EVICTING = ("volatile-lru", "allkeys-lru", "volatile-lfu", "allkeys-lfu", "volatile-random",
            "allkeys-random", "volatile-ttl")


@pytest.fixture
def settable(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """The session's Redis, its policy, persistence and limit put back after the test."""
    saved = {name: redis_client.config_get(name)[name]
             for name in ("maxmemory-policy", "appendonly", "maxmemory")}
    yield redis_client
    for name, value in saved.items():
        redis_client.config_set(name, value)


@pytest.mark.parametrize("policy", EVICTING)
def test_an_evicting_policy_is_refused_in_one_line_saying_what_can_be_lost(
        settable: redis.Redis, policy: str) -> None:
    settable.config_set("maxmemory-policy", policy)
    with pytest.raises(ConfigError) as caught:
        guard(settable, "worker", allow_eviction=False)
    text = str(caught.value)
    assert "\n" not in text
    assert "maxmemory-policy is %s" % policy in text
    assert "applied twice" in text
    assert "set maxmemory-policy noeviction, or redis.allow_eviction = true" in text
    assert ("push stream" in text) == policy.startswith("allkeys")


@pytest.mark.parametrize("policy", EVICTING)
def test_an_evicting_policy_is_allowed_with_a_warning_when_the_setting_says_so(
        settable: redis.Redis, policy: str) -> None:
    settable.config_set("maxmemory-policy", policy)
    with structlog.testing.capture_logs() as logged:
        facts = guard(settable, "worker", allow_eviction=True)
    assert facts is not None and facts.policy == policy
    warnings = [e for e in logged if e["event"] == "redis_settings"]
    assert len(warnings) == 1 and policy in warnings[0]["problem"]


def test_noeviction_passes(settable: redis.Redis) -> None:
    settable.config_set("maxmemory-policy", "noeviction")
    with structlog.testing.capture_logs() as logged:
        facts = guard(settable, "worker", allow_eviction=False)
    assert facts is not None and facts.policy == "noeviction"
    assert not [e for e in logged if e["log_level"] == "warning"]


def test_the_push_server_refuses_a_redis_without_aof_unless_volatile_is_allowed(
        settable: redis.Redis) -> None:
    settable.config_set("appendonly", "no")
    with pytest.raises(ConfigError) as caught:
        guard(settable, "push-server", allow_eviction=False, needs_aof=True)
    text = str(caught.value)
    assert "\n" not in text
    assert "no AOF" in text and "Redis crash or restart loses it" in text
    assert "push.allow_volatile = true" in text
    assert guard(settable, "push-server", allow_eviction=False, needs_aof=True,
                 allow_volatile=True) is not None
    assert guard(settable, "push-worker", allow_eviction=False) is not None  # needs no AOF


def test_with_aof_the_push_server_starts(settable: redis.Redis) -> None:
    settable.config_set("appendonly", "yes")
    facts = guard(settable, "push-server", allow_eviction=False, needs_aof=True)
    assert facts is not None and facts.aof is True


def test_both_refusals_are_one_line(settable: redis.Redis) -> None:
    settable.config_set("maxmemory-policy", "allkeys-lru")
    settable.config_set("appendonly", "no")
    with pytest.raises(ConfigError) as caught:
        guard(settable, "push-server", allow_eviction=False, needs_aof=True)
    assert "\n" not in str(caught.value)
    assert "allkeys-lru" in str(caught.value) and "no AOF" in str(caught.value)


def test_memory_headroom_is_read_and_a_nearly_full_redis_is_warned_about(
        settable: redis.Redis) -> None:
    [facts] = inspect(settable)
    assert facts.used_memory_bytes and facts.used_memory_bytes > 0
    settable.config_set("maxmemory", str(int(facts.used_memory_bytes * 1.05)))
    [facts] = inspect(settable)
    assert facts.headroom_bytes is not None and facts.headroom_bytes < facts.maxmemory_bytes
    with structlog.testing.capture_logs() as logged:
        guard(settable, "worker", allow_eviction=False)
    assert any("nearly full" in e.get("problem", "") for e in logged)


@pytest.fixture
def managed(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """A user that may not run CONFIG, nor INFO: what some managed Redis services allow."""
    redis_client.execute_command("ACL", "SETUSER", "managed", "on", ">managed-pw", "~*", "&*",
                                 "+@all", "-config", "-info")
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, username="managed",
                         password="managed-pw")  # a test user of a test server
    yield client
    client.close()
    redis_client.execute_command("ACL", "DELUSER", "managed")


def test_where_config_is_refused_it_says_so_once_and_goes_on(managed: redis.Redis) -> None:
    with structlog.testing.capture_logs() as logged:
        facts = guard(managed, "push-server", allow_eviction=False, needs_aof=True)
    assert facts is not None and facts.config_refused and facts.policy is None
    warnings = [e["problem"] for e in logged if e["event"] == "redis_settings"]
    assert len(warnings) == 2  # the policy and the persistence, each once
    assert all("CONFIG is refused" in w for w in warnings)


def test_the_headroom_gauges_show_redis_memory_and_its_limit(
        settable: redis.Redis, tmp_path: Path) -> None:
    settable.config_set("maxmemory", str(512 * 1024 * 1024))
    address = "127.0.0.1:%d" % free_port()
    handle = setup_metrics(MetricsSettings(address=address, multiproc_dir=str(tmp_path / "m")),
                           "", None, role="push-server", interval_s=3600)
    assert handle is not None
    try:
        handle.add_sampler(redis_memory_sampler(handle, settable))
        handle.tick()
        samples = scrape(address)
    finally:
        handle.close()
    assert samples[("alicom_receipts_redis_maxmemory_bytes", frozenset())] == 512 * 1024 * 1024
    assert samples[("alicom_receipts_redis_used_memory_bytes", frozenset())] > 0
