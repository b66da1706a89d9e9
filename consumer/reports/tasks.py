"""Send tasks: what one send call covered, and how far its numbers got.

A task is one `SendSms` / `SendBatchSms` call (its BizId), or a task id the sending code gives
to `SendTracker.record(..., task_id=...)` / `TrackedSend(task_id=...)` (several calls in one
campaign). `SendTracker` records each number of a task as *pending* (and counts it into the
delivery statistics' `submitted` for its send hour); the `send-tracker` handler moves it to
*delivered* or *failed* when its receipt (or reconciled answer) arrives. Read by
`alicom-receipts tasks` and the dashboard.

Redis layout under the hash-tagged `prefix` (default `{alicom:track}:tasks`, the tracked sends'
tag:
one cluster slot, so every script call is legal on a cluster; numbers are hash fields in the form
`consumer.reports.phone_ids` gives them, never key names:

* `<prefix>:index`     sorted set task id -> creation time (epoch s);
* `<prefix>:t:<biz_id>` hash per send call: `created`, `updated`, `submitted`, `delivered`,
  `failed`, `fail:<err_code>` and `why:<reason>` (number-hygiene reason, `other` when none);
* `<prefix>:n:<biz_id>` hash number -> `p` (pending), `d` (delivered) or `f` + err_code;
* `<prefix>:g:<task>`  set of the BizIds of a task whose id is not a BizId (a campaign).

Counts are kept per send call (BizId), so a receipt, which carries its BizId, settles with
one script call and no lookup; a campaign's figures are the sums over its BizIds, added up
when read.

A number moves once, from pending to its outcome: a receipt handled twice, or a delivery of a
number the task does not have, changes nothing, so counts stay exact with several workers.
Everything expires `ttl_s` after the task's last change (default 35 days, like tracking).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from consumer.clients.redis_client import RedisClient, hash_tagged
from consumer.clients.redis_scripts import ScriptCall, run_calls

__all__ = ["DEFAULT_PREFIX", "Outcome", "TaskCounts", "TaskStore"]

DEFAULT_PREFIX = "{alicom:track}:tasks"
"""Under the tracked sends' hash tag (`consumer.reports.tracking`): one slot with them, so the
send-tracker handler clears a send and settles its task number in one script call."""
DEFAULT_TTL_S = 35 * 86400.0
_MAX_CODE_CHARS = 64

# Every script names its keys in KEYS, literally, all under the family's hash tag (Tair proxy
# rule; one slot per call): see consumer.clients.redis_scripts.
# KEYS[1] t:<biz>, KEYS[2] n:<biz>, KEYS[3] g:<task> (used only when the task is not the
# BizId), KEYS[4] index. ARGV: number, now, ttl, task, biz. 1 when the number is new.
_RECORD = """
local added = redis.call('HSETNX', KEYS[2], ARGV[1], 'p')
if added == 1 then
  redis.call('HINCRBY', KEYS[1], 'submitted', 1)
  redis.call('HSETNX', KEYS[1], 'created', ARGV[2])
  redis.call('HSET', KEYS[1], 'updated', ARGV[2])
  redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[4])
end
if ARGV[4] ~= ARGV[5] then
  redis.call('SADD', KEYS[3], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[3])
return added
"""

# KEYS[1] index. ARGV: the cutoff (epoch s). Tasks created before it leave the index.
_TRIM = """
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
"""

# KEYS[1] t:<biz>, KEYS[2] n:<biz>. ARGV: number, 'd' | 'f', err_code, reason, now, ttl.
# 1 when the number moved from pending to its outcome, else 0.
_SETTLE = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= 'p' then return 0 end
if ARGV[2] == 'd' then
  redis.call('HSET', KEYS[2], ARGV[1], 'd')
  redis.call('HINCRBY', KEYS[1], 'delivered', 1)
else
  redis.call('HSET', KEYS[2], ARGV[1], 'f' .. ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
  redis.call('HINCRBY', KEYS[1], 'fail:' .. ARGV[3], 1)
  redis.call('HINCRBY', KEYS[1], 'why:' .. ARGV[4], 1)
end
redis.call('HSET', KEYS[1], 'updated', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
"""


