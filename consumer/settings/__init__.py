"""Settings: frozen dataclasses built once at start-up and passed down.

`load_settings(path, env)` reads a TOML file (the embedded `DEFAULT_CONFIG_TOML` when `path`
is None), applies `ALICOM_RECEIPTS_<SECTION>_<KEY>` environment overrides typed by the
dataclass field, and validates the whole (the loader is `consumer.settings.load`). Each
problem is one line naming the setting ("poll.wait_seconds must be 0-30, got 45"); all of
them are raised together as one `InvalidSettings` (a `ConfigError`). Nothing here reads the
environment on import.

The AccessKey is never part of the settings (see `consumer.clients.credentials`).
"""

from __future__ import annotations

import difflib
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from consumer.errors import ConfigError
from consumer.handlers.plugins import HandlerSpec
from consumer.keys import KeyFunction, make_key_function
from consumer.pipeline.deadletter import DeadLetterSettings
from consumer.pipeline.dedup import DedupSettings
from consumer.redis_url import redis_url_problems
from consumer.runtime.metrics import MetricsSettings, metrics_problems
from consumer.runtime.service import ServiceSettings
from consumer.runtime.supervisor import RunSettings

#: Alibaba's account that owns the Alicom queues on the mainland service; the local sandbox
#: names its queues after it as well.
SANDBOX_ACCOUNT_ID = "1943695596114318"
SANDBOX_ADDRESS = "127.0.0.1:8765"

#: Message types Alicom delivers through MNS queues (alicom.md, "The two receipt modes").
QUEUE_MESSAGE_TYPES: tuple[str, ...] = (
    "SmsReport", "SmsUp", "GlobeSmsReport", "MnsCardVender", "MnsCardTemplate",
    "SignSmsReport", "TemplateSmsReport",
)


