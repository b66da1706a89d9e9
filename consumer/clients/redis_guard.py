"""What the guarantees need from Redis, checked at start-up and by `check`.

Every dedup record carries an expiry, so under any `maxmemory-policy` but `noeviction` Redis
deletes them when memory runs short, and a receipt delivered again is applied twice (the
`volatile-*` policies pick exactly those keys); `allkeys-*` may also delete the push stream,
the dead letters and the send records. With `noeviction` a full Redis refuses writes
instead: receipts wait (MNS keeps them, the push server answers 503), nothing is lost.

The push server answers 200 once a body is in Redis: that holds across a Redis crash or
restart only with the append-only file (AOF); RDB snapshots lose what came since the last
one, no persistence loses everything.

`inspect` reads the policy, memory and persistence (CONFIG GET, else INFO); `findings` judges
them: a refusal unless allowed (`redis.allow_eviction`, `push.allow_volatile`), or a warning.
Managed Redis often refuses CONFIG and sometimes hides INFO's fields: that is reported once,
as a warning, and the process goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import structlog
from redis.cluster import RedisCluster

from consumer.clients.redis_client import RedisClient
from consumer.errors import ConfigError

log = structlog.get_logger("alicom_receipts.redis_guard")

#: Used memory above this share of maxmemory is warned about (with noeviction, writes then
#: start failing: receipts wait, none is lost).
HEADROOM_WARN_SHARE = 0.9


@dataclass(frozen=True)
class RedisFacts:
    """What one Redis server says about itself; None where it would not say."""

    policy: str | None
    maxmemory_bytes: int | None
    used_memory_bytes: int | None
    aof: bool | None
    rdb: bool | None
    config_refused: bool

    @property
    def headroom_bytes(self) -> int | None:
        """maxmemory - used memory; None without a limit (0) or when unknown."""
        if not self.maxmemory_bytes or self.used_memory_bytes is None:
            return None
        return self.maxmemory_bytes - self.used_memory_bytes


@dataclass(frozen=True)
class Finding:
    """One judgement: `refuse` stops the process; otherwise a warning. `allowed`: it would
    refuse, but a setting accepts the risk (still warned about at start-up)."""

    refuse: bool
    text: str
    allowed: bool = False


def _nodes(client: RedisClient) -> list[redis.Redis]:
    if isinstance(client, RedisCluster):
        primaries: list[Any] = client.get_primaries()  # type: ignore[no-untyped-call]
        return [client.get_redis_connection(node) for node in primaries]
    return [client]


def inspect(client: RedisClient) -> list[RedisFacts]:
    """The facts of the server (of every primary, for a cluster). Raises redis errors when
    Redis cannot be reached at all."""
    return [_inspect_one(node) for node in _nodes(client)]


def _inspect_one(node: redis.Redis) -> RedisFacts:
    config: dict[str, Any] = {}
    refused = False
    try:
        for name in ("maxmemory-policy", "maxmemory", "appendonly", "save"):
            config.update({str(k): v for k, v in node.config_get(name).items()})
    except redis.ResponseError:  # unknown or renamed command, NOPERM: managed Redis
        refused = True
    info = _info(node)
    policy = config.get("maxmemory-policy") or info.get("maxmemory_policy")
    maxmemory = _int(config.get("maxmemory", info.get("maxmemory")))
    aof: bool | None = None
    if "appendonly" in config:
        aof = config["appendonly"] == "yes"
    elif "aof_enabled" in info:
        aof = str(info["aof_enabled"]) == "1"
    rdb = (bool(str(config["save"]).strip()) if "save" in config else None)
    return RedisFacts(str(policy) if policy else None, maxmemory,
                      _int(info.get("used_memory")), aof, rdb, refused)


def _info(node: redis.Redis) -> dict[str, Any]:
    return _sections(node, ("memory", "persistence"))


def _sections(node: redis.Redis, sections: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section in sections:
        try:
            out.update(node.info(section))
        except redis.ResponseError:
            continue
    return out


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def memory(client: RedisClient) -> tuple[int | None, int | None]:
    """(used memory, maxmemory) in bytes from INFO memory (of the first primary); maxmemory 0
    means no limit. For the headroom gauges: one cheap call, no CONFIG."""
    info = _sections(_nodes(client)[0], ("memory",))
    return _int(info.get("used_memory")), _int(info.get("maxmemory"))


def findings(facts: list[RedisFacts], *, allow_eviction: bool, needs_aof: bool = False,
             allow_volatile: bool = False) -> list[Finding]:
    """What to say about these facts, for a process that needs AOF (`needs_aof`: the push
    server) or not; one finding per kind, the first server's that has it."""
    out: list[Finding] = []
    for f in facts:
        out.extend(_judge(f, allow_eviction, needs_aof, allow_volatile))
    seen: set[str] = set()
    unique = []
    for finding in out:
        head = finding.text.split(":")[0]
        if head not in seen:
            seen.add(head)
            unique.append(finding)
    return unique


