"""The sandbox's Alibaba Cloud OpenAPI endpoint: ACS3-HMAC-SHA256 verification + action dispatch.

S1's server hands every `POST /` and every request carrying `x-acs-action` to
`handle_acs_request`, which answers as Alibaba's OpenAPI gateway does, as far as the official
Tea SDK can tell. Checks, in order: known action and version; a well-formed `Authorization`;
`x-acs-date` within `config.date_window_s` of the (skewed) sandbox clock; a known AccessKeyId;
the signature, rebuilt from the request as received exactly as
`alibabacloud_tea_openapi.utils.Utils.get_authorization` builds it; the security token of a
temporary credential; a fresh `x-acs-signature-nonce`; the caller's permission; the parameters.
A refusal is HTTP 4xx with `{"RequestId","HostId","Code","Message","Recommend"}`, raised by the
Tea client as `ClientException` with `.code`; a business error is HTTP 200 with `Code != "OK"`,
which the Tea client returns as a normal result. Actions live in a registry
(`register_action`), so Dysmsapi `SendSms` / `QuerySendDetails` can join on the same port.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

from aiohttp import web
from multidict import CIMultiDictProxy

from alicom_sandbox.accounts import Credential
from alicom_sandbox.context import SandboxContext, message_type_of_queue
from alicom_sandbox.fakes import MESSAGE_TYPES, shanghai_time
from alicom_sandbox.faults import FaultKind

log = logging.getLogger(__name__)

ACS3_ALGORITHM = "ACS3-HMAC-SHA256"
_ACS_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Nonces are remembered this many date windows: a date may be off by one window either way.
_NONCE_WINDOWS = 2.0


# Refusals: code -> (HTTP status, message), worded as Alibaba's OpenAPI gateway words them.
# Codes the gateway does not document for a case are the nearest documented ones.
ERRORS: dict[str, tuple[int, str]] = {
    "IncompleteSignature": (400, "The request signature does not conform to Aliyun standards."),
    "InvalidTimeStamp.Format": (400, "Specified time stamp or date value is not well formatted."),
    "InvalidTimeStamp.Expired": (400, "Specified time stamp or date value is expired."),
    "InvalidAccessKeyId.NotFound": (404, "Specified access key is not found."),
    "SignatureDoesNotMatch": (400, "Specified signature is not matched with our calculation."),
    "InvalidSecurityToken.MismatchWithAccessKey": (400, "Specified SecurityToken mismatch "
                                                   "with the AccessKey."),
    "InvalidSecurityToken.Expired": (400, "Specified SecurityToken is expired."),
    "MissingSignatureNonce": (400, "SignatureNonce is mandatory for this action."),
    "SignatureNonceUsed": (400, "Specified signature nonce was used already."),
    "InvalidAction.NotFound": (404, "Specified api is not found, please check your url "
                                    "and method."),
    "InvalidVersion": (400, "Specified parameter Version is not valid."),
    "Forbidden.RAM": (403, "User not authorized to operate on the specified resource, "
                           "or this API doesn't support RAM."),
    "MissingMessageType": (400, "MessageType is mandatory for this action."),
    "Throttling.User": (429, "Request was denied due to user flow control."),
    "InternalError": (500, "The request processing has failed due to some unknown error, "
                           "exception or failure."),
    "ServiceUnavailable": (503, "The request has failed due to a temporary failure of the "
                                "server."),
}


class AcsError(Exception):
    """A refusal, answered with the status and message of `ERRORS[code]` (plus `detail`).

    Actions of other products add their codes to `ERRORS` when they register.
    """

    def __init__(self, code: str, detail: str = "") -> None:
        self.status, message = ERRORS[code]
        self.code = code
        self.message = f"{message} {detail}" if detail else message
        super().__init__(f"{code}: {self.message}")


@dataclass(frozen=True)
class AcsCall:
    """One verified call, as an action handler sees it."""

    action: str
    version: str
    params: Mapping[str, str]  # query parameters, plus form fields of a form body
    credential: Credential
    request_id: str
    now: float  # sandbox clock, epoch seconds


# Returns the JSON body of an HTTP 200 answer; raises AcsError to refuse.
ActionHandler = Callable[[AcsCall, SandboxContext], dict[str, Any]]


@dataclass(frozen=True)
class AcsAction:
    """One OpenAPI action the sandbox answers. `host_id` names the product's endpoint."""

    name: str
    version: str
    host_id: str
    handler: ActionHandler
    root_only: bool = True  # temporary (STS) credentials are refused with Forbidden.RAM


_ACTIONS: dict[str, AcsAction] = {}


def register_action(action: AcsAction) -> None:
    """Adds (or replaces) an action; action names are unique across the sandbox's products."""
    _ACTIONS[action.name] = action


