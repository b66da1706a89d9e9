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
  Every handler finished: the record is the same whatever their number.
* PARTIAL: ``"P:<tags>"`` with ``PX`` = the retention, when some handlers finished and others
  failed (a retry, a dead letter); `<tags>` are the finished handlers' 6-character
  `handler_tag`s. A claim over it becomes ``"I:<owner>@<deadline ms>/<tags>"`` keeping that
  TTL (the lease is the deadline), so no finished handler is forgotten when a claim dies.
  The scripts are in ``consumer.pipeline.dedup_scripts``.
* RELEASED: ``"P:"`` (no tags) with ``PX`` = `RELEASED_MARK_S`, when a delivery ended with an
  outcome and nothing finished (a retry, a hand back). It acts as absent; a claim over it
  reports `Claim.settled_before`, which tells a re-delivery after an outcome from one after
  a crash (poison isolation, consumer.pipeline.poison).

Records written by the previous version (``"1"``, ``"I:<owner>"``) keep their meaning. A
PARTIAL record with two of three tags: 136 B / 197 B; claimed again: 184 B / 245 B.

Measured on Redis 7.0 with a 55-byte key (``alicom:dedup:SmsReport:<20-char biz_id>:<phone>``)
and a 32-character owner, 100k records: COMPLETED 104 B by ``MEMORY USAGE`` and 149 B per
record of ``used_memory`` (expiry entry and keyspace tables included; a ``"C"`` value or a
hash would be 181 B); INPROGRESS 152 B / 213 B (a hash 229 B). So a week of one million
receipts a day costs about 1 GB; the key is most of it.

Each method takes a whole batch of keys and costs one round trip, whatever the batch size:
one single-key script call per distinct key, pipelined (`consumer.clients.redis_scripts`;
on a Redis Cluster one pipeline per node). A key repeated within a batch is sent once.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import structlog
from redis.cluster import RedisCluster
from redis.commands.core import Script

from consumer.clients.redis_client import RedisClient, transient_from_redis
from consumer.clients.redis_scripts import (
    BATCH_REFUSED,
    Replication,
    ScriptCall,
    replication,
    run_calls,
)
from consumer.errors import TransientError
from consumer.pipeline import dedup_scripts
from consumer.settings import DedupSettings

__all__ = [
    "Claim",
    "ClaimState",
    "Completion",
    "DedupSettings",
    "DedupStore",
    "RedisDedupStore",
    "replication_of",
]

_SEVEN_DAYS_S = 7 * 24 * 3600.0
_log = structlog.get_logger("alicom_receipts.dedup")


#: How long a bare release ("P:") is kept: past MNS's longest visibility (43200 s), so the
#: next delivery of a retried message still finds it.
RELEASED_MARK_S = 13 * 3600.0


