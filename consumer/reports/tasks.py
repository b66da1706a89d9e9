"""Send tasks: what one send call covered, and how far its numbers got.

A task is one `SendSms` / `SendBatchSms` call (its BizId), or a task id the sending code gives
to `SendTracker.record(..., task_id=...)` / `TrackedSend(task_id=...)` (several calls in one
campaign). `SendTracker` records each number of a task as *pending* (and counts it into the
delivery statistics' `submitted` for its send hour); the `send-tracker` handler moves it to
*delivered* or *failed* when its receipt (or reconciled answer) arrives. Read by
`alicom-receipts tasks` and the dashboard.

Redis layout under `prefix` (default `alicom:tasks`); numbers are hash fields in the form
`consumer.reports.phone_ids` gives them, never key names:

* `<prefix>:index`     sorted set task id -> creation time (epoch s);
* `<prefix>:t:<task>`  hash: `created`, `updated`, `submitted`, `delivered`, `failed`,
  `fail:<err_code>` and `why:<reason>` (number-hygiene reason, `other` when none) counts;
* `<prefix>:n:<task>`  hash number -> `p` (pending), `d` (delivered) or `f` + err_code;
* `<prefix>:b:<biz_id>` the task of a BizId, when the task id is not the BizId itself.

A number moves once, from pending to its outcome: a receipt handled twice, or a delivery of a
number the task does not have, changes nothing, so counts stay exact with several workers.
Everything expires `ttl_s` after the task's last change (default 35 days, like tracking).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.client import Pipeline

from consumer.clients.redis_client import RedisClient

__all__ = ["DEFAULT_PREFIX", "Outcome", "TaskCounts", "TaskStore"]

DEFAULT_PREFIX = "alicom:tasks"
DEFAULT_TTL_S = 35 * 86400.0
_MAX_CODE_CHARS = 64

# ARGV: prefix, now, ttl, then per number: task, biz_id, number, stats hour key ('' none),
# its EXPIREAT.
_RECORD = """
local prefix, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV, 5 do
  local task, biz, number, hour = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local t, n = prefix .. ':t:' .. task, prefix .. ':n:' .. task
  if redis.call('HSETNX', n, number, 'p') == 1 then
    redis.call('HINCRBY', t, 'submitted', 1)
    redis.call('HSETNX', t, 'created', now)
    redis.call('HSET', t, 'updated', now)
    redis.call('ZADD', prefix .. ':index', 'NX', now, task)
    if hour ~= '' then
      redis.call('HINCRBY', hour, 'submitted', 1)
      redis.call('EXPIREAT', hour, ARGV[i + 4])
    end
  end
  if task ~= biz then redis.call('SET', prefix .. ':b:' .. biz, task, 'EX', ttl) end
  redis.call('EXPIRE', t, ttl); redis.call('EXPIRE', n, ttl)
end
redis.call('EXPIRE', prefix .. ':index', ttl)
redis.call('ZREMRANGEBYSCORE', prefix .. ':index', '-inf', now - ttl)
return 1
"""

# ARGV: prefix, now, ttl, then per receipt: biz_id, number, 'd' | 'f', err_code, reason.
_SETTLE = """
local prefix, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local moved = 0
for i = 4, #ARGV, 5 do
  local biz, number, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local task = redis.call('GET', prefix .. ':b:' .. biz) or biz
  local t, n = prefix .. ':t:' .. task, prefix .. ':n:' .. task
  if redis.call('HGET', n, number) == 'p' then
    if outcome == 'd' then
      redis.call('HSET', n, number, 'd')
      redis.call('HINCRBY', t, 'delivered', 1)
    else
      redis.call('HSET', n, number, 'f' .. ARGV[i + 3])
      redis.call('HINCRBY', t, 'failed', 1)
      redis.call('HINCRBY', t, 'fail:' .. ARGV[i + 3], 1)
      redis.call('HINCRBY', t, 'why:' .. ARGV[i + 4], 1)
    end
    redis.call('HSET', t, 'updated', now)
    redis.call('EXPIRE', t, ttl); redis.call('EXPIRE', n, ttl)
    moved = moved + 1
  end
end
return moved
"""


@dataclass(frozen=True, slots=True)
class Outcome:
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
    """Send tasks in Redis; thread-safe as its client. Errors: redis-py's."""

    def __init__(self, client: RedisClient, prefix: str = DEFAULT_PREFIX,
                 ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_s = int(ttl_s)
        self._clock = clock
        self._record = client.register_script(_RECORD)
        self._settle = client.register_script(_SETTLE)

    def record(self, numbers: Iterable[tuple[str, str, str, str, int]],
               pipe: Pipeline | None = None) -> None:
        """Adds (task, biz_id, number, stats hour key or "", its expireat) as pending; with
        `pipe` the call is only queued there (the caller executes)."""
        args: list[Any] = [self._prefix, int(self._clock()), self._ttl_s]
        for item in numbers:
            args += item
        if len(args) > 3:
            self._record(args=args, client=pipe or self._client)

    def settle(self, outcomes: Sequence[Outcome], pipe: Pipeline | None = None) -> int:
        """Moves pending numbers to their outcome; how many moved (the rest were not pending).
        With `pipe` the call is only queued there (the caller executes) and 0 is returned."""
        if not outcomes:
            return 0
        args: list[Any] = [self._prefix, int(self._clock()), self._ttl_s]
        for o in outcomes:
            args += [o.biz_id, o.number, "d" if o.delivered else "f",
                     o.err_code[:_MAX_CODE_CHARS] or "(empty)", o.reason or "other"]
        if pipe is not None:
            self._settle(args=args, client=pipe)
            return 0
        return int(cast(int, self._settle(args=args)))

    def tasks(self, since_s: float | None = None, status: str | None = None,
             limit: int = 1000) -> list[TaskCounts]:
        """Tasks created within `since_s` seconds (all if None), newest first."""
        low: Any = "-inf" if since_s is None else self._clock() - since_s
        ids = cast(list[bytes], self._client.zrevrangebyscore(
            self._prefix + ":index", "+inf", low, start=0, num=limit))
        pipe = self._client.pipeline(transaction=False)
        for task in ids:
            pipe.hgetall("%s:t:%s" % (self._prefix, task.decode()))
        tasks = [TaskCounts.parse(t.decode(), raw) for t, raw in zip(ids, pipe.execute(),
                                                                     strict=True) if raw]
        return [t for t in tasks if status is None or t.status == status]

    def get(self, task_id: str) -> TaskCounts | None:
        raw = cast(dict[bytes, bytes], self._client.hgetall(
            "%s:t:%s" % (self._prefix, task_id)))
        return TaskCounts.parse(task_id, raw) if raw else None

    def numbers(self, task_id: str, state: str | None = None) -> list[tuple[str, str, str]]:
        """(number, state, err_code) of the task's numbers, state "pending" | "delivered" |
        "failed" (only `state` if given), sorted by number."""
        out = []
        for number, value in self._client.hscan_iter("%s:n:%s" % (self._prefix, task_id),
                                                      count=1000):
            text = value.decode("utf-8", "replace")
            name = {"p": "pending", "d": "delivered"}.get(text[:1], "failed")
            if state is None or state == name:
                out.append((number.decode(), name, text[1:] if name == "failed" else ""))
        return sorted(out)
