"""The sandbox's admin API under `/_sandbox/` (JSON, loopback clients only, never faulted).

| method and path                    | body / answer                                            |
|------------------------------------|----------------------------------------------------------|
| GET  /_sandbox/health              | {"ok": true, "pid": ...}                                 |
| GET  /_sandbox/state               | faults, skew, token lifetime, injected-fault counters     |
| POST /_sandbox/faults              | any of FaultSettings' fields, `clock_skew_s`,            |
|                                    | `token_lifetime_s`; answers the new state                |
| POST /_sandbox/reset               | faults off, skew 0, token lifetime from the config        |
| POST /_sandbox/clock               | {"skew_s": seconds}                                      |
| POST /_sandbox/token-lifetime      | {"seconds": seconds}                                     |
| POST /_sandbox/credentials         | {"message_type": "SmsReport", "lifetime_s": optional}    |
|                                    | -> a fresh temporary credential (secret and token incl.) |
| GET  /_sandbox/queues/{name}       | live counts and the number of waiting long polls         |
"""

from __future__ import annotations

import json
import os
from typing import Any

from aiohttp import web

from alicom_sandbox.context import SandboxContext

_LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
_RUNTIME_KEYS = frozenset({"clock_skew_s", "token_lifetime_s"})


def json_response(data: Any, status: int = 200) -> web.Response:
    """An admin answer: `data` as JSON."""
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


def loopback_only(handler: Any) -> Any:
    """Wraps an admin handler: 403 for a client not on loopback, 400 for a ValueError or
    TypeError (a bad request body or value), with the message as `error`."""
    async def guarded(request: web.Request) -> web.Response:
        if request.remote not in _LOOPBACK:
            return json_response({"error": "the admin API only answers loopback clients"}, 403)
        try:
            return await handler(request)  # type: ignore[no-any-return]  # handlers return Response
        except (ValueError, TypeError) as exc:
            return json_response({"error": str(exc)}, 400)

    return guarded


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} without a body); ValueError / TypeError otherwise."""
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except json.JSONDecodeError as exc:
        raise ValueError("the body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise TypeError("the body must be a JSON object")
    return data


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number")
    return float(value)


class AdminApi:
    """Run-time control of one sandbox, for tests, benchmarks and the demo."""

    def __init__(self, ctx: SandboxContext) -> None:
        self._ctx = ctx

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/_sandbox/health", loopback_only(self.health))
        app.router.add_get("/_sandbox/state", loopback_only(self.state))
        app.router.add_post("/_sandbox/faults", loopback_only(self.set_faults))
        app.router.add_post("/_sandbox/reset", loopback_only(self.reset))
        app.router.add_post("/_sandbox/clock", loopback_only(self.set_clock))
        app.router.add_post("/_sandbox/token-lifetime", loopback_only(self.set_token_lifetime))
        app.router.add_post("/_sandbox/credentials", loopback_only(self.issue_credential))
        app.router.add_get("/_sandbox/queues/{name}", loopback_only(self.queue_state))

    def _state(self) -> dict[str, Any]:
        ctx = self._ctx
        return {
            "faults": ctx.faults.settings.as_dict(),
            "injected": dict(ctx.faults.injected),
            "clock_skew_s": ctx.clock.skew_s,
            "token_lifetime_s": ctx.token_lifetime_s,
            "queues": ctx.engine.queue_names(),
        }

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True, "pid": os.getpid()})

    async def state(self, request: web.Request) -> web.Response:
        return json_response(self._state())

    async def set_faults(self, request: web.Request) -> web.Response:
        changes = await json_body(request)
        runtime = {k: changes.pop(k) for k in list(changes) if k in _RUNTIME_KEYS}
        skew = (
            _number(runtime["clock_skew_s"], "clock_skew_s") if "clock_skew_s" in runtime else None
        )
        lifetime = (
            _number(runtime["token_lifetime_s"], "token_lifetime_s")
            if "token_lifetime_s" in runtime
            else None
        )
        if lifetime is not None and lifetime <= 0:
            raise ValueError("token lifetime must be positive")
        self._ctx.faults.update(changes)  # validates the fault fields before anything changes
        if skew is not None:
            self._apply_skew(skew)
        if lifetime is not None:
            self._apply_lifetime(lifetime)
        return json_response(self._state())

    async def reset(self, request: web.Request) -> web.Response:
        self._ctx.faults.reset()
        self._apply_skew(0.0)
        self._ctx.token_lifetime_s = self._ctx.config.token_lifetime_s
        return json_response(self._state())

    async def set_clock(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        self._apply_skew(_number(body.get("skew_s"), "skew_s"))
        return json_response(self._state())

    async def set_token_lifetime(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        self._apply_lifetime(_number(body.get("seconds"), "seconds"))
        return json_response(self._state())

    async def issue_credential(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        message_type = body.get("message_type")
        if not isinstance(message_type, str) or not message_type:
            raise ValueError("message_type must be a non-empty string")
        lifetime = body.get("lifetime_s")
        lifetime_s = (
            self._ctx.token_lifetime_s if lifetime is None else _number(lifetime, "lifetime_s")
        )
        credential = self._ctx.accounts.issue_temporary(message_type, lifetime_s)
        return json_response(
            {
                "access_key_id": credential.access_key_id,
                "access_key_secret": credential.access_key_secret,
                "security_token": credential.security_token,
                "expires_at": credential.expires_at,
                "message_type": credential.message_type,
            }
        )

    async def queue_state(self, request: web.Request) -> web.Response:
        queue = self._ctx.engine.queue_or_none(request.match_info["name"])
        if queue is None:
            return json_response({"error": "no such queue"}, 404)
        active, inactive, delayed = queue.counts(self._ctx.clock.now_ms())
        return json_response(
            {
                "name": queue.name,
                "active": active,
                "inactive": inactive,
                "delayed": delayed,
                "waiters": queue.waiter_count,
            }
        )

    def _apply_skew(self, seconds: float) -> None:
        self._ctx.clock.set_skew(seconds)
        # Long polls sleep on loop time; wake them so they re-read the jumped clock.
        self._ctx.engine.wake_all()

    def _apply_lifetime(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("token lifetime must be positive")
        self._ctx.token_lifetime_s = seconds
