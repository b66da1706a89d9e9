"""Delivery statistics: per-hour counters of SmsReports in Redis, their layout and writing.

Reading them back is `consumer.reports.hour_counts` (`alicom-receipts stats` and the dashboard).

Storage: one hash per hour, `<prefix>:h:<yyyymmddhh>`, the hour in **UTC**. Asia/Shanghai
(the platform's clock, in which every receipt time is written) is UTC+8 all year, so its
hours are the same buckets; only the label differs, and a UTC key never depends on where
the reader sits. The `stats` command shows hours in any `--tz` (default Asia/Shanghai).

A receipt is counted in the hour of its **send_time** (falling back to its report time,
then to the time it was handled): the tracked submissions of a send (`record_submitted`) go
to that same hour, so an hour's "submitted - delivered - failed" is the number of its sends
still without a receipt, and a late receipt improves its own hour's rate instead of a later
one's. Fields of a bucket (absent = 0):

| field                   | meaning                                                        |
|-------------------------|----------------------------------------------------------------|
| `submitted`             | messages recorded as sent (by the send tracker)                |
| `delivered` / `failed`  | receipts with success true / false (Intl: Status "1" / "2")    |
| `other`                 | Intl receipts with another Status (e.g. "6"): not in the rate  |
| `fail:<err_code>`       | failed receipts by error code (`(empty)` when it has none)     |
| `delay_count`, `delay_sum_ms` | receipts with a measurable delay, and its sum            |
| `delay_le_ms:<bound>`   | how many had delay <= bound (and > the bound below); `inf`     |

Receipt delay = report_time - send_time (whole seconds, as the platform writes them);
negative delays count as 0; delays above `MAX_DELAY_S` (a broken clock or date) are left out
of the delay figures. A bucket expires `ttl_s` after the end of its hour (EXPIREAT, so late
updates do not extend it). `<prefix>:codes` keeps the latest err_msg the platform sent with
each failure code, as a hint for codes without a published meaning.

Dedup runs before handlers, but a handler may still see a receipt twice (another handler of
the same receipt failed, so it is delivered again). So each receipt's counting is one Lua
script that first sets a marker `<prefix>:once:<dedup key>` (NX, `once_ttl_s`) and counts
only when the marker is new: counting stays exact across such retries. `once_ttl_s = 0`
turns markers off (saves ~150 bytes per receipt for that time; counts become at least once).

`<prefix>` is hash-tagged (`{alicom:stats}:h:...`): the whole family lives in one Redis
Cluster slot, so the count script (a bucket and a marker) is legal on a cluster and through
Tair's proxy, and `record` is one round trip to one node (`consumer.clients.redis_scripts`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from redis.client import Pipeline
from redis.cluster import ClusterPipeline
from redis.commands.core import Script

from consumer.clients.redis_client import RedisClient, hash_tagged
from consumer.clients.redis_scripts import Replication, ScriptCall, run_calls
from consumer.keys import dedup_key
from consumer.receipts import SHANGHAI, IntlSmsReport, Receipt, SmsReport

__all__ = [
    "DEFAULT_PREFIX",
    "DELAY_BOUNDS_MS",
    "Observation",
    "StatsWriter",
    "codes_key",
    "hour_bucket",
    "hour_key",
    "hour_start",
    "observe",
    "record_submitted",
]

DEFAULT_PREFIX = "alicom:stats"
DEFAULT_TTL_S = 90 * 24 * 3600.0
DEFAULT_ONCE_TTL_S = 3 * 24 * 3600.0
"""Longer than the retry span of the default ack settings (20 deliveries, backoff <= 1 h)."""
MAX_DELAY_S = 3 * 24 * 3600
"""Carriers keep an undelivered SMS at most 48-72 h; a longer "delay" is a bad timestamp."""
DELAY_BOUNDS_MS: tuple[int, ...] = (
    1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000, 120_000, 300_000, 600_000,
    1_800_000, 3_600_000,
)
"""Upper bounds of the delay buckets; a last, open bucket `inf` holds the rest."""
_MAX_CODE_CHARS = 64  # a code is platform input: bound the hash field names it creates
_MAX_MSG_CHARS = 200
_EMPTY_CODE = "(empty)"

# KEYS[1] bucket hash, KEYS[2] once-marker (only read when ARGV[2] > 0).
# ARGV[1] EXPIREAT of the bucket (unix s), ARGV[2] marker lifetime ms (0: no marker),
# ARGV[3..] field, amount pairs. Returns 1 when counted, 0 for a receipt counted before.
_COUNT_LUA = """
if tonumber(ARGV[2]) > 0 then
  if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return 0 end
