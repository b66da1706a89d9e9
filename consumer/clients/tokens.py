"""Temporary MNS tokens from Dybaseapi `QueryTokenForMnsQueue`, one per message type.

`TokenService` keeps the current token of every message type for the whole process: every
poller thread shares it. `credentials_provider(message_type)` gives the object the MNS SDK's
`Account(credentials_provider=...)` consults on EVERY request, so a token rotates under live
clients. Its fast path (a fresh token) is a dict read and a clock comparison, no lock.

Refresh: a token is replaced once its `refresh_at` has passed (`refresh_before_s` before it
expires, at most half its life). While a due token is still valid, one thread fetches and
the others keep using the old one; once it has expired (or was invalidated), callers wait
for the single fetch in flight and reuse its result, token or error. After a 403-family
answer from MNS, a caller invalidates the token it used: `invalidate` only drops the token
if it is still the current one, so sixteen pollers failing together cause one refresh.

Expiry and clock skew. ExpireTime and CreateTime arrive as "yyyy-MM-dd HH:mm:ss" in
Asia/Shanghai time; they are parsed with zoneinfo into aware datetimes and then epoch
seconds, never compared with naive local time. The remaining life is measured two ways:
(a) ExpireTime minus `time.time()` at arrival, which is off by the skew between the
server's clock and ours, and (b) ExpireTime minus CreateTime (both server clock, so the skew
cancels) counted from when we sent the request, minus 1 s for second truncation, which
would overstate the life of a token the server re-issued from a cache. The shorter of the
two is used. With the server ahead of us, (a) overstates and (b) wins; with the server
behind, (a) understates and we refresh early, on the safe side; if the server is so far
behind that (a) says the token is already dead while (b) says it is fresh, (b) is used and a
warning logs the measured skew, instead of refetching in a loop. MNS judges expiry by its
own clock, so a token that still dies early is caught by the 403 -> invalidate path.

Fetches are bounded: at most `max_attempts` tries within `max_retry_s`, a random exponential
(full jitter) backoff in between, logged before each sleep; a refused AccessKey (AuthError)
or a bad request (PermanentError) is not retried. Sleeps wait on the `stop` event, so a
shutdown cuts them short (the attempt after the cut is the last one, so a draining worker can
still get a token to hand messages back).

Neither the secret nor the security token of a token, nor the long-lived AccessKey secret,
is ever logged, put in an error message, or shown by a repr.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import structlog
from alibabacloud_dybaseapi20170525.models import QueryTokenForMnsQueueRequest
from alibabacloud_tea_util.models import RuntimeOptions
from mns.auth import Credentials
from Tea.exceptions import TeaException

from consumer.clients.credentials import AccessKey
from consumer.clients.retry import Tries, retry_call
from consumer.clients.tea import ms
from consumer.clients.tokens_sdk import (
    MnsToken,
    classify,
    dybaseapi_client,
    parse_shanghai_time,
    sdk_error,
    token_from,
)
from consumer.errors import AlicomReceiptsError, AuthError, PermanentError, TransientError
from consumer.settings import Endpoints, Settings, TokenSettings

__all__ = [
    "MnsToken", "TokenCredentialsProvider", "TokenObserver", "TokenService",
    "classify", "parse_shanghai_time",
]

log = structlog.get_logger("alicom_receipts.tokens")


class TokenObserver(Protocol):
    """Receives token events, e.g. to count them in the worker's stats or metrics."""

    def token_refreshed(self, message_type: str, lifetime_s: float) -> None: ...

    def token_fetch_failed(self, message_type: str, error: AlicomReceiptsError) -> None:
        """Called for every failed attempt, retried or not."""

    def token_invalidated(self, message_type: str) -> None: ...


class _NoObserver:
    def token_refreshed(self, message_type: str, lifetime_s: float) -> None:
        pass

    def token_fetch_failed(self, message_type: str, error: AlicomReceiptsError) -> None:
        pass

    def token_invalidated(self, message_type: str) -> None:
        pass


