"""The number list: which numbers not to send to, and why (number hygiene).

Written by the `number-hygiene` handler (`consumer.handlers.number_hygiene`), read by the
sending code (`is_suppressed`, `suppressed_many`), `alicom-receipts numbers` and the dashboard.
Rules and policies: `consumer.reports.number_rules`.

Redis layout under `prefix` (default `alicom:numbers`); numbers are hash fields and set
members in the form `consumer.reports.phone_ids` gives them (plain, or keyed hashes), never
key names:

* `<prefix>:rec`  hash number -> JSON record: reason `r`, first / last failure `f` / `l` (epoch
  s, from the receipts' report times), failures `n`, last err_code `c` / err_msg `m`,
  suppressed since `s` (0: not), suppressed until `x` (0: no end), last BizIds `b` (so that a
  receipt handled twice is counted once);
* `<prefix>:sup`  sorted set number -> end of its suppression (`+inf`: none): lookups read
  only this (`ZMSCORE`), and lapsed members are removed on every write;
* `<prefix>:seen` sorted set number -> last failure: records neither suppressed nor failing
  for `retention_days` are pruned (a few per write, so it costs nothing noticeable).

A failure of another reason replaces the record (and its suppression: "powered off" after
"empty number" says the number exists), and counts from 1 under its own policy. A delivery
lifts a suppression when it was reported no earlier than the last failure (the
platform's times have whole seconds: within the same second the delivery wins, since it
proves the number reachable).

Every write of a batch is one script call: atomic and shared by any number of workers on
any number of hosts. The three keys share one hash tag, so it works on a Redis Cluster too.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from consumer.clients.redis_client import RedisClient, hash_tagged
from consumer.clients.redis_scripts import (
    ScriptCall,
    ScriptPlan,
    json_arg,
    raise_errors,
    run_plans,
)
from consumer.reports.number_rules import DEFAULT_POLICIES, MANUAL, Policy
from consumer.reports.phone_ids import PhoneIds

__all__ = ["DEFAULT_PREFIX", "Delivery", "Event", "Failure", "NumberList", "NumberRecord"]

DEFAULT_PREFIX = "alicom:numbers"
_MAX_MSG_CHARS = 200
_KEEP_BIZ = 8

_APPLY = """
local now, keep, lift, keep_biz = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
-- ARGV[5], the events as one JSON array: a delivery is [number, at], a failure
-- [number, at, reason, err_code, err_msg, biz, after, over_s, expire_s].
for _, e in ipairs(cjson.decode(ARGV[5])) do
  local id, at = e[1], e[2]
  local raw = redis.call('HGET', KEYS[1], id)
  local r = raw and cjson.decode(raw) or nil
  if #e == 2 then
    if r and at >= r.l and string.find(lift, ',' .. r.r .. ',', 1, true) then
      redis.call('HDEL', KEYS[1], id); redis.call('ZREM', KEYS[2], id)
      redis.call('ZREM', KEYS[3], id)
    end
  else
    local reason, code, msg, biz, after, over, expire = e[3], e[4], e[5], e[6], e[7], e[8], e[9]
    if r and r.x > 0 and r.x <= now then r = nil end
    if r and r.r == 'manual' then reason, after, over, expire = 'manual', 1, 0, r.e or 0 end
    if not r or r.r ~= reason then
      if r then redis.call('ZREM', KEYS[2], id) end
      r = {r = reason, f = at, l = at, n = 0, s = 0, x = 0, b = {}}
    end
    local again = false
    for _, b in ipairs(r.b) do if b == biz then again = true end end
    if not again then
      r.n = r.n + 1
      if at < r.f then r.f = at end
      if at > r.l then r.l = at end
      r.c, r.m = code, msg
      table.insert(r.b, 1, biz)
      if #r.b > keep_biz then table.remove(r.b) end
      if after > 0 and (r.s > 0 or (r.n >= after and r.l - r.f >= over)) then
        if r.s == 0 then r.s = now end
        if expire > 0 then r.x = r.l + expire else r.x = 0 end
        redis.call('ZADD', KEYS[2], r.x > 0 and r.x or '+inf', id)
      end
      redis.call('HSET', KEYS[1], id, cjson.encode(r))
      redis.call('ZADD', KEYS[3], r.l, id)
    end
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - keep, 'LIMIT', 0, 16)) do
  local until_ = redis.call('ZSCORE', KEYS[2], id)
  if until_ and until_ == 'inf' then
    redis.call('ZADD', KEYS[3], now, id)
  else
    redis.call('HDEL', KEYS[1], id); redis.call('ZREM', KEYS[2], id)
      redis.call('ZREM', KEYS[3], id)
  end
