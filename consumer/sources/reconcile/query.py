"""The QuerySendDetails side of `alicom-receipts reconcile`, and its settings.

`DetailsClient` asks the official Dysmsapi client about one tracked send (every page), under
a token-bucket rate limit, retrying throttled and transient answers with tenacity (a stop, a
random exponential wait, a log line before each sleep, a sleep a stop event cuts short).
Its settings are the `[reconcile]` section (`consumer.settings.ReconcileSettings`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog
from alibabacloud_dysmsapi20170525.client import Client as DysmsClient
from alibabacloud_dysmsapi20170525.models import QuerySendDetailsRequest
from Tea.exceptions import TeaException

from consumer.clients.credentials import load_access_key
from consumer.clients.retry import Tries, retry_call
from consumer.clients.tea import tea_config
from consumer.errors import (
    AlicomReceiptsError,
    AuthError,
    PermanentError,
    TransientError,
)
from consumer.reports.tracking import TrackedSend, normalise_phone
from consumer.settings import ReconcileSettings, Settings

log = structlog.get_logger("alicom_receipts.reconcile")

_THROTTLED = re.compile(r"Throttl|LIMIT_CONTROL|QpsLimit", re.I)
_AUTH = re.compile(r"Forbidden|NoPermission|AccessDenied|InvalidAccessKey|Signature|"
                   r"SecurityToken|InvalidTimeStamp", re.I)


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
        key = load_access_key(env, settings.preset)
        endpoint, protocol = dysms_endpoint(settings, rs)
        config = tea_config(key, endpoint, protocol, settings.endpoints.region_id,
                            connect_timeout_s=rs.connect_timeout_s,
                            read_timeout_s=rs.read_timeout_s)
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
        tries = Tries(attempts=self._rs.max_attempts, max_wait_s=self._rs.backoff_max_s)
        body: dict[str, Any] = retry_call("QuerySendDetails", lambda: self._call(request),
                                          self._stop, tries, retry_on=_retryable)
        dtos = (body.get("SmsSendDetailDTOs") or {}).get("SmsSendDetailDTO") or []
        return [d for d in dtos if isinstance(d, dict)], int(body.get("TotalCount") or 0)

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
