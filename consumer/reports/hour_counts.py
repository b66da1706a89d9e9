"""The delivery statistics read back: an hour's counters (`HourCounts`), sums of hours, and
the platform's latest err_msg per failure code, for `alicom-receipts stats`
(`consumer.reports.delivery_report`) and the dashboard.

The keys and fields are `consumer.reports.delivery_stats`' (which writes them): one hash per
UTC hour; a field that is absent reads as 0, and a field this version does not know (a
delay bound from another version) is left out. Reading never writes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from consumer.clients.redis_client import RedisClient
from consumer.reports.delivery_stats import (
    DEFAULT_PREFIX,
    DELAY_BOUNDS_MS,
    codes_key,
    hour_key,
    hour_start,
)

__all__ = ["HourCounts", "read_code_messages", "read_hours", "total"]


@dataclass
class HourCounts:
    """The counters of one hour (or, from `total`, of several: then `hour` is the first)."""

    hour: datetime
    submitted: int = 0
    delivered: int = 0
    failed: int = 0
    other: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    delay_count: int = 0
    delay_sum_ms: int = 0
    delay_buckets: list[int] = field(default_factory=lambda: [0] * (len(DELAY_BOUNDS_MS) + 1))
    tracked_pending: int | None = None
    """Set by `total`: the sum of `pending` over the hours that had tracked sends."""

    @property
    def receipts(self) -> int:
        return self.delivered + self.failed + self.other

    @property
    def empty(self) -> bool:
        return self.submitted == 0 and self.receipts == 0

    @property
    def success_rate(self) -> float | None:
        """delivered / (delivered + failed); None without such receipts."""
        decided = self.delivered + self.failed
        return self.delivered / decided if decided else None

    @property
    def pending(self) -> int | None:
        """Tracked sends still without a receipt; None when none were tracked. For a total,
        summed per hour: an hour without tracked sends adds nothing, whatever it received."""
        if self.tracked_pending is not None:
            return self.tracked_pending if self.submitted else None
        return max(0, self.submitted - self.receipts) if self.submitted else None

    @property
    def delay_avg_s(self) -> float | None:
        return self.delay_sum_ms / self.delay_count / 1000 if self.delay_count else None

    def delay_quantile_s(self, q: float) -> float | None:
        """The upper bound (s) of the bucket holding the q-quantile; inf for the open bucket.

        The rank is ceil(q * n) (the median of 5 delays is the 3rd smallest).
        """
        n = sum(self.delay_buckets)
        if not n:
            return None
        rank, seen = max(1, math.ceil(q * n)), 0
        for bound, count in zip((*DELAY_BOUNDS_MS, math.inf), self.delay_buckets, strict=True):
            seen += count
            if seen >= rank:
                return bound / 1000
        return math.inf  # unreachable: the last bucket completes n

    def add(self, other: HourCounts) -> None:
        self.submitted += other.submitted
        self.delivered += other.delivered
        self.failed += other.failed
        self.other += other.other
        for code, n in other.failures.items():
            self.failures[code] = self.failures.get(code, 0) + n
        self.delay_count += other.delay_count
        self.delay_sum_ms += other.delay_sum_ms
        self.delay_buckets = [a + b for a, b in
                              zip(self.delay_buckets, other.delay_buckets, strict=True)]


_BUCKET_INDEX = {str(b): i for i, b in enumerate(DELAY_BOUNDS_MS)} | {"inf": len(DELAY_BOUNDS_MS)}
_PLAIN = ("submitted", "delivered", "failed", "other", "delay_count", "delay_sum_ms")


def _parse_hash(hour: datetime, raw: dict[bytes, bytes]) -> HourCounts:
    counts = HourCounts(hour)
    for key, value in raw.items():
        name, amount = key.decode("utf-8", "replace"), int(value)
        if name in _PLAIN:
            setattr(counts, name, amount)
        elif name.startswith("fail:"):
            counts.failures[name[5:]] = amount
        elif name.startswith("delay_le_ms:") and name[12:] in _BUCKET_INDEX:
            counts.delay_buckets[_BUCKET_INDEX[name[12:]]] = amount
    return counts


def read_hours(client: RedisClient, first: datetime, hours: int,
               prefix: str = DEFAULT_PREFIX) -> list[HourCounts]:
    """The counters of `hours` consecutive UTC hours from the one containing `first`, oldest
    first (empty hours included), read in pipelines of 500 HGETALLs."""
    start = hour_start(first)
    moments = [start + timedelta(hours=i) for i in range(hours)]
    out: list[HourCounts] = []
    for chunk in range(0, len(moments), 500):
        part = moments[chunk:chunk + 500]
        pipe = client.pipeline(transaction=False)
        for moment in part:
            pipe.hgetall(hour_key(prefix, moment))
        out += [_parse_hash(m, raw) for m, raw in zip(part, pipe.execute(), strict=True)]
    return out


def total(hours: Iterable[HourCounts], first: datetime) -> HourCounts:
    """All counters of `hours` summed (labelled with `first`)."""
    out = HourCounts(first, tracked_pending=0)
    pending = 0
    for counts in hours:
        out.add(counts)
        pending += counts.pending or 0
    out.tracked_pending = pending
    return out


def read_code_messages(client: RedisClient, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """The latest err_msg the platform sent with each failure code."""
    raw: dict[bytes, bytes] = client.hgetall(codes_key(prefix))  # type: ignore[assignment]
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}