end
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] the codes hash. ARGV[1] its EXPIRE (s), ARGV[2..] code, message pairs.
_CODES_LUA = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

RedisLike = RedisClient | Pipeline | ClusterPipeline


def _family(prefix: str) -> str:
    """The hash-tagged prefix: every statistics key in one cluster slot (the count script
    touches a bucket and a once-marker together)."""
    return hash_tagged(prefix)


def hour_key(prefix: str, hour: datetime) -> str:
    """The bucket of the UTC hour containing `hour` (an aware datetime)."""
    return "%s:h:%s" % (_family(prefix), hour.astimezone(timezone.utc).strftime("%Y%m%d%H"))


def hour_start(moment: datetime) -> datetime:
    """The start of the UTC hour holding `moment` (an aware datetime): a bucket's hour."""
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _expire_at(hour: datetime, ttl_s: float) -> int:
    return int(hour_start(hour).timestamp() + 3600 + ttl_s)


# -- what one receipt contributes ------------------------------------------------------------

def parse_receipt_time(text: str) -> datetime | None:
    """An aware datetime from `yyyy-MM-dd HH:mm:ss` / `yyyyMMddHHmmss` (Asia/Shanghai, as
    the platform writes them) or an RFC 2822 date with offset (international reports);
    None when empty or unparsable."""
    text = text.strip()
    if len(text) == 19 and text[4] == "-" and text[10] == " ":
        # The common shape, parsed in C (strptime costs ~25 us; this runs per receipt).
        try:
            return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)
        except ValueError:
            pass
    for pattern in ("%Y-%m-%d %H:%M:%S", "%Y%m%d%H%M%S"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=SHANGHAI)
        except ValueError:
            pass
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    # "-0000" means "zone unknown" in RFC 2822; the platform's clock is the best guess then.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=SHANGHAI)


@dataclass(frozen=True, slots=True)
class Observation:
    """One report's contribution: its hour (UTC start), outcome, code and delay."""

    hour: datetime
    outcome: str  # "delivered" | "failed" | "other"
    err_code: str = ""
    err_msg: str = ""
    delay_ms: int | None = None

    def fields(self) -> list[tuple[str, int]]:
        """The (hash field, increment) pairs of this observation."""
        out = [(self.outcome, 1)]
        if self.outcome == "failed":
            out.append(("fail:" + (self.err_code or _EMPTY_CODE)[:_MAX_CODE_CHARS], 1))
        if self.delay_ms is not None:
            bound = next((str(b) for b in DELAY_BOUNDS_MS if self.delay_ms <= b), "inf")
            out += [("delay_count", 1), ("delay_sum_ms", self.delay_ms),
                    ("delay_le_ms:" + bound, 1)]
        return out


def observe(receipt: Receipt, now: float) -> Observation | None:
    """What `receipt` adds to the stats (None for types other than delivery reports).

    `now` (epoch seconds) places a report whose times are both unreadable."""
    if isinstance(receipt, SmsReport):
        outcome = "delivered" if receipt.success else "failed"
        sent, reported = receipt.send_time, receipt.report_time
        code, msg = receipt.err_code, receipt.err_msg
    elif isinstance(receipt, IntlSmsReport):
        outcome = {"1": "delivered", "2": "failed"}.get(receipt.status, "other")
        sent, reported = receipt.send_date, receipt.receive_date
        code, msg = receipt.error_code, receipt.error_description
    else:
        return None
    sent_at, reported_at = parse_receipt_time(sent), parse_receipt_time(reported)
    delay_ms: int | None = None
    if sent_at is not None and reported_at is not None:
        delay_s = max(0.0, (reported_at - sent_at).total_seconds())
        delay_ms = round(delay_s * 1000) if delay_s <= MAX_DELAY_S else None
    moment = sent_at or reported_at or datetime.fromtimestamp(now, timezone.utc)
    return Observation(hour_start(moment), outcome, code, msg, delay_ms)


# -- writing -----------------------------------------------------------------------------------

