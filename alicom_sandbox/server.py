"""The sandbox process: one aiohttp app on one loopback port, and its command line.

Routes:
- everything under `/queues`: the MNS API (`alicom_sandbox.mns_api`);
- `POST /` and any request with an `x-acs-action` header: the Dybaseapi token API (and
  Dysmsapi's actions), `alicom_sandbox.dybase.handle_acs_request`;
- `/_sandbox/...`: the admin API (`alicom_sandbox.admin`; `/_sandbox/dysms...` is the
  sending side's, `alicom_sandbox.dysms_admin`).
A catch-all middleware turns anything unexpected into MNS error XML (InternalError, logged).

Run: `alicom-receipts sandbox [options]` or `python -m alicom_sandbox.server [options]`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from alicom_sandbox import dysms, dysms_admin
from alicom_sandbox.accounts import CredentialStore
from alicom_sandbox.admin import AdminApi
from alicom_sandbox.clock import Clock
from alicom_sandbox.context import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    SandboxConfig,
    SandboxContext,
    default_queue_names,
)
from alicom_sandbox.dybase import handle_acs_request
from alicom_sandbox.engine import QueueEngine
from alicom_sandbox.faults import Faults, FaultSettings
from alicom_sandbox.mns_api import MnsApi, error_response
from alicom_sandbox.mns_errors import MnsError
from alicom_sandbox.mns_limits import QueueAttributes

log = logging.getLogger("alicom_sandbox")

CTX_KEY = web.AppKey("sandbox_ctx", SandboxContext)
_MAX_REQUEST_BYTES = 1024 * 1024


def build_context(
    config: SandboxConfig,
    faults: FaultSettings | None = None,
    clock_skew_s: float = 0.0,
    seed: int | None = None,
) -> SandboxContext:
    """A fresh sandbox state with the configured default queues already created."""
    clock = Clock(clock_skew_s)
    defaults = QueueAttributes(
        visibility_timeout_s=config.visibility_timeout_s,
        maximum_message_size_bytes=config.maximum_message_size_bytes,
        message_retention_s=config.message_retention_s,
        delay_s=config.delay_s,
        polling_wait_s=config.polling_wait_s,
    )
    engine = QueueEngine(clock, defaults)
    for name in config.default_queues:
        engine.create_queue(name, defaults)
    accounts = CredentialStore(config.root_access_key_id, config.root_access_key_secret, clock)
    return SandboxContext(
        config=config,
        clock=clock,
        accounts=accounts,
        engine=engine,
        faults=Faults(faults, seed=seed),
    )


def _http_error(exc: web.HTTPException) -> MnsError:
    if exc.status in (404, 405):
        return MnsError(400, "InvalidRequestURL", "Http request URL format invalid.")
    if exc.status == 413:
        return MnsError(400, "InvalidArgument", "The request body is too large.")
    return MnsError(exc.status, "InvalidArgument", exc.reason)


def build_app(ctx: SandboxContext) -> web.Application:
    """The aiohttp application serving MNS, the token API and the admin API."""
    mns = MnsApi(ctx)

    async def acs(request: web.Request) -> web.StreamResponse:
        return await handle_acs_request(request, ctx)

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            if "x-acs-action" in request.headers and not request.path.startswith("/_sandbox/"):
                return await acs(request)
            return await handler(request)  # type: ignore[no-any-return]  # aiohttp handler
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(_http_error(exc), mns.next_request_id(), request.host)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            err = MnsError(500, "InternalError", "Interal error.")
            return error_response(err, mns.next_request_id(), request.host)

    app = web.Application(middlewares=[guard], client_max_size=_MAX_REQUEST_BYTES)
    app[CTX_KEY] = ctx
    for path in ("/queues", "/queues/{name}", "/queues/{name}/messages"):
        app.router.add_route("*", path, mns.handle)
    app.router.add_post("/", acs)
    AdminApi(ctx).add_routes(app)
    dysms_admin.add_routes(app, ctx)
    return app


async def serve(
    ctx: SandboxContext,
    stop: asyncio.Event,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until `stop` is set; `on_ready` gets the endpoint once the port is bound."""
    runner = web.AppRunner(
        build_app(ctx), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, ctx.config.host, ctx.config.port, reuse_address=True)
        await site.start()
        host, port = runner.addresses[0][:2]
        endpoint = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        if on_ready is not None:
            on_ready(endpoint)
        await stop.wait()
    finally:
        await runner.cleanup()


