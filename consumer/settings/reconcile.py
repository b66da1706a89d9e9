"""The `[reconcile]` and `[tracking]` sections: `alicom-receipts reconcile` and the send
tracker it reads (consumer.reports.tracking). Loaded with every other section by
`load_settings` (`Settings.reconcile`, `Settings.tracking`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from consumer.settings.schema import Section, number

_DAY_S = 86400.0


@dataclass(frozen=True)
class ReconcileSettings(Section):
    """The `[reconcile]` section.

    `endpoint` is Dysmsapi's "host[:port]" (None: dysmsapi[-vpc].<region>.aliyuncs.com next to
    the token endpoint, or the token endpoint itself for a local sandbox, which serves both);
    `protocol` None means the token API's. `grace_s`: only sends older than this are looked
    up. `qps`: request rate of the token bucket (the platform's limit is per account; leave
    room for the sending code). `max_sends` per run, `batch_size` receipts per pipeline batch.
    `max_attempts` tries per request (throttling, network, 5xx), waits up to `backoff_max_s`.
    """

    SECTION = "reconcile"
    endpoint: str | None = None
    protocol: str | None = None
    grace_s: float = number(900.0, 0, 30 * _DAY_S)
    window_days: int = number(30, 1, 30)
    qps: float = number(20.0, 0, 1000, low_open=True)
    page_size: int = number(50, 1, 50)
    batch_size: int = number(64, 1, 10_000)
    max_sends: int = number(10000, 1, 100_000_000)
    max_attempts: int = number(6, 1, 20)
    backoff_max_s: float = number(10.0, 0, 600, low_open=True)
    connect_timeout_s: float = number(5.0, 0, 120, low_open=True)
    read_timeout_s: float = number(10.0, 0, 120, low_open=True)

    def rules(self) -> list[str]:
        if self.protocol not in (None, "http", "https"):
            return [f"reconcile.protocol must be http or https, got {self.protocol!r}"]
        return []

    def with_limit(self, max_sends: int) -> ReconcileSettings:
        """A copy with `max_sends` replaced (checked like the setting itself)."""
        return dataclasses.replace(self, max_sends=max_sends)


@dataclass(frozen=True)
class TrackingSettings(Section):
    """The `[tracking]` section: where tracked sends live and how long at most (past the 30
    days QuerySendDetails covers)."""

    SECTION = "tracking"
    key_prefix: str = "alicom:track"
    ttl_s: float = number(35 * _DAY_S, 31 * _DAY_S, 400 * _DAY_S,
                          why="31-400 days: past the 30 days QuerySendDetails covers")
    tasks_prefix: str = "{alicom:track}:tasks"
    """Where send tasks are kept (`consumer.reports.tasks`, whose DEFAULT_PREFIX this is); in
    the tracked sends' hash tag, so a receipt clears its send and settles its task number in
    one script call."""
    stats_prefix: str = "alicom:stats"
    """The delivery-stats handler's `prefix` (its default), whose `submitted` counter each new
    send adds to; "" leaves the statistics alone."""
    hash_numbers: bool = False
    """Store task numbers as keyed hashes (`consumer.reports.phone_ids`)."""

    def rules(self) -> list[str]:
        return [f"tracking.{name} must not be empty" for name in ("key_prefix", "tasks_prefix")
                if not getattr(self, name)]
