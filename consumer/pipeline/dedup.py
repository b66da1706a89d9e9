"""Idempotency records in Redis: each receipt is applied once, even across workers and crashes.

The state machine is AWS Lambda Powertools' (absent -> INPROGRESS -> COMPLETED) with its two
known bugs fixed:

* bug 1 (an INPROGRESS record without a lease outlives a crashed worker and is taken for a live
  claim, or an orphan is taken over by read-then-write): every INPROGRESS record carries a
  lease as a Redis expiry (PX), so an orphan simply disappears and the next claim finds the key
  absent. Nobody ever has to decide "this looks like an orphan".
* bug 2 (read, decide, overwrite unconditionally can clobber a record that changed in
  between): every transition is one Lua script that compares the owner token and writes in
  the same atomic step.

Storage, one plain string per key (measured by ``bench/dedup_memory.py``; a string is smaller
than a hash with the same content):

* INPROGRESS: ``"I:<owner>"`` with ``PX`` = the lease;
* COMPLETED: ``"1"`` with ``PX`` = the retention. ``"1"`` rather than a letter because Redis
  stores small integers as one shared object, which saves 16 bytes per record (unless a
  ``maxmemory-policy`` of the LRU/LFU family is set, where it costs the same as ``"C"``).

Measured on Redis 7.0 with a 55-byte key (``alicom:dedup:SmsReport:<20-char biz_id>:<phone>``)
and a 32-character owner, 100k records: COMPLETED 104 B by ``MEMORY USAGE`` and 149 B per
record of ``used_memory`` (expiry entry and keyspace tables included; a ``"C"`` value or a
hash would be 181 B); INPROGRESS 152 B / 213 B (a hash 229 B). So a week of one million
receipts a day costs about 1 GB; the key is most of it.

Each method takes a whole batch of keys and costs one EVALSHA round trip, whatever the batch
size (redis-py loads the script again on NOSCRIPT, e.g. after a Redis restart). All keys are
touched by one script, so this store needs a standalone Redis (or keys in one cluster slot).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from typing import Protocol

import redis
from redis.commands.core import Script

from consumer.clients.redis_client import RedisClient
from consumer.errors import TransientError
from consumer.settings import DedupSettings

__all__ = [
    "ClaimState",
    "Completion",
    "DedupSettings",
    "DedupStore",
    "RedisDedupStore",
    "transient_from_redis",
]

_SEVEN_DAYS_S = 7 * 24 * 3600.0


class ClaimState(enum.Enum):
    """The answer of ``claim`` for one key."""

    CLAIMED = 1  # the caller now owns the key (or already did): run the handler
    IN_PROGRESS = 2  # someone else holds a live lease: leave the message, it comes back
    COMPLETED = 3  # already applied: acknowledge the duplicate without running anything


class Completion(enum.Enum):
    """The answer of ``complete`` for one key."""

    LOST = 0       # another delivery holds a live claim now: this one must not ack as its own
    RECORDED = 1   # written now: INPROGRESS(owner) or absent -> COMPLETED
    # Already COMPLETED: a retried call whose first reply was lost (it was applied on the
    # server), or another delivery completed it after this claim's lease ended. Either way the
    # receipt is applied and recorded, so the message may be acknowledged.
    ALREADY_COMPLETED = 2

    @property
    def done(self) -> bool:
        """The record is COMPLETED: the message may be acknowledged."""
        return self is not Completion.LOST


class DedupStore(Protocol):
    """The four atomic transitions of an idempotency record, each over a batch of keys.

    Results are one per key, in the order of ``keys``. ``owner`` identifies one claim: use a
    fresh token per received batch (or per message), never one per process, or a redelivery
    of a message still being handled by this process would be claimed a second time.
    """

    def claim(self, keys: Sequence[str], owner: str, lease_s: float,
              legacy: Sequence[str] = ()) -> list[ClaimState]:
        """absent -> INPROGRESS(owner, lease). A key repeated within one call is CLAIMED once
        and IN_PROGRESS for its later occurrences, so a batch never runs a receipt twice.
        `legacy`: the names the keys' records had in an earlier version (upgrade fallback)."""
        ...

    def complete(self, keys: Sequence[str], owner: str, ttl_s: float) -> list[Completion]:
        """INPROGRESS(owner) or absent -> COMPLETED(ttl): RECORDED. A key found COMPLETED is
        left as it is: ALREADY_COMPLETED (e.g. this very call retried after a lost reply).
        LOST: another owner holds a live claim; the caller must then not treat the message
        as its own."""
        ...

    def release(self, keys: Sequence[str], owner: str) -> list[bool]:
        """INPROGRESS(owner) -> absent, after a handler failure, so the next delivery runs.
        False (and nothing changed) when the key is not ours."""
        ...

    def extend(self, keys: Sequence[str], owner: str, lease_s: float) -> list[bool]:
        """Renews the lease of our INPROGRESS keys to ``lease_s`` from now (slow handlers).
        False (and nothing changed) when the key is not ours."""
        ...

    def ping(self) -> None:
        """Returns once the store answers; TransientError otherwise."""
        ...