class ClaimState(enum.Enum):
    """The answer of ``claim`` for one key."""

    CLAIMED = 1  # the caller now owns the key (or already did): run the handler
    IN_PROGRESS = 2  # someone else holds a live lease: leave the message, it comes back
    COMPLETED = 3  # already applied: acknowledge the duplicate without running anything


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer of ``claim_each`` for one key: its state and, when CLAIMED, the tags
    (`consumer.handler_api.handler_tag`) of the handlers that finished it on an earlier
    delivery: those must not run again."""

    state: ClaimState
    done: frozenset[str] = frozenset()
    # The previous delivery ended with an outcome (a release) or this owner claimed before;
    # False when the record was absent or an orphan's: its process may have died on it.
    settled_before: bool = False


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
        """INPROGRESS(owner), absent, released (PARTIAL, RELEASED) or another owner's claim
        past its lease -> COMPLETED(ttl): RECORDED. A key found COMPLETED is left as it is:
        ALREADY_COMPLETED (e.g. this very call retried after a lost reply). LOST, and
        nothing written: another owner holds a live claim; the caller must then not treat
        the message as its own."""
        ...

    def claim_each(self, keys: Sequence[str], owner: str, lease_s: float,
                   legacy: Sequence[str] = ()) -> list[Claim]:
        """`claim` (the same one script call), with the handlers each key had finished."""
        ...

    def release(self, keys: Sequence[str], owner: str,
                done: Sequence[Collection[str]] | None = None,
                ttl_s: float | None = None) -> list[bool]:
        """INPROGRESS(owner) -> absent, after a handler failure, so the next delivery runs;
        with `done[i]` (the tags of key i's finished handlers) non-empty, -> PARTIAL(done)
        kept `ttl_s` instead, so only the others run then. False (and nothing changed) when
        the key is not ours."""
        ...

    def extend(self, keys: Sequence[str], owner: str, lease_s: float) -> list[bool]:
        """Renews the lease of our INPROGRESS keys to ``lease_s`` from now (slow handlers);
        an absent key (our lease lapsed, nobody claimed it since) is claimed again. False
        (and nothing changed) when the key is another's, completed or released."""
        ...

    def ping(self) -> None:
        """Returns once the store answers; TransientError otherwise."""
        ...


def replication_of(settings: DedupSettings) -> Replication | None:
    """The WAIT `[dedup] wait_replicas` asks of every write a failover must not lose: claims
    and completion records here, dead letters (`RedisDeadLetterStore`)."""
    return replication(settings.wait_replicas, settings.wait_timeout_s)


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
        self._wait = replication_of(settings)
        self._claim = client.register_script(dedup_scripts.CLAIM)
        self._complete = client.register_script(dedup_scripts.COMPLETE)
        self._release = client.register_script(dedup_scripts.RELEASE)
        self._extend = client.register_script(dedup_scripts.EXTEND)
        self._claim_many = client.register_script(dedup_scripts.CLAIM_MANY)
        self._complete_many = client.register_script(dedup_scripts.COMPLETE_MANY)
        # A single Redis takes a batch's claims (completions) in one script call; a cluster,
        # or a server that refuses such a call (Tair's proxy behind a plain redis:// URL:
        # its keys lie in many slots), one single-key call per record (module docstring).
        self.one_call_per_batch = not isinstance(client, RedisCluster)
        # Set when the server refused a script over many slots: it would refuse a claim with
        # its legacy name (two slots) too, and no earlier version could run there.
        self.multi_slot_refused = False

    def redis_key(self, key: str) -> str:
        """The Redis key that holds the record of dedup key ``key``."""
        return self._settings.key_prefix + key

    def claim(self, keys: Sequence[str], owner: str, lease_s: float,
              legacy: Sequence[str] = ()) -> list[ClaimState]:
        """See `DedupStore.claim` and `claim_each`."""
        return [c.state for c in self.claim_each(keys, owner, lease_s, legacy)]

    def claim_each(self, keys: Sequence[str], owner: str, lease_s: float,
                   legacy: Sequence[str] = ()) -> list[Claim]:
        """See `DedupStore.claim_each`. `legacy`, if given, has one name per key: the record
        the same receipt had before keys were hashed (`consumer.keys.KeyFunction.legacy`).
        While such a record lives (completed, or claimed by a process of the old version)
        the key answers as it would; nothing is ever written under a legacy name (a single
        Redis only: the two names are in different cluster slots)."""
        lease_ms = _milliseconds(lease_s, "lease_s")
        if legacy and len(legacy) != len(keys):
            raise ValueError("legacy must name one record per key")
        if isinstance(self._client, RedisCluster) or self.multi_slot_refused:
            legacy = ()  # the version that wrote them ran on a single Redis only
        args: list[int | str] = [owner, lease_ms, "1"] if legacy else [owner, lease_ms]
        replies, repeated = self._batch("claim", keys, owner, (self._claim, self._claim_many),
                                        args, legacy=legacy, wait=True)
        # A key repeated within one call: its first occurrence holds the claim.
        return [Claim(ClaimState.IN_PROGRESS) if again
                else Claim(ClaimState(int(reply[0])), _tags(reply[1]),
                           len(reply) > 2 and int(reply[2]) == 1)
                for reply, again in zip(replies, repeated, strict=True)]

    def complete(self, keys: Sequence[str], owner: str, ttl_s: float) -> list[Completion]:
        ttl_ms = _milliseconds(ttl_s, "ttl_s")
        replies = self._batch("complete", keys, owner, (self._complete, self._complete_many),
                              [owner, ttl_ms], wait=True)[0]
        return [Completion(int(code)) for code in replies]

    def ping(self) -> None:
        """Raises TransientError unless Redis answers (a poller waits for it after an outage)."""
        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "ping", self._client) from exc

    def release(self, keys: Sequence[str], owner: str,
                done: Sequence[Collection[str]] | None = None,
                ttl_s: float | None = None) -> list[bool]:
        ttl_ms = _milliseconds(ttl_s or self._settings.completed_ttl_s, "ttl_s")
        if done is not None and len(done) != len(keys):
            raise ValueError("done must list one set of tags per key")
        tags = [",".join(sorted(d)) for d in done] if done is not None else [""] * len(keys)
        mark_ms = _milliseconds(RELEASED_MARK_S, "mark")
        if not owner or "@" in owner or "/" in owner:
            raise ValueError("owner must be a non-empty token without '@' or '/'")
        first = dict(reversed(list(zip(keys, tags, strict=True))))  # a key's first tags
        calls = [ScriptCall(self._release, [self.redis_key(key)], [owner, ttl_ms, t, mark_ms])
                 for key, t in first.items()]
        answer = dict(zip(first, self._run("release", calls, wait=done is not None),
                          strict=True))
        return [answer[key] == 1 for key in keys]

    def extend(self, keys: Sequence[str], owner: str, lease_s: float) -> list[bool]:
        lease_ms = _milliseconds(lease_s, "lease_s")
        return [code == 1 for code in self._per_key("extend", self._extend, keys, owner,
                                                     [lease_ms])]

    def _per_key(self, operation: str, script: Script, keys: Sequence[str], owner: str,
                 args: list[int | str]) -> list[Any]:
        """One call per distinct key, all in one round trip; a repeated key gets the answer
        of its first occurrence."""
        return self._batch(operation, keys, owner, (script, None), [owner, *args])[0]

    def _batch(self, operation: str, keys: Sequence[str], owner: str,
               scripts: tuple[Script, Script | None], args: list[int | str], *,
               legacy: Sequence[str] = (), wait: bool = False) -> tuple[list[Any], list[bool]]:
        """The keys' first occurrences in one round trip: one call of the batch script
        (`scripts[1]`, when given and `one_call_per_batch`), else one call of the single-key
        script per key (`run_calls`), with `args`, and each key's `legacy` name as its
        KEYS[2]. Returns the answer per key (a repeated key gets its first occurrence's) and
        which keys repeat an earlier one of the batch. `wait`: claims and completion writes,
        confirmed on `wait_replicas` replicas when that is set (`WAIT` in the same round
        trip): a claim only the old primary saw would let a redelivery run the handler again
        on the promoted replica, so an unconfirmed claim runs nothing (TransientError)."""
        if not owner or "@" in owner or "/" in owner:
            raise ValueError("owner must be a non-empty token without '@' or '/'")
        first: dict[str, int] = {}
        for index, key in enumerate(keys):
            first.setdefault(key, index)
        names = [self.redis_key(key) for key in first]
        old = [self.redis_key(legacy[i]) for i in first.values()] if legacy else []
        replies: list[Any] | None = None
        if scripts[1] is not None and self.one_call_per_batch and names:
            replies = self._one_call(operation, ScriptCall(scripts[1], names + old, args), wait)
        if replies is None:
            if self.multi_slot_refused:
                old, args = [], args[:2] if legacy else args  # no legacy name, nor its flag
            calls = [ScriptCall(scripts[0], [name, *old[n:n + 1]], args)
                     for n, name in enumerate(names)]
            replies = self._run(operation, calls, wait)
        answer = dict(zip(first, replies, strict=True))
        return ([answer[key] for key in keys],
                [first[key] != index for index, key in enumerate(keys)])

    def _run(self, operation: str, calls: list[ScriptCall], wait: bool) -> list[Any]:
        """`run_calls`; a failed call or an error answer raise TransientError."""
        try:
            replies = run_calls(self._client, calls, wait=self._wait if wait else None)
        except redis.RedisError as exc:
            raise transient_from_redis(exc, operation, self._client) from exc
        for reply in replies:
            if isinstance(reply, redis.RedisError):
                raise transient_from_redis(reply, operation, self._client)
        return replies

    def _one_call(self, operation: str, call: ScriptCall, wait: bool) -> list[Any] | None:
        """The batch script's answers, one per record; None when the server refuses a
        script over many slots (nothing ran): this and every later batch go per key."""
        try:
            return list(self._run(operation, [call], wait)[0])
        except TransientError as exc:
            if not BATCH_REFUSED.search(str(exc)):
                raise
            error = str(exc)
        self.one_call_per_batch, self.multi_slot_refused = False, True
        _log.warning("dedup_batch_script_refused", error=error,
                     note="one script call per record from now on (a cluster proxy?)")
        return None



def _tags(reply: object) -> frozenset[str]:
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return frozenset(text.split(",")) if text else frozenset()
