"""The QuerySendDetails side of `alicom-receipts reconcile`, and its settings.

`DetailsClient` asks the official Dysmsapi client about one tracked send (every page), under
a token-bucket rate limit, retrying throttled and transient answers with tenacity (a stop, a
random exponential wait, a log line before each sleep, a sleep a stop event cuts short).
`load_config` reads the common `Settings` plus the `[reconcile]` and `[tracking]` tables
(and their `ALICOM_RECEIPTS_RECONCILE_*` / `ALICOM_RECEIPTS_TRACKING_*` variables): until
`consumer.settings` carries those sections it takes them out itself and hands the rest to
`load_settings`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import structlog
from alibabacloud_dysmsapi20170525.client import Client as DysmsClient
from alibabacloud_dysmsapi20170525.models import QuerySendDetailsRequest
from alibabacloud_tea_openapi.models import Config
from Tea.exceptions import TeaException
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_random_exponential,
)

from consumer.clients.credentials import load_access_key
from consumer.errors import (
    AlicomReceiptsError,
    AuthError,
    ConfigError,
    PermanentError,
    TransientError,
)
from consumer.reports.tracking import TrackedSend, TrackingSettings, normalise_phone
from consumer.settings import Settings, load_settings

tomllib: Any = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
log = structlog.get_logger("alicom_receipts.reconcile")

_THROTTLED = re.compile(r"Throttl|LIMIT_CONTROL|QpsLimit", re.I)
_AUTH = re.compile(r"Forbidden|NoPermission|AccessDenied|InvalidAccessKey|Signature|"
                   r"SecurityToken|InvalidTimeStamp", re.I)


@dataclass(frozen=True)
class ReconcileSettings:
    """The `[reconcile]` section.

    `endpoint` is Dysmsapi's "host[:port]" (None: dysmsapi[-vpc].<region>.aliyuncs.com next to
    the token endpoint, or the token endpoint itself for a local sandbox, which serves both);
    `protocol` None means the token API's. `grace_s`: only sends older than this are looked
    up. `qps`: request rate of the token bucket (the platform's limit is per account; leave
    room for the sending code). `max_sends` per run, `batch_size` receipts per pipeline batch.
    `max_attempts` tries per request (throttling, network, 5xx), waits up to `backoff_max_s`.
    """

    endpoint: str | None = None
    protocol: str | None = None
    grace_s: float = 900.0
    window_days: int = 30
    qps: float = 20.0
    page_size: int = 50
    batch_size: int = 64
    max_sends: int = 10000
    max_attempts: int = 6
    backoff_max_s: float = 10.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        bad = [name for name, ok in (
            ("grace_s >= 0", self.grace_s >= 0), ("window_days 1-30", 1 <= self.window_days <= 30),
            ("qps > 0", self.qps > 0), ("page_size 1-50", 1 <= self.page_size <= 50),
            ("batch_size >= 1", self.batch_size >= 1), ("max_sends >= 1", self.max_sends >= 1),
            ("max_attempts 1-20", 1 <= self.max_attempts <= 20),
            ("backoff_max_s > 0", self.backoff_max_s > 0),
            ("protocol http or https", self.protocol in (None, "http", "https")),
        ) if not ok]
        if bad:
            raise ConfigError("reconcile settings: need " + ", ".join(bad))

    def with_limit(self, max_sends: int) -> ReconcileSettings:
        return dataclasses.replace(self, max_sends=max_sends)


def dysms_endpoint(settings: Settings, rs: ReconcileSettings) -> tuple[str, str]:
    """(host[:port], protocol) of Dysmsapi for these settings (see `ReconcileSettings`)."""
    token, protocol = settings.endpoints.token_endpoint, settings.endpoints.token_protocol
    if rs.endpoint:
        return rs.endpoint, rs.protocol or "https"
    host = token.partition(":")[0]
    if host.endswith(".aliyuncs.com") and host.startswith("dybaseapi"):
        return "dysmsapi" + host.removeprefix("dybaseapi"), rs.protocol or "https"
    return token, rs.protocol or protocol


class TokenBucket:
    """`rate` requests a second on average, bursts of at most max(1, rate); thread-safe."""

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self._rate, self._stop = rate, stop
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._at = time.monotonic()
        self._lock = threading.Lock()
        self.waits = 0  # times a request had to wait for its token (metrics: quota waits)

    def acquire(self) -> None:
        """Blocks until a request may go (or the stop event is set)."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
                self._at = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                wait_s = (1.0 - self._tokens) / self._rate
                self.waits += 1
            if self._stop.wait(wait_s):
                return