# Status codes the scripts return; Lua's false would truncate a returned array, so 1/0.
# ARGV[3], when given, is the number n of keys claimed: KEYS[n + i] is then the legacy name
# of KEYS[i] (its record from before keys were hashed), read when KEYS[i] is absent.
_CLAIM_SCRIPT = """
local mine = 'I:' .. ARGV[1]
local lease_ms = ARGV[2]
local n = tonumber(ARGV[3]) or #KEYS
local out, seen = {}, {}
for i = 1, n do
  local key = KEYS[i]
  if seen[key] then
    out[i] = 2  -- a repeat within this batch: its first occurrence holds the claim
  else
    seen[key] = true
    local value = redis.call('GET', key)
    if not value and KEYS[n + i] then
      value = redis.call('GET', KEYS[n + i])  -- completed ('1') or claimed by an old process
    end
    if not value then
      redis.call('SET', key, mine, 'PX', lease_ms)
      out[i] = 1
    elseif value == mine then
      redis.call('PEXPIRE', key, lease_ms)  -- an idempotent re-claim renews the lease
      out[i] = 1
    elseif value == '1' then
      out[i] = 3
    else
      out[i] = 2
    end
  end
end
return out
"""

# An absent key is completed too: its lease expired and nobody took it over, and our handler
# did apply the receipt, so recording that prevents a re-run on the next delivery.
_COMPLETE_SCRIPT = """
local mine = 'I:' .. ARGV[1]
local ttl_ms = ARGV[2]
local out, seen = {}, {}
for i, key in ipairs(KEYS) do
  if seen[key] ~= nil then
    out[i] = seen[key]
  else
    local value = redis.call('GET', key)
    if (not value) or value == mine then
      redis.call('SET', key, '1', 'PX', ttl_ms)
      out[i] = 1
    elseif value == '1' then
      out[i] = 2
    else
      out[i] = 0
    end
    seen[key] = out[i]
  end
end
return out
"""

_RELEASE_SCRIPT = """
local mine = 'I:' .. ARGV[1]
local out, seen = {}, {}
for i, key in ipairs(KEYS) do
  if seen[key] ~= nil then
    out[i] = seen[key]
  else
    if redis.call('GET', key) == mine then
      redis.call('DEL', key)
      out[i] = 1
    else
      out[i] = 0
    end
    seen[key] = out[i]
  end
end
return out
"""

