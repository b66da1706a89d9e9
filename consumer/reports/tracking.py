"""Send tracking: which sent SMS still wait for their receipt (for `alicom-receipts reconcile`).

The sending code records each send right after `SendSms` / `SendBatchSms` answered OK::

    tracker = SendTracker(connect(url, socket_timeout_s=5), TrackingSettings())
    answer = client.send_sms(SendSmsRequest(phone_numbers="13800000000,13900000000", ...))
    tracker.record_many(TrackedSend(answer.body.biz_id, p, time.time(), out_id="order-7")
                        for p in ("13800000000", "13900000000"))

and the built-in `send-tracker` handler (`consumer.handlers.tracking`) clears a send when its
SmsReport arrives. Each record also adds the number to its send task (`consumer.reports.tasks`:
the BizId, or `task_id=` to group several calls) and counts it into the delivery statistics'
`submitted` for its send hour (`stats_prefix`), so `alicom-receipts stats` can tell how many
sends are still without a receipt. `reconcile` asks QuerySendDetails about those still
pending after a grace period. A send is identified as its receipt is: (biz_id, phone number).

Redis layout under `key_prefix` (default `alicom:track`), chosen to stay small:

* `<prefix>:z`: a sorted set, member `<biz_id>|<phone>`, score the send time (epoch s);
* `<prefix>:d:<day>`: per send day (days since 1970 in Asia/Shanghai, the platform's calendar)
  a hash member -> out_id, only for sends that have an out_id; it expires by itself
  `ttl_s` after its day ended.

The sorted set is trimmed of members older than `ttl_s` on every write and expires `ttl_s`
after the last one, so nothing outlives the TTL (default 35 days: past the 30 days
QuerySendDetails covers, so that reconcile can still report a send it could not look up).
Phone numbers are stored without a +86 / 0086 / 86 prefix (receipts carry them bare).
Every write is one Lua script call (atomic, one round trip); the scripts build keys from the
prefix, so like the dedup store this needs a standalone Redis, not a cluster.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from zoneinfo import ZoneInfo

from consumer.clients.redis_client import RedisClient
from consumer.errors import ConfigError
from consumer.reports import delivery_stats, tasks
from consumer.reports.phone_ids import PhoneIds, normalise_phone, phone_ids

__all__ = ["SendTracker", "TrackedSend", "TrackingSettings", "normalise_phone"]

SHANGHAI = ZoneInfo("Asia/Shanghai")
_SHANGHAI_OFFSET_S = 8 * 3600  # Asia/Shanghai has been UTC+8 all year since 1991
_DAY_S = 86400

# KEYS[1] the sorted set. ARGV: prefix, now, ttl_s, then (member, score, day, out_id) per send.
# Returns 1 per send newly tracked, 0 per send already tracked (its first record is kept).
_RECORD = """
local zset, prefix, now, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', zset, '-inf', '(' .. (now - ttl))
local out = {}
for i = 4, #ARGV, 4 do
  local added = redis.call('ZADD', zset, 'NX', ARGV[i + 1], ARGV[i])
  out[#out + 1] = added
  if added == 1 and ARGV[i + 3] ~= '' then
    local day = prefix .. ':d:' .. ARGV[i + 2]
    redis.call('HSET', day, ARGV[i], ARGV[i + 3])
    redis.call('EXPIREAT', day, math.floor((tonumber(ARGV[i + 2]) + 1) * 86400 - 28800 + ttl))
  end
end
redis.call('EXPIRE', zset, math.ceil(ttl))
return out
"""

# KEYS[1] the sorted set. ARGV: prefix, then members. Returns 1 per member cleared, else 0.
_CLEAR = """
local zset, prefix = KEYS[1], ARGV[1]
local out = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', zset, ARGV[i])
  if score then
    redis.call('ZREM', zset, ARGV[i])
    local day = math.floor((tonumber(score) + 28800) / 86400)
    redis.call('HDEL', prefix .. ':d:' .. day, ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


@dataclass(frozen=True)
class TrackingSettings:
    """The `[tracking]` section: where tracked sends live and how long at most."""

    key_prefix: str = "alicom:track"
    ttl_s: float = 35 * _DAY_S
    tasks_prefix: str = tasks.DEFAULT_PREFIX
    """Where send tasks are kept (`consumer.reports.tasks`)."""
    stats_prefix: str = delivery_stats.DEFAULT_PREFIX
    """The delivery-stats handler's `prefix`, whose `submitted` counter each new send adds to;
    "" leaves the statistics alone."""
    hash_numbers: bool = False
    """Store task numbers as keyed hashes (`consumer.reports.phone_ids`)."""

    def __post_init__(self) -> None:
        if not self.key_prefix or not self.tasks_prefix:
            raise ConfigError("tracking.key_prefix and tracking.tasks_prefix must not be empty")
        if not self.ttl_s >= 31 * _DAY_S:
            raise ConfigError("tracking.ttl_s must be at least 31 days (2678400), past the 30 "
                              f"days QuerySendDetails covers; got {self.ttl_s!r}")


@dataclass(frozen=True, slots=True)
class TrackedSend:
    """One number of one send. `sent_at` is epoch seconds (see `epoch_of` for other forms);
    `task_id` groups sends into one task (default: the BizId, i.e. one task per send call)."""

    biz_id: str
    phone_number: str
    sent_at: float
    out_id: str = ""
    task_id: str = ""

    @property
    def send_date(self) -> str:
        """The send day as QuerySendDetails wants it: yyyyMMdd in Asia/Shanghai."""
        return dt.datetime.fromtimestamp(self.sent_at, SHANGHAI).strftime("%Y%m%d")


def epoch_of(when: dt.datetime | dt.date | float | None) -> float:
    """Epoch seconds of a send time: an aware datetime; a naive one read as Asia/Shanghai (the
    platform's clock); a date (its Shanghai midnight); epoch seconds; None for now."""
    if when is None:
        return time.time()
    if isinstance(when, dt.datetime):
        aware = when if when.tzinfo is not None else when.replace(tzinfo=SHANGHAI)
        return aware.timestamp()
    if isinstance(when, dt.date):
        return dt.datetime(when.year, when.month, when.day, tzinfo=SHANGHAI).timestamp()
    return float(when)


def _member(biz_id: str, phone: str) -> str:
    if not biz_id or "|" in biz_id or "|" in phone or not phone:
        raise ValueError("biz_id and phone_number must be non-empty and free of '|'")
    return f"{biz_id}|{normalise_phone(phone)}"


class SendTracker:
    """Pending sends in Redis; thread-safe as its redis client is. Errors are redis-py's."""

    def __init__(self, client: RedisClient, settings: TrackingSettings | None = None,
                 ids: PhoneIds | None = None) -> None:
        self._client = client
        self._settings = settings or TrackingSettings()
        self._zset = self._settings.key_prefix + ":z"
        self._record = client.register_script(_RECORD)
        self._clear = client.register_script(_CLEAR)
        self.ids = ids or phone_ids(self._settings.hash_numbers)
        self.tasks = tasks.TaskStore(client, self._settings.tasks_prefix, self._settings.ttl_s)

    def record(self, biz_id: str, phone_number: str,
               send_date: dt.datetime | dt.date | float | None = None, out_id: str = "",
               task_id: str = "") -> bool:
        """Tracks one send (`send_date`: see `epoch_of`); False if it was tracked already."""
        return self.record_many([TrackedSend(biz_id, phone_number, epoch_of(send_date),
                                             out_id, task_id)])[0]

    def record_many(self, sends: Iterable[TrackedSend]) -> list[bool]:
        """Tracks sends, their tasks and the `submitted` statistics in one round trip; per
        send, True when newly tracked."""
        args: list[Any] = [self._settings.key_prefix, time.time(), self._settings.ttl_s]
        numbers: list[tuple[str, str, str, str, int]] = []
        stats = self._settings.stats_prefix
        for s in sends:
            day = int((s.sent_at + _SHANGHAI_OFFSET_S) // _DAY_S)
            args += [_member(s.biz_id, s.phone_number), repr(s.sent_at), day, s.out_id]
            hour, expire_at = (delivery_stats.hour_bucket(stats, s.sent_at) if stats
                               else ("", 0))
            numbers.append((s.task_id or s.biz_id, s.biz_id, self.ids(s.phone_number), hour,
                            expire_at))
        if not numbers:
            return []
        pipe = self._client.pipeline(transaction=False)
        self._record(keys=[self._zset], args=args, client=pipe)
        self.tasks.record(numbers, pipe)
        replies = cast(list[int], pipe.execute()[0])
        return [bool(r) for r in replies]

    def clear(self, biz_id: str, phone_number: str) -> bool:
        """Stops tracking one send (its receipt arrived); False if it was not tracked."""
        return self.clear_many([(biz_id, phone_number)])[0]

    def clear_many(self, keys: Sequence[tuple[str, str]],
                   settle: Sequence[tasks.Outcome] = ()) -> list[bool]:
        """`clear` for many (biz_id, phone_number) pairs in one round trip; `settle` moves
        task numbers to their outcome in the same round trip (`TaskStore.settle`)."""
        if not keys:
            return []
        members = [_member(b, p) for b, p in keys]
        pipe = self._client.pipeline(transaction=False)
        self._clear(keys=[self._zset], args=[self._settings.key_prefix, *members], client=pipe)
        self.tasks.settle(settle, pipe)
        replies = cast(list[int], pipe.execute()[0])
        return [bool(r) for r in replies]

    def pending(self, older_than_s: float = 0.0, limit: int = 1000) -> list[TrackedSend]:
        """Tracked sends sent at least `older_than_s` ago, oldest first, at most `limit`."""
        cutoff = time.time() - older_than_s
        rows = cast(list[tuple[bytes, float]], self._client.zrangebyscore(
            self._zset, "-inf", cutoff, start=0, num=limit, withscores=True))
        if not rows:
            return []
        pipe = self._client.pipeline(transaction=False)
        for member, score in rows:
            day = int((score + _SHANGHAI_OFFSET_S) // _DAY_S)
            pipe.hget(f"{self._settings.key_prefix}:d:{day}", member)
        out_ids = cast(list[bytes | None], pipe.execute())
        sends = []
        for (member, score), out_id in zip(rows, out_ids, strict=True):
            biz_id, _, phone = member.decode("utf-8").partition("|")
            sends.append(TrackedSend(biz_id, phone, score,
                                     out_id.decode("utf-8") if out_id else ""))
        return sends

    def count(self) -> int:
        """How many sends are tracked (pending), whatever their age."""
        return int(self._client.zcard(self._zset))
