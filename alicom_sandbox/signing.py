"""MNS request authentication, exactly as the service checks it (API 2015-06-06).

`Authorization: MNS <AccessKeyId>:<Signature>` where Signature is
base64(HMAC-SHA1(secret, StringToSign)) and

    StringToSign = METHOD + "\\n" + Content-MD5 + "\\n" + Content-Type + "\\n" + Date + "\\n"
                   + CanonicalizedMNSHeaders + CanonicalizedResource

CanonicalizedMNSHeaders is every `x-mns-*` header, name lowercased, sorted, as `name:value\\n`;
CanonicalizedResource is the request URI exactly as sent (path and raw query string).

Error codes chosen where the MNS documentation has none (see `authenticate`):
- a temporary credential without `security-token`, or with a wrong one: 403 AccessDenied;
- a temporary credential past its expiry: 403 SecurityTokenExpired (the STS-wide code; MNS
  documents no expiry code, and clients treat the whole 403 family as "refresh, retry");
- a `Date` outside the allowed window: 408 TimeExpired, as the MNS error-code table lists it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from alicom_sandbox.accounts import Credential, CredentialStore
from alicom_sandbox.clock import Clock
from alicom_sandbox.context import MNS_API_VERSION, message_type_of_queue
from alicom_sandbox.mns_errors import MnsError


def string_to_sign(
    method: str,
    content_md5: str,
    content_type: str,
    date: str,
    mns_headers: Mapping[str, str],
    resource: str,
) -> str:
    """The text MNS signs; `mns_headers` may hold any headers, only `x-mns-*` ones count."""
    canonical = "".join(
        f"{name}:{mns_headers[name]}\n"
        for name in sorted(mns_headers)
        if name.startswith("x-mns-")
    )
    return f"{method}\n{content_md5}\n{content_type}\n{date}\n{canonical}{resource}"


def signature(secret: str, text: str) -> str:
    """base64(HMAC-SHA1(secret, text)), the signature part of the Authorization header."""
    digest = hmac.digest(secret.encode("utf-8"), text.encode("utf-8"), "sha1")
    return base64.b64encode(digest).decode("ascii")


def content_md5_of(body: bytes) -> str:
    """What the official Python SDK sends as Content-MD5: base64 of the *hex* digest text."""
    return base64.b64encode(hashlib.md5(body).hexdigest().encode("ascii")).decode("ascii")  # noqa: S324 - protocol checksum


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The parts of an HTTP request that authentication looks at."""

    method: str
    raw_path: str  # path and query string exactly as sent
    headers: Mapping[str, str]  # case-insensitive mapping (aiohttp's CIMultiDictProxy)
    body: bytes


