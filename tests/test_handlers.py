"""The built-in handlers against real things: a file, a Redis server, an HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast

import pytest
import redis
from structlog.testing import capture_logs

from alicom_sandbox.redis_server import RedisServer, free_port
from consumer.errors import ConfigError, PermanentFailure, RetryLater
from consumer.handlers import receipt_json, redis_retry, sink_key_function
from consumer.handlers.jsonl import JsonLinesHandler
from consumer.handlers.log import LogHandler
from consumer.handlers.plugins import PluginError, load_handlers
from consumer.handlers.redis_stream import RedisStreamHandler
from consumer.handlers.webhook import WebhookHandler
from consumer.pipeline.dispatch import Dispatcher
from consumer.receipts import IntlSmsReport, Receipt, ReceiptMeta, SmsReport, SmsUp
from consumer.settings import HandlerSpec

WAIT_S = 30.0


def report(n: int, err_msg: str = "用户接收成功") -> SmsReport:
    phone, biz_id = f"1380000{n:04d}", f"biz-{n}"
    raw = {"phone_number": phone, "biz_id": biz_id, "success": True, "err_msg": err_msg,
           "extData": {"k": n}}
    return SmsReport(raw=raw, meta=ReceiptMeta("mns", "q", f"msg-{n}", 2),
                     phone_number=phone, biz_id=biz_id, success=True, err_code="DELIVERED",
                     err_msg=err_msg)


def uplink(n: int) -> SmsUp:
    raw = {"phone_number": "139", "content": f"hi {n}", "send_time": "2017-01-01 00:00:00",
           "dest_code": "1", "sequence_id": str(n)}
    return SmsUp(raw=raw, meta=ReceiptMeta("mns", "q-up", f"up-{n}", 1), phone_number="139",
                 content=raw["content"], send_time=raw["send_time"], dest_code="1",
                 sequence_id=str(n))


# --- log ------------------------------------------------------------------------------


def test_the_log_handler_writes_one_line_per_receipt_without_phone_numbers() -> None:
    log_handler = LogHandler()

    with capture_logs() as logs:
        log_handler.handle(report(1))
        log_handler.handle(report(2))

    assert [e["event"] for e in logs] == ["receipt", "receipt"]
    first = logs[0]
    assert (first["message_type"], first["mns_message_id"], first["dequeue_count"]) == (
        "SmsReport", "msg-1", 2)
    assert (first["biz_id"], first["success"], first["err_code"]) == ("biz-1", True, "DELIVERED")
    assert "phone_number" not in first and "13800000001" not in repr(first)


def test_the_log_handler_logs_the_configured_typed_and_raw_fields() -> None:
    log_handler = LogHandler(fields=["phone_number", "extData", "absent", "to_dict"],
                             level="warning", event="sms")

    with capture_logs() as logs:
        log_handler.handle(report(3))

    [entry] = logs
    assert (entry["event"], entry["log_level"]) == ("sms", "warning")
    assert (entry["phone_number"], entry["extData"]) == ("13800000003", {"k": 3})
    assert "absent" not in entry and "biz_id" not in entry and "to_dict" not in entry


def test_the_log_handler_logs_properties_such_as_success_of_an_intl_report() -> None:
    intl = IntlSmsReport(raw={}, meta=ReceiptMeta("mns"), to="8613", status="1",
                         message_id="m-1")

    with capture_logs() as logs:
        LogHandler(fields=["success", "status"]).handle(intl)

    assert (logs[0]["success"], logs[0]["status"]) == (True, "1")


@pytest.mark.parametrize("options", [{"level": "loud"}, {"fields": "biz_id"}])
def test_bad_log_handler_options_are_config_errors(options: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        LogHandler(**options)


# --- jsonl ----------------------------------------------------------------------------


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_jsonl_appends_one_parseable_line_per_receipt(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    jsonl = JsonLinesHandler(str(path))
    batch: list[Receipt] = [report(1), report(2, err_msg="line\nbreak")]

    result = jsonl.handle_batch(batch)
    jsonl.handle_batch([report(3)])
    jsonl.close()

    assert result.failed == []
    lines = read_lines(path)
    assert lines == [r.to_dict() for r in [*batch, report(3)]]
    assert "用户接收成功" in path.read_text("utf-8")  # readable, not \\u-escaped


def test_jsonl_survives_concurrent_batches(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    jsonl = JsonLinesHandler(str(path), fsync=True)
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for batch in range(20):
                base = worker * 1000 + batch * 10
                jsonl.handle_batch([report(base + i) for i in range(5)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    jsonl.close()

    assert errors == []
    ids = [line["meta"]["message_id"] for line in read_lines(path)]  # type: ignore[index]
    assert len(ids) == 8 * 20 * 5 and len(set(ids)) == len(ids)


def test_jsonl_after_close_asks_for_a_retry(tmp_path: Path) -> None:
    jsonl = JsonLinesHandler(str(tmp_path / "r.jsonl"))
    jsonl.close()

    with pytest.raises(RetryLater, match="closed"):
        jsonl.handle_batch([report(1)])


def test_jsonl_with_an_unwritable_path_fails_to_load(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "r.jsonl"

    with pytest.raises(PluginError, match="failed to start: ConfigError: jsonl handler cannot"):
        load_handlers([HandlerSpec("jsonl", options={"path": str(missing)})])


def test_receipt_json_keeps_lone_surrogates_valid_utf8() -> None:
    text = receipt_json(report(1, err_msg="bad \ud800 half"))

    text.encode("utf-8")  # would raise if the surrogate leaked through unescaped
    assert json.loads(text)["err_msg"] == "bad \ud800 half"


# --- redis-stream ---------------------------------------------------------------------


@pytest.fixture
def stream_handler(redis_server: RedisServer,
                   redis_client: redis.Redis) -> Iterator[RedisStreamHandler]:
    handler = RedisStreamHandler(redis_server.url, stream="test:receipts", maxlen=1000)
    yield handler
    handler.close()


def test_redis_stream_adds_one_entry_per_receipt(stream_handler: RedisStreamHandler,
                                                 redis_client: redis.Redis) -> None:
    batch: list[Receipt] = [report(1), report(2)]

    result = stream_handler.handle_batch(batch)

    assert result.failed == []
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis_client.xrange("test:receipts"))
    assert len(entries) == 2
    fields = [{k.decode(): v.decode() for k, v in entry.items()} for _, entry in entries]
    assert [f["type"] for f in fields] == ["SmsReport", "SmsReport"]
    assert [f["message_id"] for f in fields] == ["msg-1", "msg-2"]
    assert [json.loads(f["doc"]) for f in fields] == [r.to_dict() for r in batch]


def test_redis_stream_adds_a_receipt_once_however_often_it_comes(
        stream_handler: RedisStreamHandler, redis_client: redis.Redis) -> None:
    first = report(1)
    again = replace(first, meta=replace(first.meta, message_id="msg-1-again"))

    assert stream_handler.handle_batch([first, report(2), again]).failed == []
    assert stream_handler.handle_batch([again, report(2), report(3)]).failed == []

    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis_client.xrange("test:receipts"))
    keys = [fields[b"key"].decode() for _, fields in entries]
    key_of = sink_key_function()
    assert keys == [key_of(report(1)), key_of(report(2)), key_of(report(3))]
    record = stream_handler.done_key(keys[0])
    assert redis_client.get(record) == entries[0][0]  # the record names its entry
    assert 7 * 86400 < cast(int, redis_client.ttl(record)) <= 8 * 86400
    assert "1380000" not in record  # no phone number in a key name


def test_redis_stream_is_capped_approximately(redis_server: RedisServer,
                                              redis_client: redis.Redis) -> None:
    handler = RedisStreamHandler(redis_server.url, stream="capped", maxlen=10)
    try:
        for batch in range(40):
            handler.handle_batch([report(batch * 16 + i) for i in range(16)])
    finally:
        handler.close()

    assert 10 <= redis_client.xlen("capped") < 40 * 16


def test_redis_stream_entries_the_server_refuses_are_retried_alone(
        stream_handler: RedisStreamHandler, redis_client: redis.Redis) -> None:
    redis_client.set("test:receipts", "not a stream")  # every XADD now fails WRONGTYPE

    result = stream_handler.handle_batch([report(1), report(2)])

    assert [(r.meta.message_id, type(s).__name__) for r, s in result.failed] == [
        ("msg-1", "RetryLater"), ("msg-2", "RetryLater")]
    assert "WRONGTYPE" in result.failed[0][1].reason


def test_redis_stream_unreachable_asks_for_a_retry_without_the_password() -> None:
    handler = RedisStreamHandler(f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0", timeout_s=2)
    try:
        with pytest.raises(RetryLater) as info:
            handler.handle_batch([report(1)])
    finally:
        handler.close()

    assert "redis stream alicom:receipts: ConnectionError" in info.value.reason
    assert "s3cret-pw" not in info.value.reason


def test_a_bad_redis_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        RedisStreamHandler("http://:s3cret-pw@host/0")

    assert "s3cret-pw" not in str(info.value)


# --- webhook --------------------------------------------------------------------------


class Hook(BaseHTTPRequestHandler):
    """Answers by path: /ok 200, /fail 500, /bad 400, /busy 429, /hang never, /drop 200+close."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do
    received: list[tuple[str, dict[str, str], bytes, int]]  # path, headers, body, client port
    release: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, dict(self.headers), body, self.client_address[1]))
        if self.path == "/hang":
            self.release.wait(WAIT_S)
            return
        status = {"/ok": 200, "/drop": 200, "/fail": 500, "/bad": 400, "/busy": 429}[self.path]
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "7")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
        if self.path == "/drop":  # a server that closes idle keep-alive connections
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default stderr access log."""


@pytest.fixture
def hook_server() -> Iterator[tuple[str, type[Hook]]]:
    class BoundHook(Hook):  # fresh class state per test
        received: list[tuple[str, dict[str, str], bytes, int]] = []  # noqa: RUF012 - per test
        release = threading.Event()

    hook = BoundHook
    server = ThreadingHTTPServer(("127.0.0.1", 0), hook)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hook
    hook.release.set()
    server.shutdown()
    server.server_close()


def test_webhook_posts_the_receipt_json_with_the_headers(
        hook_server: tuple[str, type[Hook]]) -> None:
    base, hook = hook_server
    webhook = WebhookHandler(base + "/ok", headers={"Authorization": "Bearer t0ken"})

    webhook.handle(report(1))
    webhook.handle(report(2))
    webhook.close()

    [(path, headers, body, port), (_, _, _, second_port)] = hook.received
    assert path == "/ok" and headers["Authorization"] == "Bearer t0ken"
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == report(1).to_dict()
    assert port == second_port  # one kept-alive connection for the thread


@pytest.mark.parametrize(("path", "signal", "delay_s"), [
    ("/fail", RetryLater, None), ("/busy", RetryLater, 7.0), ("/bad", PermanentFailure, None)])
def test_webhook_answers_map_to_signals(hook_server: tuple[str, type[Hook]], path: str,
                                        signal: type[Exception], delay_s: float | None) -> None:
    base, _ = hook_server
    webhook = WebhookHandler(base + path, headers={"Authorization": "Bearer t0ken"})

    with pytest.raises(signal) as info:
        webhook.handle(report(1))
    webhook.close()

    assert getattr(info.value, "delay_s", None) == delay_s
    assert str(info.value).startswith(f"webhook {base}: HTTP ")
    assert "t0ken" not in str(info.value) and path not in str(info.value)


def test_a_hanging_webhook_times_out_into_a_retry(hook_server: tuple[str, type[Hook]]) -> None:
    base, _ = hook_server
    webhook = WebhookHandler(base + "/hang", timeout_s=0.2)

    with pytest.raises(RetryLater, match="TimeoutError"):
        webhook.handle(report(1))
    webhook.close()


def test_an_unreachable_webhook_asks_for_a_retry() -> None:
    webhook = WebhookHandler(f"http://127.0.0.1:{free_port()}/x", timeout_s=2)

    with pytest.raises(RetryLater, match="ConnectionRefusedError"):
        webhook.handle(report(1))


def test_a_connection_the_server_dropped_is_replaced_without_a_retry(
        hook_server: tuple[str, type[Hook]]) -> None:
    base, hook = hook_server
    webhook = WebhookHandler(base + "/drop")

    for n in range(3):
        webhook.handle(report(n))  # each reuses a connection the server has closed
    webhook.close()

    assert len(hook.received) == 3
    assert len({port for *_, port in hook.received}) == 3


@pytest.mark.parametrize("url", ["ftp://host/x", "http:///x", "http://user:pw@host/x"])
def test_bad_webhook_urls_are_config_errors_without_credentials(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        WebhookHandler(url)

    assert "pw" not in str(info.value)


def test_webhook_outcomes_through_the_dispatcher(hook_server: tuple[str, type[Hook]]) -> None:
    base, _ = hook_server
    routes = load_handlers([
        HandlerSpec("webhook", types=("SmsReport",), options={"url": base + "/ok"}),
        HandlerSpec("webhook", types=("SmsUp",), name="bad-hook", options={"url": base + "/bad"}),
    ])
    dispatcher = Dispatcher(routes, deadline_s=WAIT_S, max_workers=4)
    try:
        outcomes = dispatcher.dispatch([report(1), uplink(2), report(3)])
    finally:
        dispatcher.close()

    assert [(o.kind, o.handler) for o in outcomes] == [
        ("ok", "webhook"), ("permanent", "bad-hook"), ("ok", "webhook")]
    assert [h.name for h in routes["SmsUp"]] == ["bad-hook"]


def test_a_redis_backed_handlers_retry_reason_is_one_line_without_credentials() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, username="ops", password="hunter2-xyz")
    echoed = redis.ResponseError("proxy said:\n cannot reach redis://ops:p4ss@10.0.0.9:6379"
                                 " with AUTH hunter2-xyz")
    try:
        retry = redis_retry("review status", echoed, client)
    finally:
        client.close()
    assert isinstance(retry, RetryLater)
    assert retry.reason == ("review status: ResponseError: proxy said: cannot reach "
                            "redis://***@10.0.0.9:6379 with AUTH ***")
