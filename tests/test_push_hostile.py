"""The push receiver under hostile or broken clients, on a real Redis and real sockets."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import structlog

from alicom_sandbox.redis_server import RedisServer, free_port
from consumer.settings.push import PLATFORM_DEADLINE_S, PushSettings
from consumer.sources.push.server import SUCCESS, running_push_server
from tests.e2e.harness import wait_until
from tests.test_push import REPORT, CiPushSettings, send


def test_a_request_the_http_parser_rejects_is_answered_400_and_logged(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = CiPushSettings(listen="127.0.0.1:0")
    with structlog.testing.capture_logs() as logged, \
            running_push_server(settings, redis_server.url) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as conn:
        conn.sendall(b"POST /alicom/SmsReport HTTP/1.1\r\nHost: x\r\nX-Big: "
                     + b"a" * 100_000 + b"\r\n\r\n")
        answer = conn.recv(200)
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    requests = [e for e in logged if e["event"] == "push_request"]
    assert [(e["status"], e["message_type"]) for e in requests] == [(400, None)]
    assert not redis_client.exists("alicom:push")


# -- slow and silent connections ----------------------------------------------------------

PARTIAL_HEADER = b"POST /alicom/SmsReport HTTP/1.1\r\nHost: x\r\n"  # never finished


def timed_push(url: str, body: bytes) -> tuple[int, float]:
    """(status, seconds) of one POST on a new connection."""
    started = time.monotonic()
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        status = answer.status
        answer.read()
    return status, time.monotonic() - started


@contextmanager
def open_files_limit(wanted: int) -> Iterator[None]:
    """This test process may hold `wanted` descriptors (its half-open client sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.fail("the hard open-files limit %d is below the %d this test needs" % (hard, wanted))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _systemd_default_fd_limit() -> None:
    """In the child: the open-files limit systemd gives a unit without LimitNOFILE (soft
    1,024), with the hard limit at the same value so that the server cannot raise it."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@pytest.mark.slow
@pytest.mark.alone  # the platform's 700 ms answer limit, measured
def test_1100_half_open_connections_do_not_delay_a_real_push_past_700_ms(
        redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path) -> None:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ALICOM_RECEIPTS_")},
           "ALICOM_RECEIPTS_REDIS_URL": redis_server.url,
           "ALICOM_RECEIPTS_PUSH_LISTEN": "127.0.0.1:%d" % port,
           "ALICOM_RECEIPTS_PUSH_ALLOW_VOLATILE": "true",  # the session's Redis has no AOF
           "ALICOM_RECEIPTS_LOG_FORMAT": "json"}
    log_path = tmp_path / "push-server.log"
    url = "http://127.0.0.1:%d/alicom/SmsReport" % port
    with log_path.open("wb") as log_file, open_files_limit(1400):
        server = subprocess.Popen(
            [sys.executable, "-m", "consumer", "push-server"], env=env, stdout=log_file,
            stderr=subprocess.STDOUT, preexec_fn=_systemd_default_fd_limit)  # noqa: PLW1509
        sockets: list[socket.socket] = []
        try:
            wait_until(lambda: _answers(url) or server.poll() is not None, 30,
                       "the push server to answer")
            for _ in range(1100):
                conn = socket.create_connection(("127.0.0.1", port), timeout=10)
                conn.sendall(PARTIAL_HEADER)
                sockets.append(conn)
            status, seconds = timed_push(url, json.dumps([REPORT]).encode())
        finally:
            for conn in sockets:
                conn.close()
            server.terminate()
            server.wait(30)
    log_text = log_path.read_text()
    assert "push_connection_cap_lowered" in log_text, log_text  # the limit really was 1,024
    assert status == 200
    assert seconds < PLATFORM_DEADLINE_S, "the push took %.3f s" % seconds
    assert [json.loads(f[b"b"]) for _id, f in redis_client.xrange("alicom:push")] == [REPORT]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def test_a_connection_that_never_finishes_its_header_is_closed_after_the_read_timeout(
        redis_server: RedisServer) -> None:
    settings = CiPushSettings(listen="127.0.0.1:0", read_timeout_s=0.5)
    with running_push_server(settings, redis_server.url) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as conn:
        conn.sendall(PARTIAL_HEADER)
        assert conn.recv(100) == b""  # closed by the server, well before our 10 s timeout


def test_a_body_that_stalls_is_answered_408_and_nothing_is_stored(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = CiPushSettings(listen="127.0.0.1:0", read_timeout_s=0.5)
    with running_push_server(settings, redis_server.url) as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as conn:
        conn.sendall(PARTIAL_HEADER + b"Content-Length: 1000\r\n\r\n[{")
        answer = conn.recv(1000)
    assert answer.startswith(b"HTTP/1.1 408")
    assert not redis_client.exists("alicom:push")


def test_past_the_connection_cap_the_oldest_idle_connection_makes_room(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = CiPushSettings(listen="127.0.0.1:0", max_connections=5)
    with running_push_server(settings, redis_server.url) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                for _ in range(5)]
        wait_until(lambda: srv.receiver.guard.open_count == 5, 10, "5 open connections")
        status, _seconds = timed_push(srv.url + "/SmsReport", json.dumps([REPORT]).encode())
        assert status == 200
        assert idle[0].recv(100) == b""  # the oldest was closed for it
        assert srv.receiver.guard.evicted >= 1
        for conn in idle:
            conn.close()
    assert redis_client.xlen("alicom:push") == 1


# -- big bodies -----------------------------------------------------------------------------


@pytest.mark.alone  # the platform's 700 ms answer limit, measured
def test_a_body_of_100k_elements_is_refused_within_700_ms_and_nothing_is_stored(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    body = b"[" + b",".join([b"{}"] * 100_000) + b"]"
    with running_push_server(PushSettings(listen="127.0.0.1:0"), redis_server.url) as srv:
        started = time.monotonic()
        status, answer = send(srv.url + "/SmsReport", body)
        seconds = time.monotonic() - started
    assert status == 413
    assert answer == {"code": 1, "msg": "the body holds 100000 receipts; at most 1000 are "
                                        "taken per push"}
    assert seconds < PLATFORM_DEADLINE_S, "answered after %.3f s" % seconds
    assert not redis_client.exists("alicom:push")


def test_a_body_at_the_element_cap_is_stored_whole(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = CiPushSettings(listen="127.0.0.1:0", max_elements=50)
    body = json.dumps([{**REPORT, "biz_id": "%d^0" % i} for i in range(50)]).encode()
    with running_push_server(settings, redis_server.url) as srv:
        assert send(srv.url + "/SmsReport", body) == (200, dict(SUCCESS))
        assert send(srv.url + "/SmsReport", json.dumps([REPORT] * 51).encode())[0] == 413
    assert redis_client.xlen("alicom:push") == 50
