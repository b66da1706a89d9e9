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
Keys live under the hash-tagged prefix (`{alicom:track}:z`): one cluster slot. Each send's
write is one Lua script call naming its keys in KEYS (legal on a Redis Cluster and through
Tair's proxy); a batch is one round trip per node (`consumer.clients.redis_scripts`). The
send-tracker handler's receipts are cleared and settled by one script call per batch, which
reads its keys by index (`consumer.reports.tracking_scripts`; one call per send call and day
where a server refuses that).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from redis.exceptions import RedisError

from consumer.clients.redis_client import RedisClient, hash_tagged, transient_from_redis
from consumer.clients.redis_scripts import (
    BATCH_REFUSED,
    ScriptCall,
    ScriptPlan,
    json_arg,
    run_calls,
    run_plans,
)
from consumer.receipts import SHANGHAI, SHANGHAI_UTC_OFFSET_S, shanghai_day
from consumer.reports import delivery_stats, tasks
from consumer.reports import tracking_scripts as scripts
from consumer.reports.phone_ids import PhoneIds, normalise_phone, phone_ids
from consumer.settings import TrackingSettings

__all__ = ["SendTracker", "TrackedSend", "TrackingSettings", "normalise_phone"]

log = structlog.get_logger(__name__)

_DAY_S = 86400

#: A send to clear and settle (`SendTracker.settle_plan`): biz_id, phone number, its task
#: number in stored form, its send day (days since 1970, Asia/Shanghai), delivered,
#: err_code, reason.
Settled = tuple[str, str, str, int, bool, str, str]


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
        self._tag = hash_tagged(self._settings.key_prefix)
        self._zset = self._tag + ":z"
        self._trim = client.register_script(scripts.TRIM)
        self._record = client.register_script(scripts.RECORD)
        self._clear = client.register_script(scripts.CLEAR)
        self._scores = client.register_script(scripts.SCORES)
        self._clear_on_day = client.register_script(scripts.CLEAR_ON_DAY_AND_SETTLE)
        self._clear_on_day_batch = client.register_script(scripts.CLEAR_ON_DAY_AND_SETTLE_MANY)
        #: A batch's receipts cleared and settled in one script call (False once a server
        #: refused that script: then one call per send call and day).
        self.one_call_per_batch = True
        self.ids = ids or phone_ids(self._settings.hash_numbers)
        self.tasks = tasks.TaskStore(client, self._settings.tasks_prefix, self._settings.ttl_s)
        #: The task keys share the tracked sends' slot: one script clears and settles.
        self._one_slot = self.tasks.tag == self._tag[:self._tag.index("}") + 1]

    def record(self, biz_id: str, phone_number: str,
               send_date: dt.datetime | dt.date | float | None = None, out_id: str = "",
               task_id: str = "") -> bool:
        """Tracks one send (`send_date`: see `epoch_of`); False if it was tracked already."""
        return self.record_many([TrackedSend(biz_id, phone_number, epoch_of(send_date),
                                             out_id, task_id)])[0]

    def record_many(self, sends: Iterable[TrackedSend]) -> list[bool]:
        """Tracks sends and their tasks in one round trip (per node), then adds the numbers
        new to their task to the `submitted` statistics (a second, only when there are
        some); per send, True when newly tracked."""
        ttl = self._settings.ttl_s
        batch = list(sends)
        if not batch:
            return []
        calls = [ScriptCall(self._trim, [self._zset], [time.time() - ttl])]
        for s in batch:
            day = shanghai_day(s.sent_at)
            day_expire = _first_second(day + 1) + int(ttl)
            calls.append(ScriptCall(self._record, [self._zset, self._day_key(day)], [
                _member(s.biz_id, s.phone_number), repr(s.sent_at), s.out_id, day_expire,
                int(ttl) + 1]))
        task_calls = self.tasks.record_calls(
            (s.task_id or s.biz_id, s.biz_id, self.ids(s.phone_number)) for s in batch)
        replies = run_calls(self._client, calls + task_calls)
        tracked = [_flag(reply) for reply in replies[1:len(calls)]]
        new_numbers = [_flag(reply) for reply in replies[len(calls) + 1:]]
        self._count_submitted([s for s, new in zip(batch, new_numbers, strict=True) if new])
        return tracked

    def _count_submitted(self, sends: list[TrackedSend]) -> None:
        stats = self._settings.stats_prefix
        if not stats or not sends:
            return
        per_hour: Counter[tuple[str, int]] = Counter(
            delivery_stats.hour_bucket(stats, s.sent_at) for s in sends)
        pipe = self._client.pipeline(transaction=False)
        for (hour, expire_at), count in per_hour.items():
            pipe.hincrby(hour, "submitted", count)
            pipe.expireat(hour, expire_at)
        pipe.execute()

    def clear(self, biz_id: str, phone_number: str) -> bool:
        """Stops tracking one send (its receipt arrived); False if it was not tracked."""
        return self.clear_many([(biz_id, phone_number)])[0]

    def clear_many(self, keys: Sequence[tuple[str, str]],
                   settle: Sequence[tasks.Outcome] = (),
                   sent_at: Sequence[float] = ()) -> list[bool]:
        """`clear` for many (biz_id, phone_number) pairs; `settle` (empty, or one outcome per
        pair, in order) moves their task numbers to their outcome with them. Two round
        trips: one reads each send's day, one writes (when the task keys share the tracked
        sends' slot, as by default, one script call as with `sent_at` below; else two per
        receipt). With `settle` and `sent_at` (each pair's send time as its receipt tells
        it, epoch s) and the shared slot, the day is not read first: one round trip, and a
        second only for sends tracked on another day than their receipt says."""
        return cast(list[bool], run_plans(self._client, [self.clear_plan(keys, settle,
                                                                          sent_at)])[0])

    def clear_plan(self, keys: Sequence[tuple[str, str]],
                   settle: Sequence[tasks.Outcome] = (),
                   sent_at: Sequence[float] = ()) -> ScriptPlan[list[bool]]:
        """`clear_many` as a plan (`consumer.clients.redis_scripts.run_plans`): its one script
        call when `clear_many` makes a single round trip (see there); otherwise no call, and
        the whole of `clear_many` (its round trips) in the plan's finish."""
        if not keys:
            return ScriptPlan((), lambda _replies: [])
        if (settle and len(settle) != len(keys)) or (sent_at and len(sent_at) != len(keys)):
            raise ValueError("settle and sent_at must hold one entry per key")
        if settle and sent_at:
            return self.settle_plan([(b, p, o.number, shanghai_day(at), o.delivered, o.err_code,
                                      o.reason)
                                     for (b, p), o, at in zip(keys, settle, sent_at, strict=True)])
        members = [_member(b, p) for b, p in keys]
        return ScriptPlan((), lambda _replies: self._clear_read_first(members, settle))

    def settle_plan(self, sends: Sequence[Settled]) -> ScriptPlan[list[bool]]:
        """`clear_plan` with `settle` and `sent_at`, in one pass: the send-tracker handler's
        hot path. Per send (biz_id, phone_number, its task number in stored form, its send
        day as the receipt tells it (days since 1970, Asia/Shanghai), delivered, err_code,
        reason); ValueError for a biz_id or number that is empty or holds '|'."""
        if not sends:
            return ScriptPlan((), lambda _replies: [])
        if not self._one_slot:  # the task keys in a slot of their own: read first
            members = [_member(biz, phone) for biz, phone, *_ in sends]
            settle = [tasks.Outcome(biz, number, delivered, code, reason)
                      for biz, _, number, _, delivered, code, reason in sends]
            return ScriptPlan((), lambda _replies: self._clear_read_first(members, settle))
        rows: list[tuple[str, ...]] = []
        groups: dict[tuple[int, str], list[int]] = {}
        for biz, phone, number, day, delivered, code, reason in sends:
            if not biz or not phone or "|" in biz or "|" in phone:
                raise ValueError("biz_id and phone_number must be non-empty and free of '|'")
            member = f"{biz}|{normalise_phone(phone)}"
            # The scripts' row (`tracking_scripts`): a delivery's err_code and reason are not
            # read, so not sent: two arguments fewer to pack per receipt.
            rows.append((member, number, "d") if delivered
                        else (member, number, "f", *tasks.failure_fields(code, reason)))
            groups.setdefault((day, biz), []).append(len(rows) - 1)
        if not rows:
            return ScriptPlan((), lambda _replies: [])
        return self._on_day_plan(_Batch(rows, int(time.time()), int(self._settings.ttl_s),
                                        groups))

    def _clear_read_first(self, members: list[str],
                          settle: Sequence[tasks.Outcome]) -> list[bool]:
        """Reads each send's score (its day) first, then clears (and settles) on that day."""
        scores = run_calls(self._client, [ScriptCall(self._scores, [self._zset], members)])[0]
        if isinstance(scores, Exception):
            raise scores
        if settle and self._one_slot:  # each send's own day: the guess below cannot miss
            plan = self.settle_plan([
                (o.biz_id, m.partition("|")[2], o.number, shanghai_day(float(s or 0)), o.delivered,
                 o.err_code, o.reason) for m, o, s in zip(members, settle, scores, strict=True)])
            return cast(list[bool], run_plans(self._client, [plan])[0])
        days = [self._day_key(shanghai_day(float(score or 0)))
                for score in scores]
        cleared = [score is not None for score in scores]
        calls = [ScriptCall(self._clear, [self._zset, day], [member])
                 for member, day, was in zip(members, days, cleared, strict=True) if was]
        replies = run_calls(self._client, calls + self.tasks.settle_calls(settle))
        moved = iter(_flag(reply) for reply in replies[:len(calls)])
        return [next(moved) if was else False for was in cleared]

    def _on_day_plan(self, batch: _Batch) -> ScriptPlan[list[bool]]:
        """One script call for the batch (else one per guessed send day and BizId: see
        `one_call_per_batch`); its finish clears the sends the guess missed (tracked on
        another day: around midnight, or a receipt without a readable send time)."""
        if not self.one_call_per_batch:
            return ScriptPlan((), lambda _replies: self._settled(batch,
                                                                 self._per_group(batch)))
        return ScriptPlan([self._batch_call(batch)], lambda replies: self._settled(
            batch, self._batch_answers(batch, replies[0])))

    def _per_group(self, batch: _Batch) -> list[Any]:
        """The answers of one `CLEAR_ON_DAY_AND_SETTLE` call per group (in group order)."""
        calls = [ScriptCall(self._clear_on_day, [
            self._zset, self._day_key(day), *self.tasks.keys_of(biz)], [
                batch.now, batch.ttl, _first_second(day),
                json_arg([batch.rows[i] for i in indexes])])
            for (day, biz), indexes in batch.groups.items()]
        return [answer for reply in run_calls(self._client, calls) for answer in _listed(reply)]

    def _settled(self, batch: _Batch, answers: list[Any]) -> list[bool]:
        """Per member, whether its send was cleared; `CLEAR` for those tracked on another
        day than the guess (their score came back instead of 1 / 0)."""
        out = [False] * len(batch.rows)
        missed: list[tuple[int, str]] = []  # (index, the day key its send was tracked on)
        order = [i for indexes in batch.groups.values() for i in indexes]
        for i, answer in zip(order, answers, strict=True):
            if isinstance(answer, bytes | str):
                day = shanghai_day(float(answer))
                missed.append((i, self._day_key(day)))
            else:
                out[i] = bool(answer)
        if missed:
            again = run_calls(self._client, [ScriptCall(
                self._clear, [self._zset, day], [batch.rows[i][0]]) for i, day in missed])
            for (i, _), reply in zip(missed, again, strict=True):
                out[i] = _flag(reply)
        return out

    def _batch_call(self, batch: _Batch) -> ScriptCall:
        """The batch script's call: every group's receipts."""
        keys, groups = [self._zset], list[tuple[int, list[tuple[str, ...]]]]()
        counts, numbers = self.tasks.settle_prefixes  # `tasks.keys_of`, without a call per group
        day_keys: dict[int, str] = {}
        rows = batch.rows
        for (day, biz), indexes in batch.groups.items():
            day_key = day_keys.get(day) or day_keys.setdefault(day, self._day_key(day))
            keys += (day_key, counts + biz, numbers + biz)
            groups.append((_first_second(day), [rows[i] for i in indexes]))
        return ScriptCall(self._clear_on_day_batch, keys, [batch.now, batch.ttl,
                                                           json_arg(groups)])

    def _batch_answers(self, batch: _Batch, reply: Any) -> list[Any]:
        """The batch script's answer per receipt (in group order); when the server refused
        the script (nothing ran), the per-group calls' answers, and this and every later
        batch go per group."""
        if not isinstance(reply, Exception):
            return list(reply)
        if not (isinstance(reply, RedisError) and BATCH_REFUSED.search(str(reply))):
            raise reply
        self.one_call_per_batch = False
        # Scrubbed: a server's or proxy's reply could echo a URL or the password.
        error = str(transient_from_redis(reply, "send-tracker batch", self._client))
        log.warning("tracking_batch_script_refused", error=error,
                    note="one script call per send call and day from now on (a cluster proxy?)")
        return self._per_group(batch)

    def _day_key(self, day: int) -> str:
        return f"{self._tag}:d:{day}"

    def pending(self, older_than_s: float = 0.0, limit: int = 1000) -> list[TrackedSend]:
        """Tracked sends sent at least `older_than_s` ago, oldest first, at most `limit`."""
        cutoff = time.time() - older_than_s
        rows = cast(list[tuple[bytes, float]], self._client.zrangebyscore(
            self._zset, "-inf", cutoff, start=0, num=limit, withscores=True))
        if not rows:
            return []
        pipe = self._client.pipeline(transaction=False)
        for member, score in rows:
            day = shanghai_day(score)
            pipe.hget(self._day_key(day), member)
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


def _listed(reply: Any) -> list[Any]:
    """A script call's list answer; an error Redis answered with is raised."""
    if isinstance(reply, Exception):
        raise reply
    return list(reply)


def _flag(reply: Any) -> bool:
    """A script call's 1/0 answer; an error Redis answered with is raised."""
    if isinstance(reply, Exception):
        raise reply
    return bool(reply)


@dataclass
class _Batch:
    """A batch being cleared on its receipts' send days: per receipt its row for the settle
    scripts (`settle_plan`; they get a group's rows as one JSON argument), and `groups`
    mapping (day, BizId) to the indexes of its rows."""

    rows: Sequence[tuple[str, ...]]
    now: int
    ttl: int
    groups: dict[tuple[int, str], list[int]] = field(default_factory=dict)


def _first_second(day: int) -> int:
    """Epoch seconds of the Asia/Shanghai midnight that starts `day` (`shanghai_day`)."""
    return day * _DAY_S - SHANGHAI_UTC_OFFSET_S
