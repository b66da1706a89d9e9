"""The sections of the configuration file, one frozen dataclass per `[table]`.

Every numeric field carries its documented range (`consumer.settings.schema.number`); the
example configuration (config/alicom-receipts.example.toml) states each range beside the
option. The `[push]`, `[reconcile]` and `[tracking]` sections live in
`consumer.settings.push` and `consumer.settings.reconcile`; `SECTIONS` in
`consumer.settings.load` lists them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consumer.errors import ConfigError
from consumer.handler_api import HandlerPolicy
from consumer.redis_url import redis_url_problems
from consumer.settings.schema import Section, did_you_mean, number, parse_address

_HOUR_S = 3600.0
_DAY_S = 24 * _HOUR_S
_YEAR_S = 365 * _DAY_S

#: Message types Alicom delivers through MNS queues (alicom.md, "The two receipt modes").
QUEUE_MESSAGE_TYPES: tuple[str, ...] = (
    "SmsReport", "SmsUp", "GlobeSmsReport", "MnsCardVender", "MnsCardTemplate",
    "SignSmsReport", "TemplateSmsReport",
)


def queue_problems(queues: tuple[str, ...]) -> list[str]:
    """`alicom.queues`: at least one known message type, none twice."""
    p: list[str] = []
    if not queues:
        p.append("alicom.queues must list at least one message type")
    known = list(QUEUE_MESSAGE_TYPES)
    p.extend(f"alicom.queues: {t!r} is not an MNS message type ({', '.join(known)})"
             f"{did_you_mean(t, known)}" for t in queues if t not in known)
    if len(set(queues)) != len(queues):
        p.append(f"alicom.queues lists a message type twice: {', '.join(queues)}")
    return p


@dataclass(frozen=True)
class AlicomSection(Section):
    """The `[alicom]` table: a preset (each endpoint field overridable) and the queues.

    The loader resolves it into `Settings.endpoints` and `Settings.queue_prefix`.
    """

    SECTION = "alicom"
    preset: str = "mainland"
    mns_endpoint: str | None = None
    token_endpoint: str | None = None
    token_protocol: str | None = None
    region_id: str | None = None
    account_id: str | None = None
    queue_prefix: str | None = None
    queues: tuple[str, ...] = ("SmsReport", "SmsUp")

    def rules(self) -> list[str]:
        return queue_problems(self.queues)


@dataclass(frozen=True)
class RedisSection(Section):
    """The `[redis]` table; `url` may carry a password (never logged). `allow_eviction`:
    start even when Redis's maxmemory-policy may evict keys (consumer.clients.redis_guard
    says what can then be lost)."""

    SECTION = "redis"
    url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    allow_eviction: bool = False

    def rules(self) -> list[str]:
        return redis_url_problems(self.url)


@dataclass(frozen=True)
class PollSettings(Section):
    """Receiving. `socket_timeout_s` bounds one long poll on the wire: it must exceed
    `wait_seconds` by a margin, or a healthy empty poll would look like a dead connection.
    `wait_seconds` is at least 1: a zero wait makes an idle worker spin on empty receives."""

    SECTION = "poll"
    pollers: int = number(8, 1, 64)
    batch_size: int = number(16, 1, 16)
    wait_seconds: int = number(10, 1, 30, why="0 would spin on empty receives")
    socket_timeout_s: float = number(40.0, 0, 600, low_open=True)

    def rules(self) -> list[str]:
        if self.socket_timeout_s >= self.wait_seconds + 5:
            return []
        return [f"poll.socket_timeout_s must be at least poll.wait_seconds + 5 "
                f"({self.wait_seconds + 5}), got {self.socket_timeout_s!r}: a healthy long "
                f"poll would time out on the wire"]


@dataclass(frozen=True)
class AckSettings(Section):
    """Acknowledging and re-timing messages.

    `visibility_timeout_s` is the lease held on an in-flight message (the queue's own
    visibility applies on receive; we extend to this `extend_before_s` ahead of expiry, never
    beyond `max_in_flight_s` in all). A failed delivery is handed back after a backoff from
    `retry_base_s` up to `retry_max_s`; after `max_dequeue_count` deliveries it is
    dead-lettered. Deletes are batched up to `delete_batch_max` or `delete_flush_s`.
    """

    SECTION = "ack"
    visibility_timeout_s: int = number(60, 1, 43200)
    extend_before_s: float = number(10.0, 0, 43200, low_open=True)
    max_in_flight_s: float = number(600.0, 0, 7 * _DAY_S, low_open=True)
    retry_base_s: float = number(5.0, 0, 43200, low_open=True)
    retry_max_s: float = number(3600.0, 0, 43200, low_open=True)
    max_dequeue_count: int = number(20, 1, 1000)
    delete_batch_max: int = number(16, 1, 16)
    delete_flush_s: float = number(0.05, 0, 10)

    def rules(self) -> list[str]:
        p: list[str] = []
        if self.extend_before_s >= self.visibility_timeout_s:
            p.append(f"ack.extend_before_s ({self.extend_before_s!r}) must be below "
                     f"ack.visibility_timeout_s ({self.visibility_timeout_s!r})")
        if self.retry_max_s < self.retry_base_s:
            p.append(f"ack.retry_max_s ({self.retry_max_s!r}) must be >= ack.retry_base_s "
                     f"({self.retry_base_s!r})")
        return p


@dataclass(frozen=True)
class WorkerSettings(Section):
    """One worker process; `max_receipts` / `max_rss_mb` recycle it (exit 0, systemd restarts).

    `adaptive_concurrency`: only as many pollers and ackers work at once as the round trip
    to MNS needs (consumer.sources.mns.gate); false keeps all of them busy.
    `handler_deadline_s`: a call running longer counts as stuck (it keeps its message: Python
    cannot stop a thread); once `stuck_recycle_share` of `handler_threads` hold calls that ran
    twice their deadline (hung, not just late), the worker recycles, and the exit ends them.
    """

    SECTION = "worker"
    in_flight_max: int = number(256, 1, 100_000)
    adaptive_concurrency: bool = True
    handler_threads: int = number(8, 1, 1024)
    handler_deadline_s: float = number(30.0, 0, _DAY_S, low_open=True)
    stuck_recycle_share: float = number(0.5, 0, 1, low_open=True)
    shutdown_budget_s: float = number(20.0, 0, _HOUR_S, low_open=True)
    max_receipts: int | None = number(None, 1, 10**12)
    max_rss_mb: int | None = number(None, 32, 1024 * 1024)


@dataclass(frozen=True)
class LogSettings(Section):
    """`format`: "auto" (console on a terminal, JSON lines otherwise), "json", "console" or
    "ecs" (Elastic Common Schema JSON lines, the message under `message`)."""

    SECTION = "log"
    level: str = "info"
    format: str = "auto"

    def rules(self) -> list[str]:
        p: list[str] = []
        for name, choices in (("level", ("debug", "info", "warning", "error", "critical")),
                              ("format", ("auto", "json", "console", "ecs"))):
            value = getattr(self, name)
            if value not in choices:
                p.append(f"log.{name} must be one of {', '.join(choices)}, got {value!r}"
                         f"{did_you_mean(str(value), list(choices))}")
        return p


@dataclass(frozen=True)
class TokenSettings(Section):
    """The temporary MNS token (Dybaseapi QueryTokenForMnsQueue).

    A token is replaced `refresh_before_s` before its ExpireTime (120 s in every official
    demo). One fetch makes at most `max_attempts` tries within `max_retry_s`, sleeping a
    random exponential backoff from `backoff_initial_s` up to `backoff_max_s` in between.
    """

    SECTION = "token"
    refresh_before_s: float = number(120.0, 0, _HOUR_S)
    connect_timeout_s: float = number(5.0, 0, 120, low_open=True)
    read_timeout_s: float = number(10.0, 0, 120, low_open=True)
    max_attempts: int = number(4, 1, 20)
    max_retry_s: float = number(30.0, 0, _HOUR_S, low_open=True)
    backoff_initial_s: float = number(0.5, 0, 60, low_open=True)
    backoff_max_s: float = number(8.0, 0, 600, low_open=True)

    def rules(self) -> list[str]:
        if self.backoff_max_s < self.backoff_initial_s:
            return [f"token.backoff_max_s ({self.backoff_max_s!r}) must be >= "
                    f"token.backoff_initial_s ({self.backoff_initial_s!r})"]
        return []


@dataclass(frozen=True)
class DedupSettings(Section):
    """Where and how long idempotency records live.

    `completed_ttl_s` is how long a COMPLETED record suppresses duplicates: Alibaba Cloud can
    deliver the same receipt again days later, hence a week by default.

    There is no lease setting: each caller derives its claim's lease from what it holds (the
    worker: until the batch's earliest NextVisibleTime, so a claim never outlives the
    message's invisibility; the push worker: its stream's reclaim time; reconcile: the handler
    deadline).

    `wait_replicas` (0: off): after writing claims, completion records and dead letters,
    WAIT until that many replicas have them (at most `wait_timeout_s`); fewer is a
    transient failure: an unconfirmed claim runs nothing, an unconfirmed completion or dead
    letter does not delete its message (the write is sent again; its next delivery finds
    the record on the replica a failover promotes). For Sentinel or Cluster set-ups that
    must not apply a receipt twice, nor lose a dead letter, across a failover.
    """

    SECTION = "dedup"
    key_prefix: str = "alicom:dedup:"
    completed_ttl_s: float = number(7 * _DAY_S, 1, _YEAR_S)
    wait_replicas: int = number(0, 0, 16)
    wait_timeout_s: float = number(1.0, 0.001, 60)

    def rules(self) -> list[str]:
        return [] if self.key_prefix else ["dedup.key_prefix must not be empty (keys would "
                                           "collide)"]


@dataclass(frozen=True)
class DeadLetterSettings(Section):
    """Where dead letters live and how many are kept (the oldest go first)."""

    SECTION = "deadletter"
    key_prefix: str = "alicom:dlq:"
    retention_s: float = number(30 * _DAY_S, 0.001, _YEAR_S)
    max_entries: int = number(100_000, 1, 100_000_000)

    def rules(self) -> list[str]:
        return [] if self.key_prefix else ["deadletter.key_prefix must not be empty"]

    @property
    def retention_ms(self) -> int:
        return round(self.retention_s * 1000)


@dataclass(frozen=True)
class MetricsSettings(Section):
    """The `[metrics]` table.

    `address`: "host:port" (":port" for every interface) of the host's scrape endpoint, e.g.
    "127.0.0.1:9464"; None (the default) turns metrics off. `multiproc_dir`: the directory
    shared by the host's worker processes; None means `$PROMETHEUS_MULTIPROC_DIR`, else
    `$RUNTIME_DIRECTORY/metrics` (systemd), else `<tmp>/alicom-receipts-metrics-<uid>`. Under
    systemd with PrivateTmp the last one is private to each unit, so give the units one
    explicit directory (e.g. `/run/alicom-receipts/metrics`). `max_err_codes`: distinct
    `err_code` labels per process.
    """

    SECTION = "metrics"
    address: str | None = None
    multiproc_dir: str | None = None
    max_err_codes: int = number(50, 1, 1000)

    def rules(self) -> list[str]:
        if self.address is None:
            return []
        try:
            parse_address(self.address, "metrics.address")
        except ConfigError as exc:
            return [str(exc)]
        return []


@dataclass(frozen=True)
class ServiceSettings(Section):
    """The `[service]` section: how the worker reports to systemd.

    `watchdog_stall_s`: how long the pipeline may go without a finished poll turn or a
    settled message before the worker withholds its `WATCHDOG=1` pings (systemd then kills
    and restarts it after WatchdogSec). None means WatchdogSec itself. It must exceed the
    longest legitimate poll turn: poll.socket_timeout_s + a token fetch (token.max_retry_s +
    token.read_timeout_s) + a Redis call (5 s); a poller that just failed is given the
    pollers' backoff cap more on top, since it sleeps in a bounded backoff.
    `status_interval_s`: at most one `STATUS=` update per this many seconds.
    `probe_interval_s`: how often Redis is read to tell its outage in STATUS once ready
    (before READY it is tried every tick).
    """

    SECTION = "service"
    watchdog_stall_s: float | None = number(None, 0, _DAY_S, low_open=True)
    status_interval_s: float = number(1.0, 0, _HOUR_S)
    probe_interval_s: float = number(5.0, 0, _HOUR_S, low_open=True)


@dataclass(frozen=True)
class RunSettings(Section):
    """The `[run]` table: how `alicom-receipts run` runs this host's workers.

    `processes_per_queue` worker processes per queue type. A worker that fails is restarted
    after `restart_initial_s`, doubling per consecutive failure up to `restart_max_s`; one
    that ran `stable_after_s` or longer resets that count. On stop, `run` waits the workers'
    `worker.shutdown_budget_s` plus `stop_margin_s` before it SIGKILLs the rest. A worker
    that exits with the configuration-error status is not restarted: `run` stops and exits
    with it.
    """

    SECTION = "run"
    processes_per_queue: int = number(1, 1, 256)
    restart_initial_s: float = number(1.0, 0, _HOUR_S, low_open=True)
    restart_max_s: float = number(60.0, 0, _DAY_S, low_open=True)
    stable_after_s: float = number(30.0, 0, _DAY_S, low_open=True)
    stop_margin_s: float = number(10.0, 0, _HOUR_S)

    def rules(self) -> list[str]:
        if self.restart_initial_s > self.restart_max_s:
            return [f"run.restart_initial_s ({self.restart_initial_s!r}) must be <= "
                    f"run.restart_max_s ({self.restart_max_s!r})"]
        return []


@dataclass(frozen=True)
class HandlerSpec:
    """One configured handler (`[[handlers]]`).

    `use`: an entry point name in group `alicom_receipts.handlers`, or `module:attr`.
    `types`: the receipt classes it gets; None means the handler's own `types`, else its
    annotation's, else all.
    `options`: keyword arguments for a class target (an error for any other target).
    `name`: the label in logs and metrics; default the handler's `name`, else `use`.
    `policy`: its deadline, attempts and backoff, over the handler's own (unset: global).
    """

    use: str
    types: tuple[str, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)  # dicts don't hash
    name: str | None = None
    policy: HandlerPolicy = field(default_factory=HandlerPolicy)
