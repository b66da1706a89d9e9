"""The HTTP push receiver and the push worker, on a real Redis and real HTTP on free ports."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog

from alicom_sandbox.redis_server import RedisServer, running_redis
from consumer.errors import ConfigError, RetryLater
from consumer.keys import business_key
from consumer.pipeline.deadletter_store import DeadLetterSettings, RedisDeadLetterStore
from consumer.pipeline.dedup import DedupSettings, RedisDedupStore
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.outcome import RetryPolicy
from consumer.receipts import Receipt
from consumer.settings import PushSettings, load_settings
from consumer.settings.schema import number
from consumer.sources.push.body import parse_push_body
from consumer.sources.push.pipeline import PushWorker
from consumer.sources.push.server import SUCCESS, running_push_server
from consumer.testing import SAMPLES_DIR
from tests.e2e.harness import wait_until

SECRET = "s3cret-Path-Segment-42"
REPORT = {"phone_number": "1381111****", "send_time": "2017-01-01 00:00:00",
          "report_time": "2017-01-01 00:00:00", "success": True, "err_code": "DELIVERED",
          "err_msg": "用户接收成功", "sms_size": "1", "biz_id": "12345^0", "out_id": "x"}


#: The hand-off budget of the receivers in tests that are not about it. A CI machine running
#: the unit tests at nice 19 beside the whole suite once answered a push after 0.87 s (the
#: 0.5 s default timed out: 503); what these tests prove must not depend on the machine
#: answering within the platform's 700 ms. Below `send`'s 10 s client timeout.
CI_HANDOFF_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CiPushSettings(PushSettings):
    """`PushSettings` with a hand-off budget suited to a loaded CI machine (the real section
    refuses one at or past the platform's 700 ms). The tests that measure the platform's
    limit keep `PushSettings`."""

    handoff_timeout_s: float = number(CI_HANDOFF_TIMEOUT_S, 0, CI_HANDOFF_TIMEOUT_S,
                                      low_open=True)


def documented_bodies() -> dict[str, bytes]:
    """message type -> the documented push body (a JSON array), from push-<Type>.json."""
    bodies = {p.stem.removeprefix("push-"): p.read_bytes()
              for p in SAMPLES_DIR.glob("push-*.json")}
    bodies["SmsReport"] = json.dumps([REPORT, {**REPORT, "phone_number": "1390000****"}]).encode()
    assert set(bodies) == {"SignSmsReport", "SmsUp", "SmsReport"}  # the files are there
    return bodies


def send(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def stream_entries(client: redis.Redis, stream: str = "alicom:push") -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()}
            for _id, fields in client.xrange(stream)]


@pytest.fixture
def server(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[str]:
    with running_push_server(CiPushSettings(listen="127.0.0.1:0"), redis_server.url) as running:
        yield running.url


# -- the receiver ---------------------------------------------------------------------------


def test_get_is_the_connectivity_test_and_gets_the_success_answer(server: str) -> None:
    assert send(server + "/SmsReport") == (200, dict(SUCCESS))
    assert SUCCESS == {"code": 0, "msg": "接收成功"}


def test_documented_bodies_are_stored_one_entry_per_receipt(
        server: str, redis_client: redis.Redis) -> None:
    bodies = documented_bodies()
    for kind, body in bodies.items():
        assert send(server + "/" + kind, body) == (200, dict(SUCCESS)), kind
    entries = stream_entries(redis_client)
    expected = [(kind, element) for kind, body in bodies.items() for element in json.loads(body)]
    assert [(e["t"], json.loads(e["b"])) for e in entries] == expected
    assert all(e["r"].isdigit() and e["p"] for e in entries)


def test_an_empty_array_is_answered_success_and_stores_nothing(
        server: str, redis_client: redis.Redis) -> None:
    assert send(server + "/SmsUp", b"[]") == (200, dict(SUCCESS))
    assert not redis_client.exists("alicom:push")


@pytest.mark.parametrize(("body", "says"), [
    (b"[{\"a\": 1}", "not valid JSON"),
    (b"{\"phone_number\": \"1\"}", "expected a JSON array of receipts, got a JSON dict"),
    (b"[{\"a\": 1}, 7]", "element 1 of the array is a JSON int, expected an object"),
    (b"[{\"a\": NaN}]", "NaN is not JSON"),
    (b"\xff[]", "not UTF-8"),
])
def test_a_malformed_body_is_400_with_a_clear_message_and_nothing_is_stored(
        server: str, redis_client: redis.Redis, body: bytes, says: str) -> None:
    status, answer = send(server + "/SmsReport", body)
    assert status == 400
    assert answer["code"] == 1 and says in answer["msg"]
    assert not redis_client.exists("alicom:push")


def test_an_oversize_body_is_413_with_or_without_a_content_length(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = CiPushSettings(listen="127.0.0.1:0", max_body_bytes=4096)
    big = json.dumps([REPORT] * 40).encode()
    assert len(big) > 4096
    with running_push_server(settings, redis_server.url) as running:
        status, answer = send(running.url + "/SmsReport", big)
        assert status == 413 and answer["code"] == 1 and "4096" in answer["msg"]
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        conn.putrequest("POST", "/alicom/SmsReport")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for start in range(0, len(big), 1000):
            chunk = big[start:start + 1000]
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
        assert conn.getresponse().status == 413
        conn.close()
    assert not redis_client.exists("alicom:push")


def test_the_secret_path_segment_is_required_and_never_echoed_or_logged(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = CiPushSettings(listen="127.0.0.1:0", secret=SECRET)
    body = json.dumps([REPORT]).encode()
    with structlog.testing.capture_logs() as logged, \
            running_push_server(settings, redis_server.url) as running:
        wrong = send(running.url + "/" + SECRET[:-1] + "x/SmsReport", body)
        missing = send(running.url + "/SmsReport", body)
        right = send(running.url + "/" + SECRET + "/SmsReport", body)
    assert wrong[0] == 404 and missing[0] == 404
    assert SECRET[:-1] not in json.dumps([wrong, missing])
    assert right == (200, dict(SUCCESS))
    assert len(stream_entries(redis_client)) == 1
    assert logged, "the requests were logged"
    assert SECRET[:8] not in json.dumps(logged, default=str)
    assert SECRET not in repr(settings)


def test_an_unknown_type_is_404(server: str) -> None:
    assert send(server + "/NoSuchType", b"[]")[0] == 404


def test_a_source_outside_the_allowlist_is_dropped_on_connect_and_stores_nothing(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = CiPushSettings(listen="127.0.0.1:0", allowlist=("10.0.0.0/8",))
    with running_push_server(settings, redis_server.url) as running:
        for body in (json.dumps([REPORT]).encode(), None):
            with pytest.raises((urllib.error.URLError, ConnectionError,
                                http.client.RemoteDisconnected)):
                send(running.url + "/SmsReport", body)
        assert running.receiver.guard.refused == 2
    assert not redis_client.exists("alicom:push")


def test_behind_a_trusted_proxy_the_forwarded_address_is_checked(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = CiPushSettings(listen="127.0.0.1:0", allowlist=("203.0.113.0/24",),
                            trusted_proxies=("127.0.0.1/32",))
    body = json.dumps([REPORT]).encode()
    with running_push_server(settings, redis_server.url) as running:
        url = running.url + "/SmsReport"
        allowed = send(url, body, {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"})
        spoofed = send(url, body, {"X-Forwarded-For": "203.0.113.7, 198.51.100.9"})
        direct = send(url, body)
    assert allowed[0] == 200
    assert spoofed[0] == 403  # the hop the proxy saw is 198.51.100.9; the rest is hearsay
    assert direct[0] == 403
    assert len(stream_entries(redis_client)) == 1


def test_when_redis_is_down_the_push_gets_503_and_a_repush_after_it_is_back_is_stored() -> None:
    body = json.dumps([REPORT, {**REPORT, "phone_number": "1390000****"}]).encode()
    with running_redis() as own, \
            running_push_server(CiPushSettings(listen="127.0.0.1:0"), own.url) as running:
        url = running.url + "/SmsReport"
        assert send(url, body)[0] == 200
        own.stop()
        status, answer = send(url, body)
        assert status == 503 and answer["code"] == 1
        own.start_again()  # an empty Redis: the first push is gone with the old process
        assert send(url, body) == (200, dict(SUCCESS))
        assert len(stream_entries(own.client())) == 2


def test_a_full_stream_is_refused_with_503_never_trimmed(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = CiPushSettings(listen="127.0.0.1:0", stream_maxlen=15)
    ten = json.dumps([{**REPORT, "phone_number": str(i)} for i in range(10)]).encode()
    with running_push_server(settings, redis_server.url) as running:
        assert send(running.url + "/SmsReport", ten)[0] == 200
        assert send(running.url + "/SmsReport", ten)[0] == 503
        redis_client.xtrim("alicom:push", maxlen=0)  # as if the worker had drained it
        assert send(running.url + "/SmsReport", ten)[0] == 200
    assert len(stream_entries(redis_client)) == 10


def test_parse_push_body_keeps_unknown_keys_and_text() -> None:
    elements = parse_push_body('[{"phone_number":"1","内容":"短信","extra":[1,2]}]'.encode())
    assert [json.loads(e) for e in elements] == [{"phone_number": "1", "内容": "短信",
                                                  "extra": [1, 2]}]


# -- settings -------------------------------------------------------------------------------


def test_push_settings_come_from_the_push_table_and_the_environment(
        tmp_path: Path, redis_server: RedisServer) -> None:
    config = tmp_path / "push.toml"
    config.write_text('[alicom]\npreset = "sandbox"\n\n[redis]\nurl = "%s"\n\n'
                      '[push]\nlisten = "0.0.0.0:9000"\n'
                      'allowlist = ["100.104.0.0/16"]\nsecret = "%s"\n\n[[handlers]]\n'
                      'use = "log"\n' % (redis_server.url, SECRET), encoding="utf-8")
    settings = load_settings(str(config), {
        "ALICOM_RECEIPTS_PUSH_HANDOFF_TIMEOUT_S": "0.3",
        "ALICOM_RECEIPTS_PUSH_TRUSTED_PROXIES": "127.0.0.1, ::1"})
    push = settings.push
    assert settings.redis_url == redis_server.url and settings.source == str(config)
    assert [h.use for h in settings.handlers] == ["log"]
    assert push.host_port == ("0.0.0.0", 9000) and push.allowlist == ("100.104.0.0/16",)
    assert push.handoff_timeout_s == 0.3 and push.trusted_proxies == ("127.0.0.1", "::1")
    assert push.secret == SECRET and SECRET not in repr(push)


@pytest.mark.parametrize(("table", "says"), [
    ('secret = "short"', "push.secret"),
    ('handoff_timeout_s = 0.9', r"push.handoff_timeout_s must be > 0 and < 0.7"),
    ('allowlist = ["not-a-net"]', "not an address"),
    ('listn = "1:2"', "push.listn is not a setting"),
])
def test_bad_push_settings_are_refused_with_the_setting_named(
        tmp_path: Path, table: str, says: str) -> None:
    config = tmp_path / "push.toml"
    config.write_text("[push]\n%s\n" % table, encoding="utf-8")
    with pytest.raises(ConfigError, match=says):
        load_settings(str(config), {})


# -- the worker -----------------------------------------------------------------------------


class Recording:
    """A handler that records what it applied; `fail_first` keys raise RetryLater first."""

    name = "recording"

    def __init__(self, fail_first: int = 0, always_retry: bool = False) -> None:
        self.applied: Counter[str] = Counter()
        self.seen: list[tuple[str, int]] = []
        self._fail_first = fail_first
        self._always = always_retry
        self._lock = threading.Lock()

    def handle(self, receipt: Receipt) -> None:
        with self._lock:
            self.seen.append((business_key(receipt), receipt.meta.dequeue_count))
            if self._always or receipt.meta.dequeue_count <= self._fail_first:
                raise RetryLater("not now", delay_s=1)
            self.applied[business_key(receipt)] += 1
        assert receipt.meta.source == "push"


@pytest.fixture
def drained(redis_client: redis.Redis) -> Iterator[Any]:
    """Starts a PushWorker on a handler; yields a function that waits for an empty stream."""
    started: list[tuple[PushWorker, threading.Thread, Dispatcher]] = []

    def start(handler: Recording, max_dequeue_count: int = 20) -> PushWorker:
        push = PushSettings(reclaim_idle_s=2.0, block_s=0.2, batch_size=32)
        dispatcher = Dispatcher({t: [handler] for t in ("SmsReport", "SmsUp",
                                                         "SignSmsReport")}, deadline_s=1.0)
        worker = PushWorker(redis_client, push, RedisDedupStore(redis_client, DedupSettings()),
                            RedisDeadLetterStore(redis_client, DeadLetterSettings()),
                            dispatcher, RetryPolicy(1.0, 60.0, max_dequeue_count), 3600.0)
        thread = threading.Thread(target=worker.run, args=("test-0",), daemon=True)
        thread.start()
        started.append((worker, thread, dispatcher))
        return worker

    yield start
    for worker, thread, dispatcher in started:
        worker.stop.set()
        thread.join(10)
        dispatcher.close()


def settled(client: redis.Redis) -> bool:
    """Nothing left in the push stream and nothing pending."""
    return client.xlen("alicom:push") == 0 and client.xpending("alicom:push", "alicom-push")[
        "pending"] == 0


def test_each_pushed_receipt_reaches_the_handlers_once_also_when_pushed_again(
        server: str, redis_client: redis.Redis, drained: Any) -> None:
    bodies = documented_bodies()
    for _ in range(2):  # the platform pushes the same bodies again (it saw no answer)
        for kind, body in bodies.items():
            assert send(server + "/" + kind, body)[0] == 200
    handler = Recording()
    worker = drained(handler)
    wait_until(lambda: settled(redis_client), 60, "the stream to be drained")
    assert len(handler.applied) == 4 and set(handler.applied.values()) == {1}
    for kind, body in bodies.items():  # and once more, after they were all handled
        assert send(server + "/" + kind, body)[0] == 200
    wait_until(lambda: settled(redis_client), 60, "the third push to be drained")
    assert set(handler.applied.values()) == {1}
    snap = worker.stats.snapshot()
    assert snap["handled"] == 4 and snap["duplicates"] == 8


def test_an_entry_that_is_no_receipt_is_dead_lettered_with_its_raw_json(
        server: str, redis_client: redis.Redis, drained: Any) -> None:
    broken = {k: v for k, v in REPORT.items() if k != "biz_id"}
    assert send(server + "/SmsReport", json.dumps([broken, REPORT]).encode())[0] == 200
    handler = Recording()
    drained(handler)
    wait_until(lambda: settled(redis_client), 60, "the stream to be drained")
    assert sum(handler.applied.values()) == 1
    [letter] = RedisDeadLetterStore(redis_client, DeadLetterSettings()).list()
    assert (letter.source, letter.queue, letter.reason) == ("push", "", "missing_field")
    assert letter.message_type == "SmsReport" and json.loads(letter.raw_body) == broken
    assert letter.message_id and letter.dequeue_count == 1


def test_a_retried_receipt_is_taken_again_after_its_backoff_and_applied_once(
        server: str, redis_client: redis.Redis, drained: Any) -> None:
    assert send(server + "/SmsReport", json.dumps([REPORT]).encode())[0] == 200
    handler = Recording(fail_first=1)
    drained(handler)
    wait_until(lambda: settled(redis_client), 60, "the retried entry to be settled")
    assert [count for _, count in handler.seen] == [1, 2]
    assert sum(handler.applied.values()) == 1


def test_a_receipt_that_keeps_failing_is_dead_lettered_at_max_dequeue_count(
        server: str, redis_client: redis.Redis, drained: Any) -> None:
    assert send(server + "/SmsReport", json.dumps([REPORT]).encode())[0] == 200
    handler = Recording(always_retry=True)
    drained(handler, max_dequeue_count=3)
    wait_until(lambda: settled(redis_client), 60, "the entry to be dead-lettered")
    assert [count for _, count in handler.seen] == [1, 2, 3]
    [letter] = RedisDeadLetterStore(redis_client, DeadLetterSettings()).list()
    assert (letter.reason, letter.dequeue_count, letter.source) == ("max_dequeue_count", 3,
                                                                    "push")
    assert redis_client.get("alicom:dedup:" + "SmsReport:12345^0:1381111****") is None


def test_entries_a_dead_consumer_had_read_are_taken_over(
        server: str, redis_client: redis.Redis, drained: Any) -> None:
    assert send(server + "/SmsUp", documented_bodies()["SmsUp"])[0] == 200
    redis_client.xgroup_create("alicom:push", "alicom-push", id="0")
    taken = redis_client.xreadgroup("alicom-push", "crashed", {"alicom:push": ">"}, count=10)
    assert len(taken[0][1]) == 1  # read, then the process "died" without settling it
    handler = Recording()
    drained(handler)
    wait_until(lambda: settled(redis_client), 60, "the orphaned entry to be re-taken")
    assert [count for _, count in handler.seen] == [2]
    assert sum(handler.applied.values()) == 1
