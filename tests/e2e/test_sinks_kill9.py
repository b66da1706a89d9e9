"""The exactly-once sinks under kill -9: the real worker, killed again and again mid-load.

5,000 SmsReport messages (5% of them platform duplicates: the same body under a new
MessageId) go through one worker with two handlers, `redis-stream` and `postgres`. The
worker is SIGKILLed 5 times while it works (each time the stream has grown past the next
mark) and started again; when the queue is drained, the stream holds exactly one entry and
the table exactly one row per receipt, none missing.
"""

from __future__ import annotations

import uuid
from collections import Counter

import psycopg
import pytest

from alicom_sandbox.postgres_server import PostgresServer
from consumer.handlers import sink_key_function
from consumer.pipeline.decode import parse_object
from consumer.receipts import ReceiptMeta
from tests.e2e.conftest import Stack

COUNT = 5_000
KILLS = 5
STREAM = "sink:receipts"


@pytest.mark.slow
def test_redis_stream_and_postgres_hold_each_receipt_once_after_repeated_kill_9(
        stack: Stack, postgres_server: PostgresServer) -> None:
    table = "kill9_" + uuid.uuid4().hex[:10]
    report = stack.publisher().publish("SmsReport", COUNT, duplicate_rate=0.05, seed=7)
    key_of = sink_key_function()
    expected = {key_of(parse_object("SmsReport", m.obj, ReceiptMeta("mns")))
                for m in report.originals}
    assert len(report.duplicates) > 0 and len(expected) == len(report.originals)
    config = stack.config(handlers=[
        {"use": "redis-stream", "options": {"url": stack.redis_server.url, "stream": STREAM}},
        {"use": "postgres", "options": {"dsn": postgres_server.dsn, "table": table}},
    ], poll={"pollers": 4})

    worker = stack.worker(config)
    for kill in range(1, KILLS + 1):
        mark = kill * len(expected) // (KILLS + 1)
        stack.wait(lambda m=mark: stack.redis.xlen(STREAM) >= m,
                   f"the stream to pass {mark} entries before kill {kill}", timeout_s=120)
        worker.kill()
        worker = stack.worker(config)
    stack.wait(lambda: stack.queue_is_empty() and stack.redis.xlen(STREAM) >= len(expected),
               "the queue to drain after the last kill", timeout_s=180)

    entries = Counter(fields[b"key"].decode() for _, fields in stack.redis.xrange(STREAM))
    with psycopg.connect(postgres_server.dsn) as conn:
        rows = Counter(key for (key,) in conn.execute(f"SELECT dedup_key FROM {table}"))
    assert sum(1 for w in stack.workers if w.expected_exit) >= KILLS
    assert set(entries) == expected and max(entries.values()) == 1
    assert set(rows) == expected and max(rows.values()) == 1
    # The kills did hit receipts whose sink write had happened but whose completion was not
    # recorded (runs here absorbed 15-260 such repeats per sink): without the sinks' own
    # records each of them would be a second entry / row.
    absorbed = sum(line["count"] for line in stack.log_events("sink_repeats_skipped"))
    assert absorbed > 0
