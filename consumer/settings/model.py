"""The root of the settings: `Settings` (every section of one file), the endpoints and
presets, and the rules that tie settings of different sections together.

Build a `Settings` with `consumer.settings.load_settings`; the sections themselves are in
`consumer.settings.sections`, `.push` and `.reconcile`.
The AccessKey is never part of the settings (see `consumer.clients.credentials`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from consumer.errors import ConfigError
from consumer.keys import KeyFunction, make_key_function
from consumer.redis_url import redis_url_problems
from consumer.settings.push import PushSettings
from consumer.settings.reconcile import ReconcileSettings, TrackingSettings
from consumer.settings.schema import InvalidSettings, did_you_mean, redact_url
from consumer.settings.sections import (
    AckSettings,
    DeadLetterSettings,
    DedupSettings,
    HandlerSpec,
    LogSettings,
    MetricsSettings,
    PollSettings,
    RunSettings,
    ServiceSettings,
    TokenSettings,
    WorkerSettings,
    queue_problems,
)

#: Alibaba's account that owns the Alicom queues on the mainland service; the local sandbox
#: names its queues after it as well.
SANDBOX_ACCOUNT_ID = "1943695596114318"
SANDBOX_ADDRESS = "127.0.0.1:8765"
#: The sandbox's documented local AccessKey (alicom_sandbox.context.DEFAULT_ACCESS_KEY_*):
#: public, and valid nowhere but against the sandbox. With `preset = "sandbox"` it is used
#: when no other key is given (consumer.clients.credentials).
SANDBOX_ACCESS_KEY_ID = "LTAIsandboxAccessKey"
SANDBOX_ACCESS_KEY_SECRET = "sandbox-secret-not-for-production"  # noqa: S105 - public local default



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


#: The fields of `Settings` that hold one `[section]` each (as named in the file).
SECTION_FIELDS: tuple[str, ...] = (
    "poll", "ack", "worker", "dedup", "deadletter", "log", "token", "metrics", "service", "run",
    "push", "reconcile", "tracking",
)


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
    redis_allow_eviction: bool = False
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
    push: PushSettings = field(default_factory=PushSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    # `[dedup_keys]`: receipt class name -> the fields of its dedup key, over the defaults
    # in consumer.receipts.DEDUP_KEY_FIELDS (checked by the loader).
    dedup_keys: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}))
    source: str = "<embedded default>"
    #: `alicom.preset` as written ("mainland", "sandbox", "vpc-cn-hangzhou", "custom", ...).
    preset: str = "custom"
    # The dedup key secret (consumer.keys.key_secret: a credential file or the environment,
    # never the TOML file); b"" hashes keys unkeyed.
    key_secret: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = [*_top_problems(self), *_cross_problems(self)]
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
            "redis_allow_eviction": self.redis_allow_eviction,
        }
        for name in SECTION_FIELDS:
            out[name] = _as_dict(getattr(self, name))
        out["push"]["secret"] = None if self.push.secret is None else "***"
        out["handlers"] = [
            {"use": h.use, "name": h.name, "types": None if h.types is None else list(h.types),
             "options": {k: _redact_option(k, v) for k, v in h.options.items()}}
            for h in self.handlers
        ]
        return out


_SECRETISH = re.compile(r"secret|password|passwd|token|key|auth|credential|header", re.I)


#: A secret-looking query parameter of a URL (`?token=...`, `&sig=...`): its value goes.
_SECRET_QUERY = re.compile(r"(?i)([?&][^=&#]*(?:secret|passw|token|key|auth|sig|credential)"
                           r"[^=&#]*=)[^&#]*")
#: The password of a libpq key/value connection string (`host=db password=... dbname=x`).
_KEYWORD_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def _redact_option(key: str, value: object) -> object:
    """A handler option as it may be logged: secret-looking keys and header maps masked,
    passwords taken out of URLs (a redis-stream handler's `url` may carry one) and of
    key/value connection strings (a postgres `dsn`), secret-looking query values too (a
    webhook `url`'s ?token=)."""
    if _SECRETISH.search(key):
        return "***"
    if isinstance(value, str) and "://" in value:
        return _SECRET_QUERY.sub(r"\1***", redact_url(value))
    if isinstance(value, str):
        return _KEYWORD_PASSWORD.sub(r"\1***", value)
    return value


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


# -- validation ------------------------------------------------------------------------------

def _cross_problems(s: Settings) -> list[str]:
    """Rules that tie two settings together; each message names both."""
    p: list[str] = []
    if s.worker.in_flight_max < s.poll.batch_size:
        p.append(f"worker.in_flight_max ({s.worker.in_flight_max!r}) must be >= "
                 f"poll.batch_size ({s.poll.batch_size!r})")
    return p + _double_run_problems(s)


def _double_run_problems(s: Settings) -> list[str]:
    """Combinations under which a receipt could run twice at once."""
    p: list[str] = []
    deadline = s.worker.handler_deadline_s
    if deadline >= s.ack.max_in_flight_s:
        p.append(f"worker.handler_deadline_s ({deadline!r}) must be below ack.max_in_flight_s "
                 f"({s.ack.max_in_flight_s!r}): a handler within its deadline would outlive "
                 f"the time its message may be held")
    # A push batch runs on the handler pool: its last entry may wait this long to finish.
    batch_s = math.ceil(s.push.batch_size / s.worker.handler_threads) * deadline
    if batch_s >= s.push.reclaim_idle_s:
        p.append(f"push.reclaim_idle_s ({s.push.reclaim_idle_s!r}) must exceed push.batch_size "
                 f"({s.push.batch_size}) / worker.handler_threads ({s.worker.handler_threads}) "
                 f"x worker.handler_deadline_s ({deadline!r}) = {batch_s!r} s: an entry still "
                 f"waiting or running would be re-taken by another push worker")
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
    empty = [] if s.queue_prefix else ["alicom.queue_prefix must not be empty"]
    return [*empty, *queue_problems(s.queues)]


def _address_problems(s: Settings) -> list[str]:
    return redis_url_problems(s.redis_url)


#: The environment variable that names the configuration file when --config is not given.
CONFIG_ENV = "ALICOM_RECEIPTS_CONFIG"
#: The help of every command's `--config` option.
CONFIG_HELP = ("TOML settings file (default: $%s, else the embedded local default: the "
               "sandbox and a local Redis)" % CONFIG_ENV)


def config_path(arg: str | None, env: Mapping[str, str]) -> str | None:
    """The configuration file every command reads: `--config`, else `$ALICOM_RECEIPTS_CONFIG`,
    else None (the embedded local default)."""
    return arg or env.get(CONFIG_ENV)


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