end
return 1
"""


class Failure(NamedTuple):  # a tuple: built per receipt, ~3x cheaper than a frozen dataclass
    """A classified failed delivery to `number` (already in stored form) at `at` (epoch s)."""

    number: str
    at: float
    reason: str
    err_code: str
    err_msg: str
    biz_id: str


class Delivery(NamedTuple):
    """A successful delivery to `number` (stored form) at `at` (epoch s)."""

    number: str
    at: float


#: What `NumberList.apply` takes per receipt: a `Delivery` or a `Failure`, or a plain tuple
#: of the same fields.
Event = tuple[str, float] | tuple[str, float, str, str, str, str]
#: The script's (after, over_s, expire_s) of a reason without a policy: never suppressed.
_NO_POLICY = (0, 0, 0)


@dataclass(frozen=True)
class NumberRecord:
    """What the list knows about one number (`number` in stored form: maybe a hash)."""

    number: str
    reason: str
    first_failure: float
    last_failure: float
    failures: int
    err_code: str
    err_msg: str
    suppressed_since: float
    suppressed_until: float | None  # None: not suppressed; inf: no end

    @property
    def suppressed(self) -> bool:
        return self.suppressed_until is not None

    @classmethod
    def from_json(cls, number: str, raw: bytes | str, until: float | None) -> NumberRecord:
        doc: dict[str, Any] = json.loads(raw)
        return cls(number, str(doc.get("r", "")), float(doc.get("f", 0)),
                   float(doc.get("l", 0)), int(doc.get("n", 0)), str(doc.get("c", "")),
                   str(doc.get("m", "")), float(doc.get("s", 0)), until)


class NumberList:
    """The suppression list in Redis; thread-safe as its redis client is. Errors: redis-py's.

    `ids` must be the same in every process sharing the list (see `phone_ids`).
    """

    def __init__(self, client: RedisClient, prefix: str = DEFAULT_PREFIX,
                 ids: PhoneIds | None = None,
                 policies: Mapping[str, Policy] = DEFAULT_POLICIES,
                 retention_days: float = 180.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        tag = hash_tagged(prefix)  # one slot: the script touches all three keys
        self._keys = [tag + ":rec", tag + ":sup", tag + ":seen"]
        self.ids = ids or PhoneIds()
        # Per reason the script's (after, over_s, expire_s), computed once.
        self._policies = {reason: (p.after, round(p.over_days * 86400),
                                   round(p.expire_days * 86400))
                          for reason, p in policies.items()}
        self._lift = "," + ",".join(r for r, p in policies.items() if p.on_delivery) + ","
        self._keep_s = retention_days * 86400
        self._clock = clock
        self._apply = client.register_script(_APPLY)

    # -- writing -------------------------------------------------------------------------

    def apply(self, events: Sequence[Event]) -> None:
        """Records failures and deliveries (in stored form) in one script call."""
        run_plans(self._client, [self.apply_plan(events)])

    def apply_plan(self, events: Sequence[Event]) -> ScriptPlan[None]:
        """`apply` as a plan (`consumer.clients.redis_scripts.run_plans`): one script call,
        none for no events; its finish raises the error Redis answered with. An event is a
        `Delivery` or a `Failure`, or a plain tuple of the same fields (what the handler
        builds per receipt: a named tuple costs more)."""
        rows: list[tuple[Any, ...]] = []
        policies = self._policies
        for e in events:
            if not e[0]:  # no number (a blank one): nothing to record
                continue
            if len(e) == 2:  # the script's delivery: (number, at)
                rows.append((e[0], int(e[1])))
                continue
            number, at, reason, code, msg, biz = cast(Failure, e)
            rows.append((number, int(at), reason, code, msg[:_MAX_MSG_CHARS], biz,
                         *policies.get(reason, _NO_POLICY)))
        if not rows:
            return ScriptPlan((), raise_errors)
        # One EVALSHA written and read directly (a NOSCRIPT reload included), its events in
        # one JSON argument: cheaper to pack than their fields one by one.
        args = [int(self._clock()), int(self._keep_s), self._lift, _KEEP_BIZ, json_arg(rows)]
        return ScriptPlan([ScriptCall(self._apply, self._keys, args)], raise_errors)

    def add(self, phone: str, reason: str = MANUAL, expire_days: float = 0.0) -> NumberRecord:
        """Suppresses `phone` by hand (`numbers add`): no delivery lifts it; it ends after
        `expire_days` (0: never) or by `remove`."""
        number, now = self.ids(phone), int(self._clock())
        until = now + expire_days * 86400 if expire_days else math.inf
        doc = {"r": MANUAL, "f": now, "l": now, "n": 0, "c": "", "m": reason, "s": now,
               "x": 0 if math.isinf(until) else until, "e": round(expire_days * 86400),
               "b": []}
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self._keys[0], number, json.dumps(doc))
        pipe.zadd(self._keys[1], {number: until})
        pipe.zadd(self._keys[2], {number: now})
        pipe.execute()
        return NumberRecord.from_json(number, json.dumps(doc), until)

    def remove(self, phones: Iterable[str]) -> int:
        """Forgets numbers (suppressed or not); how many the list knew."""
        numbers = [self.ids(p) for p in phones]
        if not numbers:
            return 0
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self._keys[0], *numbers)
        pipe.zrem(self._keys[1], *numbers)
        pipe.zrem(self._keys[2], *numbers)
        return int(pipe.execute()[0])

    # -- reading -------------------------------------------------------------------------

    def is_suppressed(self, phone: str) -> bool:
        """True when `phone` should not be sent to now."""
        return self.suppressed_many([phone])[0]

    def suppressed_many(self, phones: Sequence[str]) -> list[bool]:
        """`is_suppressed` for many numbers in one round trip, in order."""
        if not phones:
            return []
        scores = self._client.zmscore(self._keys[1], [self.ids(p) for p in phones])
        now = self._clock()
        return [s is not None and s > now for s in scores]

    def count_suppressed(self) -> int:
        """How many numbers are suppressed now (one ZCOUNT)."""
        return int(self._client.zcount(self._keys[1], "(%r" % self._clock(), "+inf"))

    def get(self, phone: str) -> NumberRecord | None:
        """The record of `phone`, suppressed or only failing; None when unknown."""
        return self._records([self.ids(phone)]).get(self.ids(phone))

    def suppressed(self, reason: str | None = None,
                   limit: int | None = None) -> list[NumberRecord]:
        """The numbers suppressed now (of `reason` if given), most recently suppressed first.
        With `limit`, only the `limit` whose suppression ends last are read (manual entries
        first): a page can show some of a long list without reading all of it."""
        now = self._clock()
        rows = cast(list[tuple[bytes, float]], self._client.zrevrangebyscore(
            self._keys[1], "+inf", "(%r" % now, start=0 if limit is not None else None,
            num=limit, withscores=True))
        records = self._records([m.decode() for m, _ in rows])
        out = [r for r in records.values() if reason is None or r.reason == reason]
        return sorted(out, key=lambda r: (-r.suppressed_since, r.number))

    def _records(self, numbers: Sequence[str]) -> dict[str, NumberRecord]:
        if not numbers:
            return {}
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(self._keys[0], numbers)
        pipe.zmscore(self._keys[1], list(numbers))
        raws, untils = pipe.execute()
        now = self._clock()
        out = {}
        for number, raw, until in zip(numbers, raws, untils, strict=True):
            if raw is not None:
                live = until if until is not None and until > now else None
                out[number] = NumberRecord.from_json(number, raw, live)
        return out