class Outcome(NamedTuple):  # a tuple: built per receipt, ~3x cheaper than a frozen dataclass
    """A receipt's effect on its task: `number` in stored form, `err_code` / `reason` for a
    failure (`reason` from the number rules, "" when none matched)."""

    biz_id: str
    number: str
    delivered: bool
    err_code: str = ""
    reason: str = ""


@dataclass
class TaskCounts:
    """One task's figures."""

    task_id: str
    created: float = 0.0
    updated: float = 0.0
    submitted: int = 0
    delivered: int = 0
    failed: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return max(0, self.submitted - self.delivered - self.failed)

    @property
    def status(self) -> str:
        """"sending" while a number waits for its receipt, then "done"."""
        return "sending" if self.pending else "done"

    @classmethod
    def parse(cls, task_id: str, raw: dict[bytes, bytes]) -> TaskCounts:
        out = cls(task_id)
        for key, value in raw.items():
            name = key.decode("utf-8", "replace")
            if name in ("created", "updated"):
                setattr(out, name, float(value))
            elif name in ("submitted", "delivered", "failed"):
                setattr(out, name, int(value))
            elif name.startswith("fail:"):
                out.codes[name[5:]] = int(value)
            elif name.startswith("why:"):
                out.reasons[name[4:]] = int(value)
        return out