def _judge(f: RedisFacts, allow_eviction: bool, needs_aof: bool,
           allow_volatile: bool) -> list[Finding]:
    out = []
    if f.policy is None:
        out.append(Finding(False, "Redis maxmemory-policy unknown: %s; the guarantees need "
                           "noeviction: check it in your provider's console"
                           % _why_unknown(f)))
    elif f.policy != "noeviction":
        out.append(Finding(not allow_eviction, allowed=allow_eviction, text="Redis "
                           "maxmemory-policy is %s: under memory "
                           "pressure Redis deletes dedup records (receipts are then applied "
                           "twice)%s; set maxmemory-policy noeviction%s"
                           % (f.policy, _what_else(f.policy),
                              "" if allow_eviction else
                              ", or redis.allow_eviction = true to accept that")))
    if needs_aof and f.aof is None:
        out.append(Finding(False, "Redis persistence unknown: %s; a push answered 200 "
                           "survives a Redis restart only with AOF (appendonly yes)"
                           % _why_unknown(f)))
    elif needs_aof and not f.aof:
        out.append(Finding(not allow_volatile, allowed=allow_volatile, text="Redis has no AOF "
                           "(appendonly no, %s): a push "
                           "is answered 200 once it is in Redis's memory, and a Redis crash or "
                           "restart loses it (the platform does not push again); set "
                           "appendonly yes (appendfsync everysec)%s"
                           % ("RDB snapshots only" if f.rdb else "no persistence",
                              "" if allow_volatile else
                              ", or push.allow_volatile = true to accept that")))
    headroom = f.headroom_bytes
    if headroom is not None and f.maxmemory_bytes and (
            headroom < (1 - HEADROOM_WARN_SHARE) * f.maxmemory_bytes):
        out.append(Finding(False, "Redis memory nearly full: %d of %d bytes used; with "
                           "noeviction writes fail when it is full (receipts wait, none is "
                           "lost): raise maxmemory" % (f.used_memory_bytes or 0,
                                                       f.maxmemory_bytes)))
    return out


def _why_unknown(f: RedisFacts) -> str:
    return ("CONFIG is refused (as managed Redis does) and INFO does not say"
            if f.config_refused else "Redis does not say")


def _what_else(policy: str) -> str:
    if policy.startswith("allkeys"):
        return ", the push stream (pushed receipts lost) and dead letters"
    return ""


def guard(client: RedisClient, role: str, *, allow_eviction: bool, needs_aof: bool = False,
          allow_volatile: bool = False) -> RedisFacts | None:
    """The start-up check of a worker, push server or push worker: logs each warning once,
    raises ConfigError (one line: what can be lost and how to fix or allow it) for a refusal.
    Returns the first server's facts; None when Redis could not be asked (the process goes
    on: it waits for Redis like for any outage)."""
    try:
        facts = inspect(client)
    except (redis.RedisError, OSError) as exc:
        log.warning("redis_guard_skipped", role=role, error=type(exc).__name__,
                    reason="Redis unreachable at start; its settings were not checked")
        return None
    found = findings(facts, allow_eviction=allow_eviction, needs_aof=needs_aof,
                     allow_volatile=allow_volatile)
    for finding in found:
        if not finding.refuse:
            log.warning("redis_settings", role=role, problem=finding.text)
    refusals = [f.text for f in found if f.refuse]
    if refusals:
        raise ConfigError("; ".join(refusals))
    f = facts[0]
    log.info("redis_settings_ok", role=role, maxmemory_policy=f.policy, aof=f.aof,
             maxmemory_bytes=f.maxmemory_bytes, used_memory_bytes=f.used_memory_bytes)
    return f
