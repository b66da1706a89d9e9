"""The Dybaseapi boundary of `consumer.clients.tokens`: the official Tea client, its errors,
its answers.

`dybaseapi_client` builds `alibabacloud_dybaseapi20170525.client.Client` from the AccessKey
and the endpoints (timeouts set, SDK retries off); `sdk_error` / `classify` turn what it
raises or answers into our error family; `token_from` turns an answer into an `MnsToken`
whose times are on OUR clock (the expiry maths is explained in `consumer.clients.tokens`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

import structlog
from alibabacloud_dybaseapi20170525.client import Client as DybaseapiClient
from mns.auth import Credentials
from Tea.exceptions import TeaException

from consumer.clients.credentials import AccessKey
from consumer.clients.tea import tea_config
from consumer.errors import AlicomReceiptsError, AuthError, PermanentError, TransientError
from consumer.receipts import SHANGHAI
from consumer.settings import Endpoints, TokenSettings

log = structlog.get_logger("alicom_receipts.tokens")

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
ACTION = "QueryTokenForMnsQueue"
#: A measured server/local clock offset above this is logged as a warning.
SKEW_WARNING_S = 60.0


def parse_shanghai_time(text: str) -> float:
    """Epoch seconds of "yyyy-MM-dd HH:mm:ss" read as Asia/Shanghai wall time."""
    naive = dt.datetime.strptime(text.strip(), TIME_FORMAT)
    return naive.replace(tzinfo=SHANGHAI).timestamp()


@dataclass(frozen=True, eq=False, repr=False)
class MnsToken:
    """One temporary token; times are epoch seconds on OUR clock (see `consumer.clients.tokens`).

    `credentials` is the MNS SDK object handed out on every request (built once).
    Compared by identity: each fetch makes a new token.
    """

    message_type: str
    access_key_id: str
    access_key_secret: str
    security_token: str
    expire_time: str          # ExpireTime exactly as the server wrote it (Shanghai time)
    fetched_at: float
    expires_at: float
    refresh_at: float
    clock_offset_s: float | None  # server clock minus ours, from CreateTime; None if unknown
    credentials: Credentials = field(init=False)

    def __post_init__(self) -> None:
        creds = Credentials(self.access_key_id, self.access_key_secret, self.security_token)
        object.__setattr__(self, "credentials", creds)

    @property
    def lifetime_s(self) -> float:
        """The life it had left when it arrived."""
        return self.expires_at - self.fetched_at

    def __repr__(self) -> str:
        return (f"MnsToken(message_type={self.message_type!r}, "
                f"access_key_id={self.access_key_id!r}, access_key_secret='***', "
                f"security_token='***', expire_time={self.expire_time!r})")

    __str__ = __repr__


def dybaseapi_client(key: AccessKey, endpoints: Endpoints,
                     settings: TokenSettings) -> DybaseapiClient:
    """The official Dybaseapi client on `endpoints`, signing with `key`, with timeouts."""
    return DybaseapiClient(tea_config(
        key, endpoints.token_endpoint, endpoints.token_protocol, endpoints.region_id,
        connect_timeout_s=settings.connect_timeout_s, read_timeout_s=settings.read_timeout_s))


_TRANSIENT_CODES = re.compile(
    r"Throttl|LIMIT|ServiceUnavailable|InternalError|SYSTEM_ERROR|Busy|Timeout|NonceUsed", re.I)
_AUTH_CODES = re.compile(
    r"Forbidden|NoPermission|AccessDenied|PERMISSION|InvalidAccessKeyId|Signature|"
    r"SecurityToken|InvalidTimeStamp|ACCOUNT_|UN_?SUBSCRI", re.I)
_PERMANENT_CODES = re.compile(
    r"INVALID_PARAM|InvalidParameter|Missing|MessageType|QueueName|InvalidAction|InvalidVersion",
    re.I)


def classify(code: str, status: int | None) -> type[AlicomReceiptsError]:
    """The error class for a Dybaseapi error code (and HTTP status when it was a refusal):
    throttling/5xx -> TransientError; permission, signature, token, timestamp ->
    AuthError; bad parameters -> PermanentError. Unknown 4xx are permanent; anything else
    (unknown business codes, 5xx, no status) transient."""
    if _TRANSIENT_CODES.search(code):
        return TransientError
    if _AUTH_CODES.search(code) or status in (401, 403):
        return AuthError
    if _PERMANENT_CODES.search(code):
        return PermanentError
    if status is not None and 400 <= status < 500 and status != 429:
        return PermanentError
    return TransientError


_QUERY = re.compile(r"\?[^\s)'\"]*")


def sdk_error(exc: BaseException, message_type: str) -> AlicomReceiptsError:
    """Our error for an exception of the Tea SDK; the message has the code, HTTP status and
    request id but no query string, header or secret."""
    inner = getattr(exc, "inner_exception", None)
    if inner is not None or not isinstance(exc, TeaException):  # network, timeout, parsing
        cause = inner if isinstance(inner, BaseException) else exc
        text = _QUERY.sub("", str(cause))[:300]
        return TransientError(f"{ACTION}({message_type}) failed: {type(cause).__name__}: {text}")
    code = str(getattr(exc, "code", "") or "Unknown")
    status = getattr(exc, "status_code", None) or getattr(exc, "statusCode", None)
    request_id = getattr(exc, "request_id", None)
    data = getattr(exc, "data", None)
    message = data.get("Message") if isinstance(data, dict) else None
    kind = classify(code, status if isinstance(status, int) else None)
    hint = " (is this host's clock right?)" if "TimeStamp" in code else ""
    return kind(f"{ACTION}({message_type}) refused: {code}{hint}, HTTP {status}, request id "
                f"{request_id}: {str(message or '')[:200]}")


def token_from(message_type: str, body: Any, started: float, finished: float,
               refresh_before_s: float) -> MnsToken:
    """The token in an answer body (the expiry maths is explained in `consumer.clients.tokens`)."""
    if body is None:
        raise TransientError(f"{ACTION}({message_type}) gave an empty answer")
    if body.code != "OK":
        kind = classify(str(body.code), None)
        raise kind(f"{ACTION}({message_type}) answered {body.code}, request id "
                   f"{body.request_id}: {str(body.message or '')[:200]}")
    dto = body.message_token_dto
    fields_ = ("access_key_id", "access_key_secret", "security_token", "expire_time")
    if dto is None or not all(getattr(dto, f, None) for f in fields_):
        raise TransientError(f"{ACTION}({message_type}) answer lacks a complete "
                             f"MessageTokenDTO, request id {body.request_id}")
    try:
        expire = parse_shanghai_time(dto.expire_time)
        create = parse_shanghai_time(dto.create_time) if dto.create_time else None
    except ValueError:
        raise TransientError(f"{ACTION}({message_type}) gave unreadable times: ExpireTime "
                             f"{dto.expire_time!r}, CreateTime {dto.create_time!r}") from None
    remaining, offset = _remaining_life(message_type, expire, create, started, finished)
    margin = min(refresh_before_s, remaining / 2)
    return MnsToken(message_type=message_type, access_key_id=dto.access_key_id,
                    access_key_secret=dto.access_key_secret, security_token=dto.security_token,
                    expire_time=dto.expire_time, fetched_at=finished,
                    expires_at=finished + remaining, refresh_at=finished + remaining - margin,
                    clock_offset_s=offset)


def _remaining_life(message_type: str, expire: float, create: float | None, started: float,
                    finished: float) -> tuple[float, float | None]:
    """(seconds of life left on arrival, server-minus-local clock offset or None)."""
    by_clock = expire - finished
    if create is None:
        remaining, offset = by_clock, None
    else:
        offset = round(create - started, 1)
        by_lifetime = started + (expire - create) - 1.0 - finished
        remaining = min(by_clock, by_lifetime) if by_clock > 0 else by_lifetime
        if abs(offset) > SKEW_WARNING_S:
            log.warning("token_clock_skew", message_type=message_type, clock_offset_s=offset,
                        remaining_s=round(remaining, 1),
                        note="server clock minus ours, measured from CreateTime")
    if remaining <= 0:
        raise TransientError(f"{ACTION}({message_type}) gave a token that has already expired "
                             f"(ExpireTime is {round(-remaining, 1)} s in the past)")
    return remaining, offset