class InvalidSettings(ConfigError):  # noqa: N818 - reads as what it is; the base says Error
    """The configuration has one or more problems; `problems` lists them, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        if len(problems) == 1:
            text = problems[0]
        else:
            text = f"{len(problems)} problems in the configuration:\n  - " + "\n  - ".join(problems)
        super().__init__(text)


@dataclass(frozen=True)
class Endpoints:
    """Where the queues and the token API are.

    `mns_endpoint`: URL for the MNS SDK's `Account` ("https://<owner>.mns.<region>...").
    `token_endpoint`: "host[:port]" for the Dybaseapi Tea client, reached over
    `token_protocol` ("https" | "http"); `region_id` for that client.
    """

    mns_endpoint: str
    token_endpoint: str
    token_protocol: str
    region_id: str


PRESETS: Mapping[str, Endpoints] = MappingProxyType({
    "mainland": Endpoints("https://1943695596114318.mns.cn-hangzhou.aliyuncs.com",
                          "dybaseapi.aliyuncs.com", "https", "cn-hangzhou"),
    "international": Endpoints("https://1493622401794734.mns.ap-southeast-1.aliyuncs.com",
                               "dybaseapi.ap-southeast-1.aliyuncs.com", "https", "ap-southeast-1"),
    "sandbox": Endpoints("http://" + SANDBOX_ADDRESS, SANDBOX_ADDRESS, "http", "cn-hangzhou"),
})
_REGION = re.compile(r"^[a-z]{2,}(-[a-z0-9]+)+$")


def preset_endpoints(name: str) -> Endpoints:
    """The endpoints of a preset: one of `PRESETS`, or "vpc-<region>" (e.g. vpc-cn-hangzhou),
    which reaches MNS on the region's internal VPC address (plain HTTP, as documented) and the
    token API on its VPC endpoint. Raises ConfigError for any other name."""
    if name in PRESETS:
        return PRESETS[name]
    region = name.removeprefix("vpc-")
    if region != name and _REGION.match(region):
        return Endpoints(f"http://1943695596114318.mns.{region}-internal-vpc.aliyuncs.com",
                         f"dybaseapi-vpc.{region}.aliyuncs.com", "https", region)
    hint = did_you_mean(name, [*PRESETS, "custom", "vpc-cn-hangzhou"])
    raise ConfigError(f"alicom.preset must be one of {', '.join(PRESETS)}, vpc-<region> or "
                      f"custom, got {name!r}{hint}")


@dataclass(frozen=True)
class PollSettings:
    """Receiving. `socket_timeout_s` bounds one long poll on the wire: it must exceed
    `wait_seconds` by a margin, or a healthy empty poll would look like a dead connection."""

    pollers: int = 8
    batch_size: int = 16
    wait_seconds: int = 10
    socket_timeout_s: float = 40.0


@dataclass(frozen=True)
class AckSettings:
    """Acknowledging and re-timing messages.

    `visibility_timeout_s` is the lease held on an in-flight message (the queue's own
    visibility applies on receive; we extend to this `extend_before_s` ahead of expiry, never
    beyond `max_in_flight_s` in all). A failed delivery is handed back after a backoff from
    `retry_base_s` up to `retry_max_s`; after `max_dequeue_count` deliveries it is
    dead-lettered. Deletes are batched up to `delete_batch_max` or `delete_flush_s`.
    """

    visibility_timeout_s: int = 60
    extend_before_s: float = 10.0
    max_in_flight_s: float = 600.0
    retry_base_s: float = 5.0
    retry_max_s: float = 3600.0
    max_dequeue_count: int = 20
    delete_batch_max: int = 16
    delete_flush_s: float = 0.05


@dataclass(frozen=True)
class WorkerSettings:
    """One worker process; `max_receipts` / `max_rss_mb` recycle it (exit 0, systemd restarts).

    `adaptive_concurrency`: only as many pollers and ackers work at once as the round trip
    to MNS needs (consumer.sources.mns.gate); false keeps all of them busy.
    """

    in_flight_max: int = 256
    adaptive_concurrency: bool = True
    handler_threads: int = 8
    handler_deadline_s: float = 30.0
    shutdown_budget_s: float = 20.0
    max_receipts: int | None = None
    max_rss_mb: int | None = None


@dataclass(frozen=True)
class LogSettings:
    """`format`: "auto" (console on a terminal, JSON lines otherwise), "json", "console" or
    "ecs" (Elastic Common Schema JSON lines, the message under `message`)."""

    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class TokenSettings:
    """The temporary MNS token (Dybaseapi QueryTokenForMnsQueue).

    A token is replaced `refresh_before_s` before its ExpireTime (120 s in every official
    demo). One fetch makes at most `max_attempts` tries within `max_retry_s`, sleeping a
    random exponential backoff from `backoff_initial_s` up to `backoff_max_s` in between.
    """

    refresh_before_s: float = 120.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    max_attempts: int = 4
    max_retry_s: float = 30.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0


@dataclass(frozen=True)
class Settings:
    """Everything one process needs. Build with `load_settings`; log with `describe()`.

    `queue_prefix` is "Alicom-Queue-<account id>-"; `queues` the message types this host
    consumes. `redis_url` may carry a password (redis://:pw@host): it is left out of `repr`
    and masked by `describe()`. Constructing a Settings validates it (`InvalidSettings`).
    """

    endpoints: Endpoints
    queue_prefix: str
    queues: tuple[str, ...]
    redis_url: str = field(repr=False)
    poll: PollSettings = field(default_factory=PollSettings)
    ack: AckSettings = field(default_factory=AckSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    dedup: DedupSettings = field(default_factory=DedupSettings)
    deadletter: DeadLetterSettings = field(default_factory=DeadLetterSettings)
    handlers: tuple[HandlerSpec, ...] = ()
    log: LogSettings = field(default_factory=LogSettings)
    token: TokenSettings = field(default_factory=TokenSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    run: RunSettings = field(default_factory=RunSettings)
    # `[dedup_keys]`: receipt class name -> the fields of its dedup key, over the defaults
    # in consumer.receipts.DEDUP_KEY_FIELDS (checked by the loader).
    dedup_keys: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}))
    source: str = "<embedded default>"
    # The dedup key secret (consumer.keys.key_secret: a credential file or the environment,
    # never the TOML file); b"" hashes keys unkeyed.
    key_secret: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = [*_top_problems(self), *_section_problems(self), *_cross_problems(self)]
        if problems:
            raise InvalidSettings(problems)

    def __repr__(self) -> str:
        # The generated repr would print handler options (webhook headers, URLs with
        # passwords) verbatim; this one is the redacted view.
        return f"Settings({self.describe()!r})"

    def key_function(self) -> KeyFunction:
        """The receipt -> dedup key function every path (worker, push, reconcile, replay)
        uses, so that the same receipt has the same key wherever it arrives."""
        return make_key_function(self.dedup_keys, self.key_secret)

    def queue_name(self, message_type: str) -> str:
        """The MNS queue of one message type, e.g. "Alicom-Queue-<account id>-SmsReport"."""
        return self.queue_prefix + message_type

    def describe(self) -> dict[str, Any]:
        """A JSON-ready view for start-up logs: no password, no secret-looking handler option."""
        out: dict[str, Any] = {
            "source": self.source, "endpoints": _as_dict(self.endpoints),
            "queue_prefix": self.queue_prefix, "queues": list(self.queues),
            "redis_url": redact_url(self.redis_url),
        }
        for name in ("poll", "ack", "worker", "dedup", "deadletter", "log", "token", "metrics",
                     "service", "run"):
            out[name] = _as_dict(getattr(self, name))
        out["handlers"] = [
            {"use": h.use, "name": h.name, "types": None if h.types is None else list(h.types),
             "options": {k: _redact_option(k, v) for k, v in h.options.items()}}
            for h in self.handlers
        ]
        return out


_SECRETISH = re.compile(r"secret|password|passwd|token|key|auth|credential|header", re.I)


def _redact_option(key: str, value: object) -> object:
    """A handler option as it may be logged: secret-looking keys and header maps masked,
    passwords taken out of URLs (a redis-stream handler's `url` may carry one)."""
    if _SECRETISH.search(key):
        return "***"
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def redact_url(url: str) -> str:
    """`url` with any password (in the user-info or a `password=` query) replaced by ***."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = re.sub(r"(?i)(^|&)(\w*password=)[^&]*", r"\1\2***", parts.query)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def did_you_mean(word: str, candidates: list[str]) -> str:
    """' (did you mean "x"?)' for the closest candidate, or "" when nothing is close."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- validation ------------------------------------------------------------------------------

_Rule = tuple[float, float | None, bool]  # (low, high or None = unbounded, low is exclusive)
_RANGES: dict[str, _Rule] = {
    "poll.pollers": (1, 64, False), "poll.batch_size": (1, 16, False),
    "poll.wait_seconds": (0, 30, False), "poll.socket_timeout_s": (0, 600, True),
    "ack.visibility_timeout_s": (1, 43200, False), "ack.extend_before_s": (0, None, True),
    "ack.max_in_flight_s": (0, None, True), "ack.retry_base_s": (0, None, True),
    "ack.retry_max_s": (0, 43200, True), "ack.max_dequeue_count": (1, None, False),
    "ack.delete_batch_max": (1, 16, False), "ack.delete_flush_s": (0, 10, False),
    "worker.in_flight_max": (1, None, False), "worker.handler_threads": (1, 1024, False),
    "worker.handler_deadline_s": (0, None, True), "worker.shutdown_budget_s": (0, None, True),
    "worker.max_receipts": (1, None, False), "worker.max_rss_mb": (32, None, False),
    "token.refresh_before_s": (0, None, False), "token.connect_timeout_s": (0, 120, True),
    "token.read_timeout_s": (0, 120, True), "token.max_attempts": (1, 20, False),
    "token.max_retry_s": (0, None, True), "token.backoff_initial_s": (0, None, True),
    "token.backoff_max_s": (0, None, True),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "log.level": ("debug", "info", "warning", "error", "critical"),
    "log.format": ("auto", "json", "console", "ecs"),
}


def _value(s: Settings, name: str) -> Any:
    section, key = name.split(".")
    return getattr(getattr(s, section), key)


def _range_problem(name: str, value: float, rule: _Rule) -> str | None:
    low, high, exclusive = rule
    too_low = value <= low if exclusive else value < low
    if not too_low and (high is None or value <= high):
        return None
    lo, hi = _num(low), _num(high) if high is not None else None
    if hi is None:
        return f"{name} must be {'>' if exclusive else '>='} {lo}, got {value!r}"
    if exclusive:
        return f"{name} must be > {lo} and <= {hi}, got {value!r}"
    return f"{name} must be {lo}-{hi}, got {value!r}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _section_problems(s: Settings) -> list[str]:
    problems = [p for name, rule in _RANGES.items()
                if (v := _value(s, name)) is not None and (p := _range_problem(name, v, rule))]
    for name, choices in _CHOICES.items():
        value = _value(s, name)
        if value not in choices:
            hint = did_you_mean(str(value), list(choices))
            problems.append(f"{name} must be one of {', '.join(choices)}, got {value!r}{hint}")
    return problems


def _cross_problems(s: Settings) -> list[str]:
    """Rules that tie two settings together; each message names both."""
    p: list[str] = []
    if s.poll.socket_timeout_s < s.poll.wait_seconds + 5:
        p.append(f"poll.socket_timeout_s must be at least poll.wait_seconds + 5 "
                 f"({s.poll.wait_seconds + 5}), got {s.poll.socket_timeout_s!r}: a healthy long "
                 f"poll would time out on the wire")
    if s.ack.extend_before_s >= s.ack.visibility_timeout_s:
        p.append(f"ack.extend_before_s ({s.ack.extend_before_s!r}) must be below "
                 f"ack.visibility_timeout_s ({s.ack.visibility_timeout_s!r})")
    if s.ack.retry_max_s < s.ack.retry_base_s:
        p.append(f"ack.retry_max_s ({s.ack.retry_max_s!r}) must be >= ack.retry_base_s "
                 f"({s.ack.retry_base_s!r})")
    if s.worker.in_flight_max < s.poll.batch_size:
        p.append(f"worker.in_flight_max ({s.worker.in_flight_max!r}) must be >= "
                 f"poll.batch_size ({s.poll.batch_size!r})")
    if s.token.backoff_max_s < s.token.backoff_initial_s:
        p.append(f"token.backoff_max_s ({s.token.backoff_max_s!r}) must be >= "
                 f"token.backoff_initial_s ({s.token.backoff_initial_s!r})")
    return p


def _top_problems(s: Settings) -> list[str]:
    return [*_endpoint_problems(s.endpoints), *_queue_problems(s), *_address_problems(s)]


def _endpoint_problems(e: Endpoints) -> list[str]:
    p: list[str] = []
    if not re.match(r"^https?://[^/?#@\s]+/?$", e.mns_endpoint):
        p.append(f"alicom.mns_endpoint must be http(s)://host[:port], got {e.mns_endpoint!r}")
    if not re.match(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$", e.token_endpoint):
        p.append(f"alicom.token_endpoint must be host[:port] without a scheme, "
                 f"got {e.token_endpoint!r}")
    if e.token_protocol not in ("http", "https"):
        p.append(f"alicom.token_protocol must be http or https, got {e.token_protocol!r}")
    if not e.region_id:
        p.append("alicom.region_id must not be empty")
    return p


def _queue_problems(s: Settings) -> list[str]:
    p: list[str] = []
    if not s.queue_prefix:
        p.append("alicom.queue_prefix must not be empty")
    if not s.queues:
        p.append("alicom.queues must list at least one message type")
    known = list(QUEUE_MESSAGE_TYPES)
    p.extend(f"alicom.queues: {t!r} is not an MNS message type ({', '.join(known)})"
             f"{did_you_mean(t, known)}" for t in s.queues if t not in known)
    if len(set(s.queues)) != len(s.queues):
        p.append(f"alicom.queues lists a message type twice: {', '.join(s.queues)}")
    return p


def _address_problems(s: Settings) -> list[str]:
    p: list[str] = []
    p.extend(redis_url_problems(s.redis_url))
    p.extend(metrics_problems(s.metrics))
    return p


#: The environment variable that names the configuration file when --config is not given.
CONFIG_ENV = "ALICOM_RECEIPTS_CONFIG"


def config_path(arg: str | None, env: Mapping[str, str]) -> str | None:
    """The configuration file every command reads: `--config`, else `$ALICOM_RECEIPTS_CONFIG`,
    else None (the embedded local default)."""
    return arg or env.get(CONFIG_ENV)


def load_settings(path: str | None, env: Mapping[str, str]) -> Settings:
    """Settings from the TOML file at `path` (the embedded `DEFAULT_CONFIG_TOML` when None)
    with `ALICOM_RECEIPTS_<SECTION>_<KEY>` overrides from `env` (e.g. ALICOM_RECEIPTS_REDIS_URL,
    ALICOM_RECEIPTS_POLL_POLLERS; lists comma-separated; "" or "none" clears an optional).
    Missing settings take their dataclass defaults. Raises `InvalidSettings` (a ConfigError).
    """
    # The loader builds on this module's dataclasses, so it is imported when first used.
    from consumer.settings.load import load  # noqa: PLC0415

    return load(path, env)


#: The embedded default: the local sandbox (`alicom-receipts sandbox`, MNS and the token API
#: on http://127.0.0.1:8765) and a local Redis; the demo runs on it. Everything else keeps
#: its dataclass default.
DEFAULT_CONFIG_TOML = """\
[alicom]
preset = "sandbox"
queues = ["SmsReport", "SmsUp"]

[redis]
url = "redis://127.0.0.1:6379/0"

[[handlers]]
use = "log"
"""