_EXTEND_SCRIPT = """
local mine = 'I:' .. ARGV[1]
local lease_ms = ARGV[2]
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == mine then
    redis.call('PEXPIRE', key, lease_ms)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

_URL_CREDENTIALS = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def transient_from_redis(
    exc: redis.RedisError, operation: str, client: RedisClient
) -> TransientError:
    """A TransientError for a failed Redis call, with any credential scrubbed from the text.

    redis-py's messages name host and port only, but a server or proxy reply, or a future
    client version, could echo a URL or the password; this removes both before the text can
    reach a log line.
    """
    text = _URL_CREDENTIALS.sub(r"\1***@", str(exc))
    kwargs: dict[str, object] = client.get_connection_kwargs()
    for secret_name in ("password", "username"):
        secret = kwargs.get(secret_name)
        if isinstance(secret, str) and secret:
            text = text.replace(secret, "***")
    return TransientError(f"redis {operation} failed: {type(exc).__name__}: {text}")


def _milliseconds(seconds: float, what: str) -> int:
    """Whole milliseconds for PX/PEXPIRE, rounded up so a tiny positive value stays positive."""
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {seconds!r}")
    return max(1, math.ceil(seconds * 1000))


class RedisDedupStore:
    """``DedupStore`` on one Redis server; see the module docstring for the record format."""

    def __init__(self, client: RedisClient, settings: DedupSettings) -> None:
        self._client = client
        self._settings = settings
        self._claim = client.register_script(_CLAIM_SCRIPT)
        self._complete = client.register_script(_COMPLETE_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)
        self._extend = client.register_script(_EXTEND_SCRIPT)

    def redis_key(self, key: str) -> str:
        """The Redis key that holds the record of dedup key ``key``."""
        return self._settings.key_prefix + key

    def claim(self, keys: Sequence[str], owner: str, lease_s: float,
              legacy: Sequence[str] = ()) -> list[ClaimState]:
        """See `DedupStore.claim`. `legacy`, if given, has one name per key: the record the
        same receipt had before keys were hashed (`consumer.keys.KeyFunction.legacy`). While
        such a record lives (completed, or claimed by a process of the old version) the key
        answers as it would; nothing is ever written under a legacy name."""
        lease_ms = _milliseconds(lease_s, "lease_s")
        if not legacy:
            return [ClaimState(c) for c in self._run(self._claim, "claim", keys, owner, lease_ms)]
        if len(legacy) != len(keys):
            raise ValueError("legacy must name one record per key")
        extra = [self._settings.key_prefix + name for name in legacy]
        codes = self._run(self._claim, "claim", keys, owner, lease_ms, len(keys), extra=extra)
        return [ClaimState(code) for code in codes]

    def complete(self, keys: Sequence[str], owner: str, ttl_s: float) -> list[Completion]:
        codes = self._run(self._complete, "complete", keys, owner, _milliseconds(ttl_s, "ttl_s"))
        return [Completion(code) for code in codes]

    def ping(self) -> None:
        """Raises TransientError unless Redis answers (a poller waits for it after an outage)."""
        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "ping", self._client) from exc

    def release(self, keys: Sequence[str], owner: str) -> list[bool]:
        return [code == 1 for code in self._run(self._release, "release", keys, owner)]

    def extend(self, keys: Sequence[str], owner: str, lease_s: float) -> list[bool]:
        codes = self._run(self._extend, "extend", keys, owner, _milliseconds(lease_s, "lease_s"))
        return [code == 1 for code in codes]

    def _run(self, script: Script, operation: str, keys: Sequence[str], owner: str,
             *args: int, extra: Sequence[str] = ()) -> list[int]:
        """One script call over the whole batch; an empty batch costs no round trip.
        `extra`: Redis keys the script reads after the batch's own (legacy records)."""
        if not owner:
            raise ValueError("owner must be a non-empty token")
        if not keys:
            return []
        redis_keys = [self.redis_key(key) for key in keys] + list(extra)
        try:
            result = script(keys=redis_keys, args=[owner, *args])
        except redis.RedisError as exc:
            raise transient_from_redis(exc, operation, self._client) from exc
        return [int(code) for code in result]