class ThrottledError(TransientError):
    """The platform's flow control refused a request: back off, then try again."""


def _before_sleep(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    sleep_s = state.next_action.sleep if state.next_action else 0.0
    log.warning("retrying", call="QuerySendDetails", attempt=state.attempt_number,
                sleep_s=round(sleep_s, 2), error=str(exc))


def _retryable(exc: BaseException) -> bool:
    """Throttling, the network and 5xx; never refused credentials (a retry cannot fix them)."""
    return isinstance(exc, TransientError) and not isinstance(exc, AuthError)


class DetailsClient:
    """QuerySendDetails for tracked sends, rate-limited and retried."""

    def __init__(self, client: DysmsClient, rs: ReconcileSettings, stop: threading.Event) -> None:
        self._client, self._rs, self._stop = client, rs, stop
        self._bucket = TokenBucket(rs.qps, stop)

    @classmethod
    def from_settings(cls, settings: Settings, rs: ReconcileSettings, env: Mapping[str, str],
                      stop: threading.Event) -> DetailsClient:
        """The official client on `dysms_endpoint`, signing with the long-lived AccessKey."""
        # The Tea SDK logs request headers at DEBUG when DEBUG is set in the environment.
        for name in ("darabonba-core", "alibabacloud-tea"):
            logging.getLogger(name).setLevel(logging.INFO)
        key = load_access_key(env)
        endpoint, protocol = dysms_endpoint(settings, rs)
        config = Config(endpoint=endpoint, protocol=protocol,
                        region_id=settings.endpoints.region_id,
                        connect_timeout=max(1, round(rs.connect_timeout_s * 1000)),
                        read_timeout=max(1, round(rs.read_timeout_s * 1000)))
        if key.credential_client is not None:
            config.credential = key.credential_client
        else:
            config.access_key_id = key.access_key_id
            config.access_key_secret = key.access_key_secret
            config.security_token = key.security_token
        return cls(DysmsClient(config), rs, stop)

    @property
    def quota_waits(self) -> int:
        """Times a call waited for the `qps` rate limit so far."""
        return self._bucket.waits

    def final_detail(self, send: TrackedSend) -> dict[str, Any] | None:
        """The send's SmsSendDetailDTO (as a dict of the API's keys), None if none yet."""
        phone = normalise_phone(send.phone_number)
        page, seen = 1, 0
        while True:
            items, total = self._page(send, page)
            for item in items:
                if normalise_phone(str(item.get("PhoneNum") or phone)) == phone:
                    return item
            seen += len(items)
            if not items or seen >= total:
                return None
            page += 1

    def _page(self, send: TrackedSend, page: int) -> tuple[list[dict[str, Any]], int]:
        request = QuerySendDetailsRequest(phone_number=send.phone_number, biz_id=send.biz_id,
                                          send_date=send.send_date, page_size=self._rs.page_size,
                                          current_page=page)
        retrying = Retrying(
            stop=stop_after_attempt(self._rs.max_attempts) | stop_when_event_set(self._stop),
            wait=wait_random_exponential(multiplier=0.2, max=self._rs.backoff_max_s),
            retry=retry_if_exception(_retryable),
            before_sleep=_before_sleep, sleep=self._sleep,
            reraise=True)
        body: dict[str, Any] = retrying(self._call, request)
        dtos = (body.get("SmsSendDetailDTOs") or {}).get("SmsSendDetailDTO") or []
        return [d for d in dtos if isinstance(d, dict)], int(body.get("TotalCount") or 0)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _call(self, request: QuerySendDetailsRequest) -> dict[str, Any]:
        self._bucket.acquire()
        try:
            body: dict[str, Any] = self._client.query_send_details(request).body.to_map()
        except TeaException as exc:
            raise self._error(str(getattr(exc, "code", "") or ""),
                              getattr(exc, "status_code", None), exc) from exc
        except Exception as exc:  # the SDK raises plain errors for the network
            raise TransientError("QuerySendDetails failed: %s" % type(exc).__name__) from exc
        code = str(body.get("Code") or "")
        if code != "OK":
            raise self._error(code, 200, None)
        return body

    def _error(self, code: str, status: Any, exc: BaseException | None) -> AlicomReceiptsError:
        text = "QuerySendDetails refused: %s (HTTP %s)" % (code or "no code", status)
        if _THROTTLED.search(code) or status == 429:
            return ThrottledError(text)
        if _AUTH.search(code) or status in (401, 403):
            return AuthError(text)
        if exc is not None and isinstance(status, int) and status >= 500:
            return TransientError(text)
        return PermanentError(text)


# ---- configuration ----------------------------------------------------------------------------

_OWN = {"reconcile": ReconcileSettings, "tracking": TrackingSettings}
_ENV = "ALICOM_RECEIPTS_"


def load_config(path: str | None, env: Mapping[str, str],
                ) -> tuple[Settings, ReconcileSettings, TrackingSettings]:
    """The common settings and the `[reconcile]` / `[tracking]` sections of one file."""
    text = ""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError("cannot read the configuration file %s: %s"
                              % (path, exc.strerror or exc)) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("%s is not valid TOML: %s" % (path, exc)) from exc
    own: dict[str, Any] = {}
    rest_env = dict(env)
    for section, cls in _OWN.items():
        values = dict(raw.get(section) or {})
        prefix = (_ENV + section + "_").upper()
        for var in [v for v in rest_env if v.startswith(prefix)]:
            values[var[len(prefix):].lower()] = _EnvText(rest_env.pop(var))
        own[section] = cls(**_typed(section, cls, values))
        text = re.sub(r"(?ms)^[ \t]*\[[ \t]*%s[ \t]*\][^\n]*\n.*?(?=^[ \t]*\[|\Z)" % section,
                      "", text)
    if path is None:
        settings = load_settings(None, rest_env)
    else:
        with tempfile.TemporaryDirectory(prefix="alicom-reconcile-") as tmp:
            copy = os.path.join(tmp, "config.toml")
            with open(copy, "w", encoding="utf-8") as fh:
                fh.write(text)
            settings = dataclasses.replace(load_settings(copy, rest_env), source=path)
    return settings, own["reconcile"], own["tracking"]


class _EnvText(str):
    """A value from the environment, typed from its text."""

    __slots__ = ()


def _typed(section: str, cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    hints = {f.name: str(f.type) for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        hint = hints.get(key)
        if hint is None:
            raise ConfigError("%s.%s is not a setting (known: %s)"
                              % (section, key, ", ".join(hints)))
        try:
            out[key] = _coerce(value, hint)
        except ValueError as exc:
            raise ConfigError("%s.%s: %s" % (section, key, exc)) from None
    return out


def _coerce(value: Any, hint: str) -> Any:
    if isinstance(value, _EnvText):
        text = value.strip()
        if hint == "str | None":
            return None if text.lower() in ("", "none") else text
        return {"int": int, "float": float}.get(hint, str)(text)
    expected = {"int": (int,), "float": (int, float)}.get(hint, (str,))
    if value is None or isinstance(value, bool) or not isinstance(value, expected):
        raise ValueError("expected %s, got %s" % (hint, type(value).__name__))
    return float(value) if hint == "float" else value