# The FaultSettings fields that are also command-line flags (--latency-ms for latency_ms).
_FAULT_FLAGS = ("latency_ms", "error_rate", "drop_rate", "hang_rate", "max_long_polls",
                "token_latency_ms", "token_error_rate", "token_throttle_rate", "token_hang_rate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alicom-receipts sandbox",
        description="A local Alicom sandbox: MNS queues, the Dybaseapi token API and the "
        "Dysmsapi sending side on one port.",
        epilog="`alicom-receipts sandbox publish --help`: publish fake receipts into a running "
        "sandbox's queues.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8765,
                   help="port to listen on, 0-65535 (default 8765; 0 picks a free port)")
    p.add_argument("--token-lifetime-s", type=float, default=3600.0,
                   help="lifetime of the temporary MNS tokens (default 3600)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every MNS request")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of 500/503 answers")
    p.add_argument("--drop-rate", type=float, default=0.0, help="share of dropped connections")
    p.add_argument("--hang-rate", type=float, default=0.0, help="share of receives that hang")
    p.add_argument("--max-long-polls", type=int, default=0,
                   help="long polls a queue holds at once; more get MessageNotExist (0: no cap)")
    p.add_argument("--token-latency-ms", type=float, default=0.0,
                   help="added to every token request")
    p.add_argument("--token-error-rate", type=float, default=0.0,
                   help="share of token requests answered 500/503")
    p.add_argument("--token-throttle-rate", type=float, default=0.0,
                   help="share of token requests answered 429 Throttling.User")
    p.add_argument("--token-hang-rate", type=float, default=0.0,
                   help="share of token requests that hang")
    p.add_argument("--clock-skew-s", type=float, default=0.0, help="server clock offset")
    p.add_argument("--date-window-s", type=float, default=900.0,
                   help="how far a request's Date may be from the server clock (default 900)")
    p.add_argument(
        "--queue",
        action="append",
        metavar="NAME",
        help="create this queue at start (repeatable; default: the seven Alicom queues)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the fault dice")
    p.add_argument("--log-level", default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    dysms_admin.add_arguments(p)
    return p


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {text!r}")
    return value


def _root_key(environ: dict[str, str]) -> tuple[str, str]:
    key_id = environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID", "")
    secret = environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "")
    if not key_id and not secret:
        return DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET
    if not key_id or not secret:
        raise SystemExit(
            "set both ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, or neither"
        )
    return key_id, secret


def _announce(config: SandboxConfig, endpoint: str) -> None:
    lines = [
        "alicom sandbox ready (MNS 2015-06-06, Dybaseapi 2017-05-25)",
        f"endpoint: {endpoint}",
        f"access_key_id: {config.root_access_key_id}",
    ]
    if config.root_access_key_secret == DEFAULT_ACCESS_KEY_SECRET:
        # The documented local default is public; any other secret is never printed.
        lines.append(f"access_key_secret: {DEFAULT_ACCESS_KEY_SECRET} (documented local default)")
    lines.append(f"account_id: {config.account_id}")
    lines.extend(f"queue: {name}" for name in config.default_queues)
    print("\n".join(lines), flush=True)


async def _run(ctx: SandboxContext) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(ctx, stop, lambda endpoint: _announce(ctx.config, endpoint))
    log.info("sandbox stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """`alicom-receipts sandbox`: run until SIGINT/SIGTERM, then exit 0."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    key_id, secret = _root_key(dict(os.environ))
    config = SandboxConfig(
        host=args.host,
        port=args.port,
        root_access_key_id=key_id,
        root_access_key_secret=secret,
        token_lifetime_s=args.token_lifetime_s,
        date_window_s=args.date_window_s,
        default_queues=tuple(args.queue) if args.queue else default_queue_names(),
    )
    try:
        faults = FaultSettings(**{name: getattr(args, name) for name in _FAULT_FLAGS})
        ctx = build_context(config, faults, args.clock_skew_s, args.seed)
        dysms.configure(ctx, dysms_admin.settings_from_args(args))
    except (ValueError, MnsError) as exc:
        print(f"alicom-receipts sandbox: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_run(ctx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
