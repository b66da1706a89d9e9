"""The push receiver under hostile or broken clients, on a real Redis and real sockets."""

from __future__ import annotations

import socket

import redis
import structlog

from alicom_sandbox.redis_server import RedisServer
from consumer.settings.push import PushSettings
from consumer.sources.push.server import running_push_server


def test_a_request_the_http_parser_rejects_is_answered_400_and_logged(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    settings = PushSettings(listen="127.0.0.1:0")
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