class TaskStore:
    """Send tasks in Redis; thread-safe as its client. Errors: redis-py's.

    Keys live under the hash-tagged prefix (``{alicom:tasks}:...``): one cluster slot."""

    def __init__(self, client: RedisClient, prefix: str = DEFAULT_PREFIX,
                 ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prefix = hash_tagged(prefix)
        self._ttl_s = int(ttl_s)
        self._clock = clock
        self._record = client.register_script(_RECORD)
        self._trim = client.register_script(_TRIM)
        self._settle = client.register_script(_SETTLE)
        #: What a BizId is appended to for the keys a receipt settles (`keys_of`): its
        #: counts, its numbers.
        self.settle_prefixes = (self._prefix + ":t:", self._prefix + ":n:")

    def record_calls(self, numbers: Iterable[tuple[str, str, str]]) -> list[ScriptCall]:
        """The script calls that add (task, biz_id, number) as pending, the index trim
        first; each number's call answers 1 when it is new. For callers that send them with
        their own (`run_calls`)."""
        now = int(self._clock())
        calls = [ScriptCall(self._trim, [self._index], [now - self._ttl_s])]
        for task, biz, number in numbers:
            keys = [self._key("t", biz), self._key("n", biz), self._key("g", task),
                    self._index]
            calls.append(ScriptCall(self._record, keys, [number, now, self._ttl_s, task, biz]))
        return calls if len(calls) > 1 else []

    def record(self, numbers: Iterable[tuple[str, str, str]]) -> list[bool]:
        """Adds (task, biz_id, number) as pending; per number, True when it is new."""
        replies = run_calls(self._client, self.record_calls(numbers))
        return [_ok(reply) for reply in replies[1:]]

    def settle_calls(self, outcomes: Sequence[Outcome]) -> list[ScriptCall]:
        """The script calls that move pending numbers to their outcome; each answers 1 when
        its number moved."""
        now = int(self._clock())
        return [ScriptCall(self._settle, self.keys_of(o.biz_id), settle_args(o, now, self._ttl_s))
                for o in outcomes]

    def settle(self, outcomes: Sequence[Outcome]) -> int:
        """Moves pending numbers to their outcome; how many moved (the rest were not pending)."""
        return sum(1 for reply in run_calls(self._client, self.settle_calls(outcomes))
                   if _ok(reply))

    @property
    def tag(self) -> str:
        """The hash tag of every key (stores sharing it can share a script call)."""
        return self._prefix[:self._prefix.index("}") + 1]

    def keys_of(self, biz_id: str) -> list[str]:
        """The keys a receipt of `biz_id` settles: its counts and its numbers."""
        counts, numbers = self.settle_prefixes
        return [counts + biz_id, numbers + biz_id]

    @property
    def _index(self) -> str:
        return self._prefix + ":index"

    def _key(self, kind: str, name: str) -> str:
        return "%s:%s:%s" % (self._prefix, kind, name)

    def _calls_of(self, task_ids: Sequence[str]) -> list[list[str]]:
        """Per task, its send calls' BizIds (a campaign's set; else the task id itself)."""
        pipe = self._client.pipeline(transaction=False)
        for task in task_ids:
            pipe.smembers(self._key("g", task))
        return [sorted(m.decode() for m in members) or [task]
                for task, members in zip(task_ids, pipe.execute(), strict=True)]

    def _counts(self, task_ids: Sequence[str]) -> list[TaskCounts | None]:
        """The summed figures of each task (None: nothing recorded)."""
        bizs = self._calls_of(task_ids)
        pipe = self._client.pipeline(transaction=False)
        for biz_ids in bizs:
            for biz in biz_ids:
                pipe.hgetall(self._key("t", biz))
        raws = iter(pipe.execute())
        out: list[TaskCounts | None] = []
        for task, biz_ids in zip(task_ids, bizs, strict=True):
            parts = [TaskCounts.parse(task, next(raws)) for _ in biz_ids]
            parts = [p for p in parts if p.submitted or p.created]
            out.append(_summed(task, parts) if parts else None)
        return out

    def tasks(self, since_s: float | None = None, status: str | None = None,
              limit: int = 1000) -> list[TaskCounts]:
        """Tasks created within `since_s` seconds (all if None), newest first."""
        low: Any = "-inf" if since_s is None else self._clock() - since_s
        ids = [t.decode() for t in cast(list[bytes], self._client.zrevrangebyscore(
            self._index, "+inf", low, start=0, num=limit))]
        tasks = [t for t in self._counts(ids) if t is not None]
        return [t for t in tasks if status is None or t.status == status]

    def get(self, task_id: str) -> TaskCounts | None:
        return self._counts([task_id])[0]

    def numbers(self, task_id: str, state: str | None = None) -> list[tuple[str, str, str]]:
        """(number, state, err_code) of the task's numbers, state "pending" | "delivered" |
        "failed" (only `state` if given), sorted by number."""
        out = []
        for biz in self._calls_of([task_id])[0]:
            for number, value in self._client.hscan_iter(self._key("n", biz), count=1000):
                text = value.decode("utf-8", "replace")
                name = {"p": "pending", "d": "delivered"}.get(text[:1], "failed")
                if state is None or state == name:
                    out.append((number.decode(), name, text[1:] if name == "failed" else ""))
        return sorted(out)


def settle_fields(o: Outcome) -> tuple[str, ...]:
    """A receipt's part of the settle scripts' ARGV: number, 'd' | 'f', err_code, reason."""
    return (o.number, "d" if o.delivered else "f", *failure_fields(o.err_code, o.reason))


def failure_fields(err_code: str, reason: str) -> tuple[str, str]:
    """A failure's err_code and reason as the settle scripts take them (here and in
    `consumer.reports.tracking_scripts`): cut, and never empty."""
    return err_code[:_MAX_CODE_CHARS] or "(empty)", reason or "other"


def settle_args(o: Outcome, now: int, ttl_s: int) -> list[Any]:
    """ARGV of the settle script: `settle_fields`, now, ttl."""
    return [*settle_fields(o), now, ttl_s]


def _summed(task_id: str, parts: Sequence[TaskCounts]) -> TaskCounts:
    out = TaskCounts(task_id, created=min(p.created for p in parts),
                     updated=max(p.updated for p in parts))
    for p in parts:
        out.submitted += p.submitted
        out.delivered += p.delivered
        out.failed += p.failed
        for mine, theirs in ((out.codes, p.codes), (out.reasons, p.reasons)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
    return out


def _ok(reply: Any) -> bool:
    """A script call's 1/0 answer; an error Redis answered with is raised."""
    if isinstance(reply, Exception):
        raise reply
    return bool(reply)
