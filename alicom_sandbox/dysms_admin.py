"""Admin API and command-line flags of the sandbox's sending side (`alicom_sandbox.dysms`).

`add_routes(app, ctx)` and `add_arguments(parser)` / `settings_from_args(args)` are the hooks
`alicom_sandbox.server` calls; the routes are described in `alicom_sandbox.dysms`.
"""

from __future__ import annotations

import argparse
import dataclasses

from aiohttp import web

from alicom_sandbox.admin import json_body, json_response, loopback_only
from alicom_sandbox.context import SandboxContext
from alicom_sandbox.dysms import produce, state_of
from alicom_sandbox.sms_records import DysmsSettings, DysmsState, SendRecord


class _Admin:
    def __init__(self, ctx: SandboxContext) -> None:
        self._ctx = ctx

    async def handle(self, request: web.Request) -> web.Response:
        return await self._route(request, state_of(self._ctx))

    async def _route(self, request: web.Request, state: DysmsState) -> web.Response:
        action = request.match_info.get("action", "")
        if request.method == "POST" and action == "":
            body = await json_body(request)
            state.apply(state.settings.updated(body))
        elif request.method == "POST" and action == "reset":
            state.reset()
        elif request.method == "POST" and action == "deliver-lost":
            lost = _lost(state)
            for record in lost:
                record.lost = False
                produce(self._ctx, state, record)
            state.counters["lost"] -= len(lost)
            return json_response({"delivered": len(lost)})
        elif action == "lost":
            return json_response([{"biz_id": r.biz_id, "phone_number": r.phone}
                                  for r in _lost(state)])
        elif action:
            return json_response({"error": "no such admin action"}, 404)
        return json_response({"settings": dataclasses.asdict(state.settings),
                      "counters": dict(state.counters)})


def _lost(state: DysmsState) -> list[SendRecord]:
    return [r for records in state.by_biz.values() for r in records if r.lost]


def add_routes(app: web.Application, ctx: SandboxContext) -> None:
    """The `/_sandbox/dysms` admin routes (server.py's hook); closes the push session on exit."""
    admin = _Admin(ctx)
    app.router.add_route("*", "/_sandbox/dysms", loopback_only(admin.handle))
    app.router.add_route("*", "/_sandbox/dysms/{action}", loopback_only(admin.handle))

    async def close_session(_app: web.Application) -> None:
        state = state_of(ctx)
        if state.session is not None:
            await state.session.close()

    app.on_cleanup.append(close_session)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sending side's start-up flags (server.py's hook)."""
    g = parser.add_argument_group("sending side (Dysmsapi SendSms / QuerySendDetails)")
    g.add_argument("--report-delay-s", default="0.2-1.0", metavar="MIN-MAX",
                   help="delay from a send to its receipt (default 0.2-1.0)")
    g.add_argument("--report-failure-rate", type=float, default=0.1,
                   help="share of sends whose receipt says the delivery failed (default 0.1)")
    g.add_argument("--report-duplicate-rate", type=float, default=0.0,
                   help="share of receipts delivered twice, as the platform may (default 0)")
    g.add_argument("--report-loss-rate", type=float, default=0.0,
                   help="share of receipts never produced (QuerySendDetails still knows them)")
    g.add_argument("--report-push-url", default=None,
                   help="POST receipts here (a JSON array) instead of the MNS queue")
    g.add_argument("--query-qps", type=float, default=0.0, help="QuerySendDetails limit, 0 none")
    g.add_argument("--send-qps", type=float, default=0.0, help="SendSms limit, 0 none")
    g.add_argument("--throttle", choices=("business", "gateway"), default="business",
                   help="how a rate limit is answered: the business code isv.BUSINESS_LIMIT_"
                        "CONTROL, or the gateway's Throttling.User (default business)")


def settings_from_args(args: argparse.Namespace) -> DysmsSettings:
    """`DysmsSettings` from the flags of `add_arguments` (ValueError on a bad value)."""
    low, _, high = str(args.report_delay_s).partition("-")
    return DysmsSettings(
        report_delay_min_s=float(low), report_delay_max_s=float(high or low),
        failure_rate=args.report_failure_rate, duplicate_rate=args.report_duplicate_rate,
        loss_rate=args.report_loss_rate, push_url=args.report_push_url,
        query_qps=args.query_qps, send_qps=args.send_qps, throttle=args.throttle,
        seed=getattr(args, "seed", None),
    )