class Authenticator:
    """Checks MNS requests against the credential store and the (skewable) sandbox clock."""

    def __init__(self, accounts: CredentialStore, clock: Clock, date_window_s: float) -> None:
        self._accounts = accounts
        self._clock = clock
        self._date_window_s = date_window_s
        # SDK clients send one Date per second: remember the last parse.
        self._last_date: tuple[str, float] = ("", 0.0)

    def authenticate(self, req: SignedRequest) -> Credential:
        """The credential that signed `req`, or MnsError with the code MNS would answer."""
        headers = req.headers
        version = headers.get("x-mns-version")
        if version is None:
            raise MnsError(400, "MissingVersionHeader", "x-mns-version header is required.")
        if version != MNS_API_VERSION:
            raise MnsError(400, "InvalidVersionHeader", "The version header is invalid.")
        key_id, sent_signature = _parse_authorization(headers.get("authorization"))
        date = headers.get("date")
        if date is None:
            raise MnsError(400, "MissingDateHeader", "Date header is required.")
        sent_at = self._parse_date(date)
        credential = self._accounts.lookup(key_id)
        if credential is None:
            raise MnsError(403, "InvalidAccessKeyId", "The AccessKey Id you provided is not exist.")
        text = string_to_sign(
            req.method,
            headers.get("content-md5", ""),
            headers.get("content-type", ""),
            date,
            {k.lower(): v for k, v in headers.items() if k[:6].lower() == "x-mns-"},
            req.raw_path,
        )
        if not hmac.compare_digest(signature(credential.access_key_secret, text), sent_signature):
            raise MnsError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        now = self._clock.now()
        self._check_token(credential, headers.get("security-token"), now)
        if abs(now - sent_at) > self._date_window_s:
            raise MnsError(408, "TimeExpired", "The http request you sent is expired.")
        self._check_md5(headers.get("content-md5"), req.body)
        return credential

    def _parse_date(self, date: str) -> float:
        if self._last_date[0] == date:
            return self._last_date[1]
        try:
            parsed = parsedate_to_datetime(date)
        except (TypeError, ValueError) as exc:
            raise MnsError(400, "InvalidDateHeader", "The Date header format is invalid.") from exc
        if parsed.tzinfo is None:
            raise MnsError(400, "InvalidDateHeader", "The Date header format is invalid.")
        epoch = parsed.timestamp()
        self._last_date = (date, epoch)
        return epoch

    @staticmethod
    def _check_token(credential: Credential, sent_token: str | None, now: float) -> None:
        if credential.security_token is None:
            return  # the root AccessKey needs no token
        if sent_token is None or not hmac.compare_digest(sent_token, credential.security_token):
            raise MnsError(403, "AccessDenied", "The security token you provided is invalid.")
        if credential.expired(now):
            raise MnsError(
                403, "SecurityTokenExpired", "The security token you provided has expired."
            )

    @staticmethod
    def _check_md5(sent_md5: str | None, body: bytes) -> None:
        if sent_md5 is None or not body:
            return
        # Clients differ (the Python SDK sends base64 of the hex digest, others base64 of the
        # raw digest); accept both, refuse anything else.
        digest = hashlib.md5(body)  # noqa: S324 - protocol checksum, not security
        if sent_md5 == base64.b64encode(digest.hexdigest().encode("ascii")).decode("ascii"):
            return
        if sent_md5 == base64.b64encode(digest.digest()).decode("ascii"):
            return
        raise MnsError(400, "InvalidDegist", "The Content-MD5 you specified is invalid.")


def _parse_authorization(value: str | None) -> tuple[str, str]:
    if value is None:
        raise MnsError(400, "MissingAuthorizationHeader", "Authorization header is required.")
    scheme, _, rest = value.partition(" ")
    key_id, sep, sent_signature = rest.strip().partition(":")
    if scheme != "MNS" or not sep or not key_id or not sent_signature:
        raise MnsError(
            400, "InvalidAuthorizationHeader", "The Authorization header format is invalid."
        )
    return key_id, sent_signature


# Operations a temporary (customer) credential may perform on its own queue. Creating,
# deleting, re-configuring queues and sending are the platform's business (root key only).
_TEMPORARY_OPERATIONS = frozenset(
    {
        "GetQueueAttributes",
        "ReceiveMessage",
        "BatchReceiveMessage",
        "DeleteMessage",
        "BatchDeleteMessage",
        "ChangeMessageVisibility",
        "PeekMessage",
        "BatchPeekMessage",
    }
)


def authorize(credential: Credential, operation: str, queue_name: str | None) -> None:
    """Raise 403 AccessDenied unless `credential` may run `operation` on `queue_name`.

    The root key may do everything. A temporary key for MessageType X may only run the
    consumer operations above, and only on a queue whose name ends in `-X`.
    """
    if not credential.is_temporary:
        return
    allowed = (
        operation in _TEMPORARY_OPERATIONS
        and queue_name is not None
        and message_type_of_queue(queue_name) == credential.message_type
    )
    if not allowed:
        raise MnsError(
            403,
            "AccessDenied",
            "The OwnerId that your Access Key Id associated to is forbidden for this operation.",
        )