class TokenService:
    """The current token of each message type, fetched through the official Dybaseapi client.

    Thread-safe. `stop` (shared with the worker) cuts retry sleeps short; `queue_name`
    maps a message type to its queue, sent as QueueName (None: MessageType only).
    """

    def __init__(self, access_key: AccessKey, endpoints: Endpoints,
                 settings: TokenSettings | None = None, *,
                 queue_name: Callable[[str], str] | None = None,
                 stop: threading.Event | None = None,
                 observer: TokenObserver | None = None) -> None:
        self._settings = settings or TokenSettings()
        self._queue_name = queue_name
        self._stop = stop or threading.Event()
        self._observer: TokenObserver = observer or _NoObserver()
        self._client = dybaseapi_client(access_key, endpoints, self._settings)
        self._current: dict[str, MnsToken] = {}
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._not_before: dict[str, float] = {}  # no new refresh try of a valid token before
        self._fetches_done: dict[str, int] = {}  # fetches finished, failed or not
        self._last_error: dict[str, AlicomReceiptsError] = {}  # of the last fetch, if it failed
        self._guard = threading.Lock()  # guards the dicts above against check-then-act

    @classmethod
    def from_settings(cls, settings: Settings, access_key: AccessKey, *,
                      stop: threading.Event | None = None,
                      observer: TokenObserver | None = None) -> TokenService:
        return cls(access_key, settings.endpoints, settings.token,
                   queue_name=settings.queue_name, stop=stop, observer=observer)

    # -- reading -------------------------------------------------------------------------

    def token(self, message_type: str) -> MnsToken:
        """A valid token for `message_type`, fetching one if needed.

        Raises AuthError (AccessKey refused), PermanentError (bad MessageType) or
        TransientError (network, throttling, 5xx) when no valid token can be had.
        """
        current = self._current.get(message_type)
        now = time.time()
        if current is not None and now < current.refresh_at:
            return current
        lock = self._fetch_lock(message_type)
        if current is not None and now < current.expires_at:
            return self._refresh_while_valid(message_type, current, lock)
        seen = self._fetches_done.get(message_type, 0)
        with lock:
            return self._refresh_locked(message_type, seen)

    def current(self, message_type: str) -> MnsToken | None:
        """The token in use now, without fetching (None before the first fetch)."""
        return self._current.get(message_type)

    def credentials_provider(self, message_type: str) -> TokenCredentialsProvider:
        """The `credentials_provider` for `mns.account.Account` on `message_type`'s queue."""
        return TokenCredentialsProvider(self, message_type)

    def invalidate(self, message_type: str, token: MnsToken | str) -> bool:
        """Drops `token` (a token, or its AccessKeyId) if it is still the current one, so the
        next request fetches a new token. True if it was current. Call it after MNS refused
        the token (the 403 family)."""
        with self._guard:
            current = self._current.get(message_type)
            same = current is not None and (
                current is token if isinstance(token, MnsToken)
                else current.access_key_id == token)
            if not same:
                return False
            del self._current[message_type]
            self._not_before.pop(message_type, None)
        log.info("token_invalidated", message_type=message_type)
        self._observer.token_invalidated(message_type)
        return True

    # -- refreshing ----------------------------------------------------------------------

    def _fetch_lock(self, message_type: str) -> threading.Lock:
        with self._guard:
            return self._fetch_locks.setdefault(message_type, threading.Lock())

    def _refresh_while_valid(self, message_type: str, current: MnsToken,
                             lock: threading.Lock) -> MnsToken:
        """Due but still valid: one caller refreshes, the others go on with `current`; a
        failed refresh keeps `current` and is tried again after a pause."""
        if not lock.acquire(blocking=False):
            return current
        try:
            if time.time() < self._not_before.get(message_type, 0.0):
                return current
            return self._refresh_locked(message_type)
        except (TransientError, PermanentError) as exc:
            with self._guard:
                self._not_before[message_type] = time.time() + self._settings.backoff_max_s
            log.warning("token_refresh_failed_keeping_current", message_type=message_type,
                        expires_in_s=round(current.expires_at - time.time(), 1), error=str(exc))
            return current
        finally:
            lock.release()

    def _refresh_locked(self, message_type: str, seen: int | None = None) -> MnsToken:
        """Fetches, holding the type's fetch lock, unless a fetch finished while we waited
        for it (`seen`: the count of finished fetches before waiting): its fresh token is
        reused, or its error raised again, so waiters share one fetch's outcome."""
        current = self._current.get(message_type)
        if current is not None and time.time() < current.refresh_at:
            return current
        error = self._last_error.get(message_type)
        if seen is not None and error is not None and self._fetches_done.get(message_type) != seen:
            raise type(error)(str(error)) from error
        try:
            token = self._fetch_with_retries(message_type)
        except AlicomReceiptsError as exc:
            with self._guard:
                self._fetches_done[message_type] = self._fetches_done.get(message_type, 0) + 1
                self._last_error[message_type] = exc
            raise
        with self._guard:
            self._current[message_type] = token
            self._not_before.pop(message_type, None)
            self._fetches_done[message_type] = self._fetches_done.get(message_type, 0) + 1
            self._last_error.pop(message_type, None)
        return token

    def _fetch_with_retries(self, message_type: str) -> MnsToken:
        s = self._settings
        try:
            tries = Tries(attempts=s.max_attempts, within_s=s.max_retry_s,
                          base_s=s.backoff_initial_s, max_wait_s=s.backoff_max_s)
            return retry_call("QueryTokenForMnsQueue", lambda: self._fetch_once(message_type),
                              self._stop, tries, retry_on=_retryable,
                              event="token_fetch_retry", fields={"message_type": message_type})
        except AlicomReceiptsError as exc:
            log.warning("token_fetch_gave_up", message_type=message_type, error=str(exc),
                        error_type=type(exc).__name__)
            raise

    def _fetch_once(self, message_type: str) -> MnsToken:
        request = QueryTokenForMnsQueueRequest(
            message_type=message_type,
            queue_name=self._queue_name(message_type) if self._queue_name else None)
        runtime = RuntimeOptions(autoretry=False,  # retries are ours, bounded and logged
                                 connect_timeout=ms(self._settings.connect_timeout_s),
                                 read_timeout=ms(self._settings.read_timeout_s))
        started = time.time()
        try:
            try:
                response = self._client.query_token_for_mns_queue_with_options(request, runtime)
            except (TeaException, OSError, ValueError) as exc:
                raise sdk_error(exc, message_type) from exc
            token = token_from(message_type, response.body, started, time.time(),
                                self._settings.refresh_before_s)
        except AlicomReceiptsError as exc:
            self._observer.token_fetch_failed(message_type, exc)
            raise
        log.info("token_fetched", message_type=message_type,
                 access_key_id=token.access_key_id, expire_time=token.expire_time,
                 lifetime_s=round(token.lifetime_s, 1),
                 refresh_in_s=round(token.refresh_at - token.fetched_at, 1),
                 clock_offset_s=token.clock_offset_s)
        self._observer.token_refreshed(message_type, token.lifetime_s)
        return token