@dataclass(frozen=True)
class Authorization:
    """The parsed `Authorization` header of an ACS3 request."""

    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> Authorization:
    """Parses `ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<a;b>,Signature=<hex>`."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ACS3_ALGORITHM:
        raise AcsError("IncompleteSignature", f"Only {ACS3_ALGORITHM} is supported.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key] = val
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not fields.get(k)]
    if missing:
        raise AcsError("IncompleteSignature", f"Authorization lacks {', '.join(missing)}.")
    signed = tuple(fields["SignedHeaders"].split(";"))
    return Authorization(fields["Credential"], signed, fields["Signature"])


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Sorted `key=value` pairs joined by "&", both sides percent-encoded (RFC 3986, "~" kept)."""
    encoded = sorted((quote(k, safe="~"), quote(v, safe="~")) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_headers(headers: CIMultiDictProxy[str], signed: Iterable[str]) -> str:
    """`name:value\\n` for each signed header, as the SDK's `get_canonicalized_headers`."""
    lines = []
    for name in signed:
        values = sorted(v.strip() for v in headers.getall(name, []))
        lines.append(f"{name}:{','.join(values)}\n")
    return "".join(lines)


def string_to_sign(canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return f"{ACS3_ALGORITHM}\n{digest}"


def sign(secret: str, to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign with the AccessKey secret."""
    return hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def _check_signed_header_set(headers: CIMultiDictProxy[str], auth: Authorization) -> None:
    """host and every x-acs-* header must be covered by the signature (the ACS3 rule)."""
    names = set(auth.signed_headers)
    required = {"host"} | {k.lower() for k in headers if k.lower().startswith("x-acs-")}
    unsigned = sorted(required - names)
    if unsigned:
        raise AcsError("IncompleteSignature", f"Headers {', '.join(unsigned)} must be signed.")


def _verify_signature(request: web.Request, body: bytes, auth: Authorization, secret: str) -> None:
    payload_hash = hashlib.sha256(body).hexdigest()
    declared = request.headers.get("x-acs-content-sha256")
    if declared is not None and declared.lower() != payload_hash:
        raise AcsError("SignatureDoesNotMatch", "x-acs-content-sha256 is not the body's.")
    canonical = "\n".join((
        request.method,
        request.rel_url.raw_path or "/",
        canonical_query(request.query.items()),
        canonical_headers(request.headers, auth.signed_headers),
        ";".join(auth.signed_headers),
        payload_hash,
    ))
    to_sign = string_to_sign(canonical)
    if not hmac.compare_digest(sign(secret, to_sign), auth.signature.lower()):
        # The real gateway echoes its string to sign; it holds only a hash, no secret.
        raise AcsError("SignatureDoesNotMatch", f"server string to sign is:{to_sign}")


def _check_date(headers: CIMultiDictProxy[str], now: float, window_s: float) -> None:
    value = headers.get("x-acs-date")
    if not value:
        raise AcsError("InvalidTimeStamp.Format", "x-acs-date is missing.")
    try:
        sent = dt.datetime.strptime(value, _ACS_DATE_FORMAT).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise AcsError("InvalidTimeStamp.Format") from None
    if abs(sent.timestamp() - now) > window_s:
        raise AcsError("InvalidTimeStamp.Expired", f"Server time is {_acs_date(now)}.")


def _acs_date(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc).strftime(_ACS_DATE_FORMAT)


def _check_credential(headers: CIMultiDictProxy[str], cred: Credential, now: float) -> None:
    """A temporary credential must come with its own token and be unexpired."""
    if not cred.is_temporary:
        return
    token = headers.get("x-acs-security-token", "")
    if not hmac.compare_digest(token, cred.security_token or ""):
        raise AcsError("InvalidSecurityToken.MismatchWithAccessKey")
    if cred.expired(now):
        raise AcsError("InvalidSecurityToken.Expired")


def _lookup_action(headers: CIMultiDictProxy[str], method: str) -> AcsAction:
    name = headers.get("x-acs-action", "")
    action = _ACTIONS.get(name)
    if action is None or method not in ("GET", "POST"):
        raise AcsError("InvalidAction.NotFound")
    if headers.get("x-acs-version") != action.version:
        raise AcsError("InvalidVersion")
    return action


def _params(request: web.Request, body: bytes) -> dict[str, str]:
    params = dict(request.query)
    if request.content_type == "application/x-www-form-urlencoded" and body:
        params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    return params


def _authenticate(request: web.Request, body: bytes, ctx: SandboxContext) -> Credential:
    header = request.headers.get("Authorization")
    if not header:
        raise AcsError("IncompleteSignature", "The Authorization header is missing.")
    auth = parse_authorization(header)
    _check_signed_header_set(request.headers, auth)
    now = ctx.clock.now()
    _check_date(request.headers, now, ctx.config.date_window_s)
    cred = ctx.accounts.lookup(auth.access_key_id)
    if cred is None:
        raise AcsError("InvalidAccessKeyId.NotFound")
    _verify_signature(request, body, auth, cred.access_key_secret)
    _check_credential(request.headers, cred, now)
    nonce = request.headers.get("x-acs-signature-nonce", "")
    if not nonce:
        raise AcsError("MissingSignatureNonce")
    keep_s = ctx.config.date_window_s * _NONCE_WINDOWS
    if not ctx.nonces.check_and_record(nonce, now, keep_s):
        raise AcsError("SignatureNonceUsed")
    return cred


def _check_permission(action: AcsAction, cred: Credential) -> None:
    if action.root_only and cred.is_temporary:
        raise AcsError("Forbidden.RAM")


def _json_response(status: int, body: Mapping[str, Any], request_id: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
        content_type="application/json",
        charset="utf-8",
        headers={"x-acs-request-id": request_id},
    )


def _error_response(err: AcsError, request_id: str, host_id: str) -> web.Response:
    body = {
        "RequestId": request_id,
        "HostId": host_id,
        "Code": err.code,
        "Message": err.message,
        "Recommend": f"https://api.aliyun.com/troubleshoot?q={err.code}&requestId={request_id}",
    }
    return _json_response(err.status, body, request_id)


_MAX_HANG_S = 600.0


async def _token_faults(ctx: SandboxContext) -> None:
    """The token API's injected faults: latency, then a hang, a 5xx or throttling (raised as
    the gateway's AcsError) when the dice say so."""
    faults = ctx.faults
    if faults.settings.token_latency_ms:
        faults.note("token_latency")
        await asyncio.sleep(faults.token_latency_s)
    kind = faults.decide_token()
    if kind is FaultKind.HANG:
        await asyncio.sleep(_MAX_HANG_S)  # cancelled when the client gives up and disconnects
    if kind is FaultKind.THROTTLE:
        raise AcsError("Throttling.User")
    if kind in (FaultKind.ERROR, FaultKind.HANG):
        raise AcsError("InternalError" if faults.error_status() == 500 else "ServiceUnavailable")


async def handle_acs_request(request: web.Request, ctx: SandboxContext) -> web.Response:
    """Verifies one OpenAPI (ACS3) request and answers it with its action's handler."""
    request_id = str(uuid.uuid4()).upper()
    host_id = request.host or "dybaseapi.aliyuncs.com"
    try:
        action = _lookup_action(request.headers, request.method)
        host_id = action.host_id
        if action.name == "QueryTokenForMnsQueue":
            await _token_faults(ctx)
        body = await request.read()
        cred = _authenticate(request, body, ctx)
        _check_permission(action, cred)
        params = _params(request, body)
        call = AcsCall(action.name, action.version, params, cred, request_id, ctx.clock.now())
        answer = action.handler(call, ctx)
    except AcsError as err:
        log.info("acs refused action=%s code=%s request_id=%s",
                 request.headers.get("x-acs-action", ""), err.code, request_id)
        return _error_response(err, request_id, host_id)
    return _json_response(200, answer, request_id)


# ---- Dybaseapi 2017-05-25 ----------------------------------------------------------------

DYBASEAPI_VERSION = "2017-05-25"


def _business_error(call: AcsCall, code: str, message: str) -> dict[str, Any]:
    """HTTP 200 with Code != OK: the SDK returns it as a normal result, the caller checks."""
    return {"Code": code, "Message": message, "RequestId": call.request_id}


def query_token_for_mns_queue(call: AcsCall, ctx: SandboxContext) -> dict[str, Any]:
    """`QueryTokenForMnsQueue`: a temporary credential for one MessageType's queue.

    The credential comes from `ctx.accounts.issue_temporary`, so the sandbox's MNS accepts it
    for exactly `Alicom-Queue-<account>-<MessageType>`; its lifetime is
    `ctx.token_lifetime_s` (changed at run time by the admin API). Times are
    `yyyy-MM-dd HH:mm:ss` in Asia/Shanghai, truncated to the second, as the real API writes them.
    """
    message_type = call.params.get("MessageType", "")
    if not message_type:
        raise AcsError("MissingMessageType")
    if message_type not in MESSAGE_TYPES:
        # The real business code for this case is undocumented; isv.INVALID_PARAMETERS is
        # Alicom's documented generic "parameter error".
        return _business_error(
            call, "isv.INVALID_PARAMETERS", f"MessageType {message_type} is not supported."
        )
    queue_name = call.params.get("QueueName", "")
    if queue_name and message_type_of_queue(queue_name) != message_type:
        return _business_error(
            call, "isv.INVALID_PARAMETERS",
            f"QueueName {queue_name} is not the queue of MessageType {message_type}.",
        )
    lifetime_s = ctx.token_lifetime_s
    cred = ctx.accounts.issue_temporary(message_type, lifetime_s)
    expires_at = cred.expires_at if cred.expires_at is not None else call.now + lifetime_s
    log.info("token issued id=%s message_type=%s lifetime_s=%s",
             cred.access_key_id, message_type, lifetime_s)
    return {
        "Code": "OK",
        "Message": "OK",
        "RequestId": call.request_id,
        "MessageTokenDTO": {
            "AccessKeyId": cred.access_key_id,
            "AccessKeySecret": cred.access_key_secret,
            "SecurityToken": cred.security_token,
            "CreateTime": shanghai_time(call.now),
            "ExpireTime": shanghai_time(expires_at),
        },
    }


register_action(AcsAction(
    "QueryTokenForMnsQueue", DYBASEAPI_VERSION, "dybaseapi.aliyuncs.com", query_token_for_mns_queue
))
