"""The HTTP batch push receiver: `alicom-receipts push-server`.

In push mode the platform POSTs a JSON array of receipts of one type to the customer's URL
and wants HTTP 200 `{"code":0,"msg":"接收成功"}` within 700 ms (it checks only `code`); a GET
on the same URL is its connectivity test and wants the same answer. It pushes again after
about 1, 5 and 10 minutes when the answer is anything else.

The contract of this server: a POST is answered 200 only after EVERY receipt of its body is
durably handed off, i.e. appended to a Redis stream (`PushSettings.stream`) in one MULTI/EXEC
(all or none). If Redis cannot take the body within `handoff_timeout_s` the answer is 503
`{"code":1,...}`, so the platform pushes again and nothing is lost. (A hand-off that timed
out on our side may still have been stored: the re-push then meets the dedup record.) The
stream is drained by `alicom-receipts push-worker` (consumer.sources.push.worker) through the same
decoding, dedup, handlers and dead letters as the MNS worker.

Each stream entry: `t` the message type, `b` the element re-serialised as compact JSON, `r`
the receive time (epoch ms), `p` an id of the push request (to trace a body in the logs).

Before anything is stored: the source address must be in `allowlist` (403), the secret path
segment must match (404, compared in constant time, never echoed or logged), the type must
be one the platform pushes (404), the body must fit `max_body_bytes` (413) and be a JSON
array of objects (400, the message says what is wrong). An empty array is answered 200.
The stream is never trimmed: at `stream_maxlen` entries the server answers 503 instead (a
trim would drop receipts nobody has handled yet).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.asyncio
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from consumer.clients.redis_client import AsyncRedisClient, connect_async, scrub
from consumer.receipts import MESSAGE_TYPES
from consumer.settings import PushSettings
from consumer.sources.push.body import PushBodyError, TooManyReceiptsError, parse_push_body
from consumer.sources.push.guard import (
    ACCEPT_BACKLOG,
    ConnectionGuard,
    effective_max_connections,
    within,
)

log = structlog.get_logger("alicom_receipts.push")

SUCCESS: Mapping[str, Any] = {"code": 0, "msg": "接收成功"}
"""The answer the platform wants for a push and for its connectivity test."""



# ---------------------------------------------------------------------------------------
# The server


def _answer(status: int, code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


_NOT_FOUND = "not found"
# What a request's log line needs, set by the handler: a request the HTTP parser rejected
# never reaches it (nor the router: its match_info is unset), so the logger reads only these.
_RECEIPTS = web.RequestKey("receipts", int)  # how many receipts a request carried
_KIND = web.RequestKey("kind", str)  # the receipt type of its path


class PushReceiver:
    """The aiohttp application; `app()` builds it. One async Redis client for all requests."""

    def __init__(self, settings: PushSettings, client: AsyncRedisClient,
                 redis_url: str = "") -> None:
        self.settings = settings
        self._redis = client
        self._redis_url = redis_url  # only to scrub its passwords from error texts
        self._allow = settings.networks("allowlist")
        self._proxies = settings.networks("trusted_proxies")
        self.guard = ConnectionGuard(settings.max_connections, self._allow, self._proxies)
        self._secret = settings.secret.encode() if settings.secret else None
        self._length = 0  # stream length after our last hand-off (the soft cap's estimate)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes,
                              middlewares=[self._errors_as_json, self._check_source])
        prefix = self.settings.path_prefix.rstrip("/")
        route = prefix + ("/{key}/{kind}" if self._secret else "/{kind}")
        app.router.add_route("*", route, self._handle)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _app: web.Application) -> None:
        await self._redis.aclose()

    @web.middleware
    async def _errors_as_json(self, request: web.Request,
                              handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                              ) -> web.StreamResponse:
        """Every refusal is `{"code":1,"msg":...}`; aiohttp's own (413, 405) included."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            msg = _NOT_FOUND if exc.status == 404 else exc.text or exc.reason
            if exc.status == 413:
                msg = "the body is larger than %d bytes" % self.settings.max_body_bytes
            return _answer(exc.status, 1, msg)

    @web.middleware
    async def _check_source(self, request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                            ) -> web.StreamResponse:
        """The allowlist once more, for the address behind a trusted proxy; and the
        connection counts as busy (not to be evicted) while its request is handled."""
        if self._allow and not within(self.client_address(request), self._allow):
            log.warning("push_refused_source", remote=self.client_address(request))
            return _answer(403, 1, "this source address may not push")
        self.guard.busy(request.transport, True)
        try:
            return await handler(request)
        finally:
            self.guard.busy(request.transport, False)

    def client_address(self, request: web.Request) -> str:
        """The peer, or the nearest untrusted hop of X-Forwarded-For behind a trusted proxy."""
        peer = request.remote or ""
        if not self._proxies or not within(peer, self._proxies):
            return peer
        hops = [h.strip() for h in request.headers.getall("X-Forwarded-For", [])
                for h in h.split(",")]
        for hop in reversed(hops):
            if not within(hop, self._proxies):
                return hop
        return peer

    async def _handle(self, request: web.Request) -> web.Response:
        kind = request[_KIND] = request.match_info["kind"]
        key = request.match_info.get("key", "")
        if self._secret is not None and not hmac.compare_digest(key.encode(), self._secret):
            raise web.HTTPNotFound
        if kind not in MESSAGE_TYPES:
            raise web.HTTPNotFound
        if request.method in ("GET", "HEAD"):
            return _answer(200, 0, SUCCESS["msg"])  # the platform's connectivity test
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST"])
        if (request.content_length or 0) > self.settings.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(self.settings.max_body_bytes,
                                                request.content_length or 0)
        try:
            body = await asyncio.wait_for(request.read(), self.settings.read_timeout_s)
        except asyncio.TimeoutError:
            log.warning("push_refused_slow_body", message_type=kind,
                        read_timeout_s=self.settings.read_timeout_s)
            return _answer(408, 1, "the body did not arrive within %g s"
                           % self.settings.read_timeout_s)
        try:
            elements = await asyncio.get_running_loop().run_in_executor(
                None, parse_push_body, body, self.settings.max_elements)
        except PushBodyError as exc:
            log.warning("push_refused_body", message_type=kind, error=str(exc))
            return _answer(413 if isinstance(exc, TooManyReceiptsError) else 400, 1, str(exc))
        request[_RECEIPTS] = len(elements)
        if elements and not await self._hand_off(kind, elements):
            return _answer(503, 1, "the receipts could not be stored now; push again later")
        return _answer(200, 0, SUCCESS["msg"])

    async def _hand_off(self, kind: str, elements: Sequence[str]) -> bool:
        """Appends every element in one MULTI/EXEC within the budget; False when it could not."""
        s = self.settings
        received_ms = int(time.time() * 1000)
        push_id = uuid.uuid4().hex[:16]
        try:
            stored = await asyncio.wait_for(self._store(kind, elements, received_ms, push_id),
                                            s.handoff_timeout_s)
        except (redis.RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("push_handoff_failed", message_type=kind, receipts=len(elements),
                        push_id=push_id, error=self._scrub(exc))
            return False
        if stored:
            log.debug("push_stored", message_type=kind, receipts=len(elements), push_id=push_id)
        return stored

    async def _store(self, kind: str, elements: Sequence[str], received_ms: int,
                     push_id: str) -> bool:
        s = self.settings
        if self._length + len(elements) > s.stream_maxlen:
            self._length = int(await self._redis.xlen(s.stream))  # has the worker caught up?
            if self._length + len(elements) > s.stream_maxlen:
                log.error("push_stream_full", stream=s.stream, length=self._length,
                          stream_maxlen=s.stream_maxlen, receipts=len(elements))
                return False
        async with self._redis.pipeline(transaction=True) as pipe:
            for text in elements:
                pipe.xadd(s.stream, {"t": kind, "b": text, "r": received_ms, "p": push_id})
            pipe.xlen(s.stream)
            results = await pipe.execute()
        self._length = int(results[-1])
        return True

    async def ping(self) -> object:
        """A Redis round trip on the hand-off client (the readiness probe)."""
        return await self._redis.ping()

    def _scrub(self, exc: BaseException) -> str:
        return scrub("%s: %s" % (type(exc).__name__, exc), self._redis_url)


class PushAccessLogger(AbstractAccessLogger):
    """One line per request with the receipt type, never the path (it may hold the secret)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.info("push_request", method=request.method, message_type=request.get(_KIND),
                 status=response.status, receipts=request.get(_RECEIPTS),
                 duration_ms=round(time * 1000, 2), remote=request.remote)


class RequestObserver(Protocol):
    """Told about every answered request (metrics: requests by status, answer time)."""

    def request_answered(self, message_type: str, status: int, seconds: float) -> None: ...


def access_logger(observer: RequestObserver | None) -> type[PushAccessLogger]:
    """The access logger class aiohttp instantiates itself, telling `observer` too."""
    if observer is None:
        return PushAccessLogger
    tell = observer.request_answered

    class Observed(PushAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse,
                time: float) -> None:
            super().log(request, response, time)
            tell(str(request.get(_KIND) or ""), response.status, time)

    return Observed


def redis_client(url: str, timeout_s: float) -> AsyncRedisClient:
    """An async client whose every wait is bounded by the hand-off budget.

    One immediate retry on a new connection: after a Redis restart the pooled connection is
    dead, and the first request after it should not be refused for that alone.
    """
    return connect_async(url, socket_timeout_s=timeout_s, connect_timeout_s=timeout_s,
                         retry=Retry(NoBackoff(), 1), health_check_interval_s=30)


@dataclass
class Serving:
    """A push server listening on the running event loop; `stop_serving` ends it."""

    runner: web.AppRunner
    server: asyncio.AbstractServer
    receiver: PushReceiver
    port: int


async def start_serving(settings: PushSettings, redis_url: str,
                        observer: RequestObserver | None = None) -> Serving:
    """Listens on `settings.listen` (port 0: a free one) through the connection guard.

    aiohttp's keep-alive timeout is the header timeout too: a connection that has not sent a
    whole request header within `read_timeout_s` of opening (or of its last answer) is closed.
    """
    receiver = PushReceiver(settings, redis_client(redis_url, settings.handoff_timeout_s),
                            redis_url)
    receiver.guard.max_connections = effective_max_connections(settings.max_connections)
    runner = web.AppRunner(receiver.app(), access_log_class=access_logger(observer),
                           keepalive_timeout=settings.read_timeout_s, shutdown_timeout=5.0)
    await runner.setup()
    if runner.server is None:  # pragma: no cover - setup() sets it or raises
        raise RuntimeError("the push server's runner has no server after setup")
    host, port = settings.host_port
    server = await asyncio.get_running_loop().create_server(
        receiver.guard.wrap(runner.server), host, port, backlog=ACCEPT_BACKLOG,
        reuse_address=True)
    return Serving(runner, server, receiver, int(server.sockets[0].getsockname()[1]))


async def stop_serving(serving: Serving) -> None:
    """No new connections; requests in progress finish (their hand-off is bounded by
    handoff_timeout_s, all of it by 5 s); then the Redis client is closed (on_cleanup)."""
    serving.server.close()
    await serving.runner.cleanup()


@dataclass
class RunningServer:
    url: str  # http://host:port + path_prefix (no secret)
    port: int
    receiver: PushReceiver


@contextmanager
def running_push_server(settings: PushSettings, redis_url: str) -> Iterator[RunningServer]:
    """Serves on `settings.listen` (port 0: a free one) from a background thread."""
    loop = asyncio.new_event_loop()
    serving = loop.run_until_complete(start_serving(settings, redis_url))
    thread = threading.Thread(target=loop.run_forever, name="push-server", daemon=True)
    thread.start()
    host = settings.host_port[0]
    try:
        yield RunningServer("http://%s:%d%s" % (host, serving.port, settings.path_prefix),
                            serving.port, serving.receiver)
    finally:
        asyncio.run_coroutine_threadsafe(stop_serving(serving), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