class TokenCredentialsProvider:
    """The MNS SDK's `credentials_provider` for one message type (mns.auth.CredentialsProvider).

    The SDK calls `get_credentials()` on every request. One provider may serve several
    clients and threads: it remembers, per thread, which token it last handed out, so
    `invalidate()` after a 403 drops exactly the token that thread's request used.
    """

    def __init__(self, service: TokenService, message_type: str) -> None:
        self._service = service
        self._message_type = message_type
        self._local = threading.local()

    @property
    def message_type(self) -> str:
        return self._message_type

    def get_credentials(self) -> Credentials:
        token = self._service.token(self._message_type)
        self._local.token = token
        return token.credentials

    def on_auth_error(self) -> None:
        """Call after MNS refused this thread's request with a 403-family code."""
        self.invalidate()

    def invalidate(self) -> bool:
        """Drops the token this thread last used if it is still current (see
        `TokenService.invalidate`); False if it was already replaced or none was used."""
        token: MnsToken | None = getattr(self._local, "token", None)
        if token is None:
            return False
        return self._service.invalidate(self._message_type, token)

    def __repr__(self) -> str:
        return f"TokenCredentialsProvider(message_type={self._message_type!r})"


def _retryable(exc: BaseException) -> bool:
    # A refused AccessKey or a bad request will not be accepted a second later.
    return isinstance(exc, TransientError) and not isinstance(exc, AuthError)
