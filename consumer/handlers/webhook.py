"""`webhook`: POST each receipt as JSON to an HTTP(S) endpoint of yours."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit

from consumer.errors import ConfigError, PermanentFailure, RetryLater, one_line
from consumer.handlers import receipt_json, require_number
from consumer.receipts import Receipt

_MAX_RESPONSE_BYTES = 64 * 1024
_MAX_RETRY_AFTER_S = 43200  # the longest MNS visibility timeout
# Failures that mean "the server closed an idle kept-alive connection" before reading the
# request: one retry on a fresh connection is safe there and avoids a spurious redelivery.
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)

Connection = http.client.HTTPConnection


class WebhookHandler:
    """POSTs `Receipt.to_dict()` as `application/json` to `url`, one request per receipt.

    Answers: 2xx ok; 408, 429 (honouring a `Retry-After` in seconds), 5xx, network errors
    and timeouts -> RetryLater; any other 4xx -> PermanentFailure (the request itself is
    wrong: the receipt is dead-lettered and can be replayed once the endpoint is fixed);
    1xx/3xx (redirects are not followed) -> PermanentFailure. `timeout_s` bounds each socket
    operation; the dispatcher's deadline bounds the whole call.

    Delivery is at least once: the same receipt may be POSTed again (after a retry, or when
    a connection breaks after the server got the request), so dedupe on your side, e.g. on
    `meta.message_id` or the receipt's business fields. One kept-alive connection per worker
    thread. `headers` (e.g. an Authorization) are sent
    with every request and never logged; credentials inside the URL are refused.
    """

    name = "webhook"
    types: tuple[str, ...] | None = None

    def __init__(self, url: str, timeout_s: float = 5.0,
                 headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("webhook handler: url must be http(s)://host[:port]/path")
        if parts.username is not None or parts.password is not None:
            raise ConfigError("webhook handler: put credentials in `headers`, not in the url")
        require_number(self.name, "timeout_s", timeout_s, above=0)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # The label in reasons and logs: no path or query, they may carry tokens.
        self._label = f"{parts.scheme}://{parts.netloc}"
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json; charset=utf-8",
                         "User-Agent": "alicom-receipts", **dict(headers or {})}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Connection] = []

    def handle(self, receipt: Receipt) -> None:
        """Sends one POST; returns on 2xx, raises RetryLater / PermanentFailure otherwise."""
        body = receipt_json(receipt).encode("utf-8")
        reused = getattr(self._local, "conn", None) is not None
        try:
            status, retry_after = self._post(body)
        except _STALE_CONNECTION as exc:
            if not reused:
                raise self._network_failure(exc) from exc
            try:  # the server dropped our idle connection: once more on a fresh one
                self._drop()
                status, retry_after = self._post(body)
            except (OSError, http.client.HTTPException) as again:
                raise self._network_failure(again) from again
        except (OSError, http.client.HTTPException) as exc:
            raise self._network_failure(exc) from exc
        _judge(self._label, status, retry_after)

    def _network_failure(self, exc: BaseException) -> RetryLater:
        self._drop()
        return RetryLater(f"webhook {self._label}: {one_line(exc)}")

    def _post(self, body: bytes) -> tuple[int, str | None]:
        conn = self._connection()
        conn.request("POST", self._target, body=body, headers=self._headers)
        response = conn.getresponse()
        response.read(_MAX_RESPONSE_BYTES)
        if not response.isclosed():  # a body bigger than we read: the stream is unusable
            self._drop()
        return response.status, response.getheader("Retry-After")

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port,
                                                   timeout=self._timeout_s)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn: Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
            with self._lock:
                self._all.remove(conn)

    def close(self) -> None:
        """Closes the connections of all threads."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


def _judge(label: str, status: int, retry_after: str | None) -> None:
    if 200 <= status < 300:
        return
    reason = f"webhook {label}: HTTP {status}"
    if status in (408, 429) or status >= 500:
        raise RetryLater(reason, _retry_after_s(retry_after))
    if 400 <= status < 500:
        raise PermanentFailure(reason)
    raise PermanentFailure(f"{reason} (unexpected; redirects are not followed)")


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After in delta-seconds (the HTTP-date form is ignored), capped for MNS."""
    if value is None or not value.strip().isdigit():
        return None
    return float(min(int(value.strip()), _MAX_RETRY_AFTER_S))