class StatsWriter:
    """Counts delivery reports into the hour buckets; thread-safe (redis-py pools).

    `record(receipts)` costs one round trip (a pipeline with one script call per report) and
    returns, per receipt, None (counted now or before) or the exception Redis answered with.
    A connection failure raises `redis.RedisError` for the whole batch.

    `wait` (a `wait_replicas` option): the round trip ends with WAIT, and fewer replicas
    than asked raises `NotReplicatedError` (a `redis.RedisError`) for the whole batch, so the
    caller records it again: its once-markers were written with its counts (one script, one
    slot), so a count a failover kept is not added twice, and one it lost is added again.
    That needs the markers: `once_ttl_s` must be > 0 with `wait`.
    """

    def __init__(self, client: RedisClient, prefix: str = DEFAULT_PREFIX,
                 ttl_s: float = DEFAULT_TTL_S, once_ttl_s: float = DEFAULT_ONCE_TTL_S,
                 clock: Callable[[], float] = time.time,
                 key_of: Callable[[Receipt], str] = dedup_key,
                 wait: Replication | None = None) -> None:
        """`key_of` names the once-markers: the deployment's keyed dedup key function
        (consumer.handlers.sink_key_function), so no marker name holds a phone number."""
        if wait is not None and once_ttl_s <= 0:
            raise ValueError("waiting for replicas needs once-markers (once_ttl_s > 0): a "
                             "batch recorded again after a short WAIT would count twice")
        self._wait = wait
        self._key_of = key_of
        self._client = client
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._once_ms = int(once_ttl_s * 1000)
        self._clock = clock
        self._script: Script = client.register_script(_COUNT_LUA)
        self._codes: Script = client.register_script(_CODES_LUA)

    def record(self, receipts: Sequence[Receipt]) -> list[Exception | None]:
        now = self._clock()
        calls: list[ScriptCall] = []
        slots: list[int] = []  # index in `receipts` of each queued script call
        messages: dict[Any, Any] = {}  # code -> err_msg; redis-py's mapping types vary
        for index, receipt in enumerate(receipts):
            obs = observe(receipt, now)
            if obs is None:
                continue
            args: list[Any] = [_expire_at(obs.hour, self._ttl_s), self._once_ms]
            for name, amount in obs.fields():
                args += [name, amount]
            keys = [hour_key(self._prefix, obs.hour),
                    "%s:once:%s" % (_family(self._prefix), self._key_of(receipt))]
            calls.append(ScriptCall(self._script, keys, args))
            slots.append(index)
            if obs.outcome == "failed" and obs.err_msg:
                code = (obs.err_code or _EMPTY_CODE)[:_MAX_CODE_CHARS]
                messages[code] = obs.err_msg[:_MAX_MSG_CHARS]
        if not slots:
            return [None] * len(receipts)
        if messages:  # a hint for the report; not worth a second round trip
            pairs = [item for code_msg in messages.items() for item in code_msg]
            calls.append(ScriptCall(self._codes, [codes_key(self._prefix)],
                                    [int(self._ttl_s), *pairs]))
        replies = run_calls(self._client, calls, wait=self._wait)
        results: list[Exception | None] = [None] * len(receipts)
        for index, reply in zip(slots, replies, strict=False):
            if isinstance(reply, Exception):
                results[index] = reply
        return results


def codes_key(prefix: str) -> str:
    """The hash of the latest err_msg per err_code."""
    return _family(prefix) + ":codes"


def hour_bucket(prefix: str, epoch_s: float, ttl_s: float = DEFAULT_TTL_S) -> tuple[str, int]:
    """The bucket key of the hour holding `epoch_s` and its EXPIREAT (for writers that count
    `submitted` inside their own script, like the send tracker)."""
    moment = datetime.fromtimestamp(epoch_s, timezone.utc)
    return hour_key(prefix, moment), _expire_at(moment, ttl_s)


def record_submitted(client: RedisLike, when: datetime | float, count: int = 1, *,
                     prefix: str = DEFAULT_PREFIX, ttl_s: float = DEFAULT_TTL_S) -> None:
    """Adds `count` messages sent at `when` to that hour's `submitted` counter.

    For the send tracker: `when` is the send time, an aware datetime, epoch seconds, or a
    naive datetime taken as Asia/Shanghai (the platform's clock). Given a pipeline, the two
    commands are only queued: the caller's `execute()` sends them with its own.
    """
    if isinstance(when, datetime):
        moment = when if when.tzinfo is not None else when.replace(tzinfo=SHANGHAI)
    else:
        moment = datetime.fromtimestamp(when, timezone.utc)
    key, expire_at = hour_bucket(prefix, moment.timestamp(), ttl_s)
    pipe = client if isinstance(client, Pipeline) else client.pipeline(transaction=False)
    pipe.hincrby(key, "submitted", count)
    pipe.expireat(key, expire_at)
    if pipe is not client:
        pipe.execute()
