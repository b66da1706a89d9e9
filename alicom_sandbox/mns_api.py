"""The MNS REST API (2015-06-06) of the sandbox: everything under `/queues`.

One entry point, `MnsApi.handle`, does per request: faults, authentication, routing by
method/path/query, authorization, the engine call, and the XML answer. Every failure is
answered with the MNS error XML and an `x-mns-request-id` header, never a traceback.

Query strings are parsed from the raw request line: the official Python SDK puts receipt
handles into the URL without URL-encoding, and a generic parser would turn `+` into a space.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from urllib.parse import unquote
from xml.etree.ElementTree import Element

from aiohttp import web

from alicom_sandbox import mns_xml
from alicom_sandbox.context import MNS_API_VERSION, SandboxContext
from alicom_sandbox.faults import FaultKind
from alicom_sandbox.mns_errors import MnsError, check_range, message_not_exist, parse_int
from alicom_sandbox.mns_limits import (
    MAX_BATCH,
    MAX_VISIBILITY_S,
    MAX_WAIT_S,
    attributes_from_fields,
)
from alicom_sandbox.mns_queue import SendEntry
from alicom_sandbox.signing import Authenticator, SignedRequest, authorize

log = logging.getLogger(__name__)

# A hung request is released after this long even if the client never gives up.
_MAX_HANG_S = 600.0
_MAX_BATCH_BODY_BYTES = 65536

Operation = Callable[["Call"], Awaitable[web.Response]]


def parse_raw_query(raw_path: str) -> dict[str, str]:
    """Query parameters from the path as sent; `+` stays `+`, `%XX` is decoded."""
    _, sep, query = raw_path.partition("?")
    params: dict[str, str] = {}
    if not sep:
        return params
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            params[key] = unquote(value) if "%" in value else value
    return params


class Call:
    """One authenticated request on its way through an operation."""

    __slots__ = ("body", "params", "queue_name", "request", "request_id")

    def __init__(
        self,
        request: web.Request,
        request_id: str,
        params: dict[str, str],
        body: bytes,
        queue_name: str | None,
    ) -> None:
        self.request = request
        self.request_id = request_id
        self.params = params
        self.body = body
        self.queue_name = queue_name

    @property
    def queue(self) -> str:
        assert self.queue_name is not None  # routes with an operation on a queue have a name
        return self.queue_name


class MnsApi:
    """The `/queues` handlers of one sandbox."""

    def __init__(self, ctx: SandboxContext) -> None:
        self._ctx = ctx
        self._engine = ctx.engine
        self._clock = ctx.clock
        self._auth = Authenticator(ctx.accounts, ctx.clock, ctx.config.date_window_s)
        self._request_prefix = secrets.token_hex(8).upper()
        self._counter = itertools.count(1)
        self._held: Counter[str] = Counter()  # queue name -> long polls held now

    def next_request_id(self) -> str:
        return f"{self._request_prefix}{next(self._counter):08X}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Entry point for every request under `/queues`."""
        request_id = self.next_request_id()
        try:
            faulted = await self._apply_faults(request, request_id)
            if faulted is not None:
                return faulted
            return await self._serve(request, request_id)
        except MnsError as err:
            return error_response(err, request_id, request.host)

    async def _serve(self, request: web.Request, request_id: str) -> web.Response:
        body = await request.read() if request.can_read_body else b""
        raw_path = request.raw_path
        credential = self._auth.authenticate(
            SignedRequest(request.method, raw_path, request.headers, body)
        )
        params = parse_raw_query(raw_path)
        queue_name = request.match_info.get("name")
        name, operation = self._route(request.method, queue_name, request.path, params, body)
        authorize(credential, name, queue_name)
        return await operation(Call(request, request_id, params, body, queue_name))

    def _route(
        self,
        method: str,
        queue_name: str | None,
        path: str,
        params: dict[str, str],
        body: bytes,
    ) -> tuple[str, Operation]:
        """(operation name, handler) for a request, or InvalidRequestURL."""
        if queue_name is None:
            if method == "GET":
                return "ListQueue", self._list_queues
        elif path.count("/") == 2:
            route = _QUEUE_ROUTES.get((method, "metaoverride" in params))
            if route is not None:
                return route[0], getattr(self, route[1])
        else:
            return self._message_route(method, params, body)
        raise MnsError(400, "InvalidRequestURL", "Http request URL format invalid.")

    def _message_route(
        self, method: str, params: dict[str, str], body: bytes
    ) -> tuple[str, Operation]:
        batch = "numOfMessages" in params
        if method == "GET":
            if params.get("peekonly") == "true":
                return ("BatchPeekMessage" if batch else "PeekMessage"), self._peek
            return ("BatchReceiveMessage" if batch else "ReceiveMessage"), self._receive
        if method == "POST":
            return "SendMessage", self._send
        if method == "DELETE":
            if "ReceiptHandle" in params or not body:
                return "DeleteMessage", self._delete
            return "BatchDeleteMessage", self._batch_delete
        if method == "PUT":
            return "ChangeMessageVisibility", self._change_visibility
        raise MnsError(400, "InvalidRequestURL", "Http request URL format invalid.")

    # --- faults ----------------------------------------------------------------------

    async def _apply_faults(self, request: web.Request, request_id: str) -> web.Response | None:
        faults = self._ctx.faults
        if faults.settings.latency_ms:
            faults.note_latency()
            await asyncio.sleep(faults.latency_s)
        is_receive = (
            request.method == "GET"
            and request.path.count("/") == 3
            and "peekonly=true" not in request.raw_path
        )
        kind = faults.decide(can_hang=is_receive)
        if kind is FaultKind.NONE:
            return None
        if kind is FaultKind.DROP:
            # Close without answering; aiohttp then fails quietly to write the response below.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if kind is FaultKind.HANG:
            await asyncio.sleep(_MAX_HANG_S)  # cancelled when the client disconnects
        status = faults.error_status()
        code, message = (
            ("InternalError", "Interal error.")  # sic: MNS's own wording
            if status == 500
            else ("ServiceUnavailable", "The service is temporarily unavailable.")
        )
        return error_response(MnsError(status, code, message), request_id, request.host)

    # --- queues ----------------------------------------------------------------------

    def _base_url(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    async def _create_queue(self, call: Call) -> web.Response:
        fields = mns_xml.fields(mns_xml.parse(call.body, "Queue")) if call.body else {}
        attributes = attributes_from_fields(fields, self._engine.defaults)
        created = self._engine.create_queue(call.queue, attributes)
        location = f"{self._base_url(call.request)}/queues/{call.queue}"
        return _answer(call, 201 if created else 204, "", {"Location": location})

    async def _set_queue_attributes(self, call: Call) -> web.Response:
        queue = self._engine.queue(call.queue)
        fields = mns_xml.fields(mns_xml.parse(call.body, "Queue")) if call.body else {}
        queue.set_attributes(attributes_from_fields(fields, queue.attributes), self._clock.now_ms())
        return _answer(call, 204, "")

    async def _get_queue_attributes(self, call: Call) -> web.Response:
        queue = self._engine.queue(call.queue)
        return _answer(call, 200, mns_xml.queue_attributes_xml(queue, self._clock.now_ms()))

    async def _delete_queue(self, call: Call) -> web.Response:
        self._engine.delete_queue(call.queue)
        return _answer(call, 204, "")

    async def _list_queues(self, call: Call) -> web.Response:
        headers = call.request.headers
        limit_text = headers.get("x-mns-ret-number")
        limit = 1000
        if limit_text is not None:
            limit = check_range("x-mns-ret-number", parse_int("x-mns-ret-number", limit_text),
                                1, 1000, unit="")
        queues, next_marker = self._engine.list_queues(
            headers.get("x-mns-prefix", ""), headers.get("x-mns-marker", ""), limit
        )
        xml = mns_xml.queue_list_xml(
            queues,
            self._base_url(call.request),
            next_marker,
            with_meta=headers.get("x-mns-with-meta", "").lower() == "true",
            now_ms=self._clock.now_ms(),
        )
        return _answer(call, 200, xml)

    # --- messages --------------------------------------------------------------------

    async def _send(self, call: Call) -> web.Response:
        queue = self._engine.queue(call.queue)
        root = mns_xml.parse(call.body, ("Message", "Messages"))
        if mns_xml.local_name(root.tag) == "Message":
            entry = _send_entry(root)
            queue.validate_entry(entry)
            message = queue.send(entry, self._clock.now_ms())
            return _answer(call, 201, mns_xml.sent_xml(message))
        items = mns_xml.children(root, "Message")
        check_range("the count of Message", len(items), 1, MAX_BATCH, unit="")
        entries = [_send_entry(item) for item in items]
        total = sum(map(queue.validate_entry, entries))  # all or nothing: check before sending
        check_range("the total size of MessageBody", total, 1, _MAX_BATCH_BODY_BYTES, "bytes")
        now_ms = self._clock.now_ms()
        sent = [queue.send(entry, now_ms) for entry in entries]
        return _answer(call, 201, mns_xml.batch_sent_xml(sent))

    async def _receive(self, call: Call) -> web.Response:
        queue = self._engine.queue(call.queue)
        count, batch = _batch_size(call.params)
        wait_text = call.params.get("waitseconds")
        wait_s = queue.attributes.polling_wait_s
        if wait_text is not None:
            wait_s = check_range("waitseconds", parse_int("waitseconds", wait_text), 0, MAX_WAIT_S)
        limit = self._ctx.faults.settings.max_long_polls
        if wait_s and limit and self._held[call.queue] >= limit:
            # Past the cap MNS does not hold the poll: what is there now, else MessageNotExist.
            self._ctx.faults.note("long_poll_refused")
            wait_s = 0
        self._held[call.queue] += 1 if wait_s else 0
        try:
            messages = await self._engine.receive(call.queue, count, wait_s)
        finally:
            self._held[call.queue] -= 1 if wait_s else 0
        if not messages:
            raise message_not_exist()
        return _answer(call, 200, mns_xml.messages_xml(messages, batch=batch))

    async def _peek(self, call: Call) -> web.Response:
        queue = self._engine.queue(call.queue)
        count, batch = _batch_size(call.params)
        messages = queue.peek(count, self._clock.now_ms())
        if not messages:
            raise message_not_exist()
        return _answer(call, 200, mns_xml.messages_xml(messages, batch=batch, peek=True))

    async def _delete(self, call: Call) -> web.Response:
        queue = self._engine.queue(call.queue)
        queue.delete(_receipt_handle(call.params), self._clock.now_ms())
        return _answer(call, 204, "")

    async def _batch_delete(self, call: Call) -> web.Response:
        queue = self._engine.queue(call.queue)
        root = mns_xml.parse(call.body, "ReceiptHandles")
        handles = [(item.text or "").strip() for item in mns_xml.children(root, "ReceiptHandle")]
        check_range("the count of ReceiptHandle", len(handles), 1, MAX_BATCH, unit="")
        if not all(handles):
            raise _missing_receipt_handle()
        failed = queue.delete_many(handles, self._clock.now_ms())
        if failed:
            errors = [(handle, err.code, err.message) for handle, err in failed]
            return _answer(call, 404, mns_xml.batch_delete_errors_xml(errors))
        return _answer(call, 204, "")

    async def _change_visibility(self, call: Call) -> web.Response:
        queue = self._engine.queue(call.queue)
        handle = _receipt_handle(call.params)
        text = call.params.get("VisibilityTimeout")
        if not text:
            raise MnsError(400, "MissingVisibilityTimeout", "VisibilityTimeout is required.")
        timeout_s = check_range(
            "VisibilityTimeout", parse_int("VisibilityTimeout", text), 1, MAX_VISIBILITY_S
        )
        message = queue.change_visibility(handle, timeout_s, self._clock.now_ms())
        assert message.handle is not None  # change_visibility always issues a new handle
        xml = mns_xml.change_visibility_xml(message.handle, message.next_visible_ms)
        return _answer(call, 200, xml)


# (method, has ?metaoverride) -> (operation, MnsApi method name) for `/queues/{name}`.
_QUEUE_ROUTES: dict[tuple[str, bool], tuple[str, str]] = {
    ("PUT", False): ("CreateQueue", "_create_queue"),
    ("PUT", True): ("SetQueueAttributes", "_set_queue_attributes"),
    ("GET", False): ("GetQueueAttributes", "_get_queue_attributes"),
    ("DELETE", False): ("DeleteQueue", "_delete_queue"),
}


def _send_entry(element: Element) -> SendEntry:
    body = delay = priority = None
    for child in element:  # one pass, no dict: this runs for every message sent
        tag = child.tag
        name = tag[tag.find("}") + 1 :]
        if name == "MessageBody":
            body = child.text or ""
        elif name == "DelaySeconds":
            delay = parse_int("DelaySeconds", child.text or "")
        elif name == "Priority":
            priority = parse_int("Priority", child.text or "")
    if body is None:
        raise mns_xml.schema_error("MessageBody")
    return SendEntry(body, delay, priority)


def _batch_size(params: dict[str, str]) -> tuple[int, bool]:
    text = params.get("numOfMessages")
    if text is None:
        return 1, False
    return check_range("numOfMessages", parse_int("numOfMessages", text), 1, MAX_BATCH, ""), True


def _missing_receipt_handle() -> MnsError:
    return MnsError(400, "MissingReceiptHandle", "ReceiptHandle is required.")


def _receipt_handle(params: dict[str, str]) -> str:
    handle = params.get("ReceiptHandle", "")
    if not handle:
        raise _missing_receipt_handle()
    return handle


def _answer(
    call: Call, status: int, xml: str, extra: dict[str, str] | None = None
) -> web.Response:
    headers = {"x-mns-request-id": call.request_id, "x-mns-version": MNS_API_VERSION}
    if extra:
        headers.update(extra)
    if not xml:
        return web.Response(status=status, headers=headers)
    return web.Response(
        status=status, body=xml.encode("utf-8"), headers=headers, content_type="text/xml",
        charset="utf-8",
    )


def error_response(err: MnsError, request_id: str, host: str) -> web.Response:
    """The MNS error answer: `<Error>` XML with Code, Message, RequestId and HostId."""
    xml = mns_xml.error_xml(err.code, err.message, request_id, f"http://{host}")
    return web.Response(
        status=err.status,
        body=xml.encode("utf-8"),
        headers={"x-mns-request-id": request_id, "x-mns-version": MNS_API_VERSION},
        content_type="text/xml",
        charset="utf-8",
    )

