"""The `postgres` handler against a real PostgreSQL server: rows, keys, repeats, failures."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from alicom_sandbox.postgres_server import PostgresServer
from alicom_sandbox.redis_server import free_port
from consumer.errors import ConfigError, RetryLater
from consumer.handlers import postgres as postgres_module
from consumer.handlers import sink_key_function
from consumer.handlers.plugins import HandlerSpec, PluginError, load_handlers
from consumer.handlers.postgres import PostgresHandler, create_table_sql
from consumer.receipts import RECEIPT_CLASSES
from consumer.testing import HandlerTest, every_sample, platform_duplicate, sample


@pytest.fixture
def table() -> str:
    return "r_" + uuid.uuid4().hex[:12]


@pytest.fixture
def sink(postgres_server: PostgresServer, table: str) -> Iterator[PostgresHandler]:
    handler = PostgresHandler(postgres_server.dsn, table=table)
    yield handler
    handler.close()


def rows(server: PostgresServer, table: str, columns: str = "*") -> list[dict[str, Any]]:
    with psycopg.connect(server.dsn, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(f"SELECT {columns} FROM {table} ORDER BY dedup_key").fetchall()


def test_the_table_is_created_on_first_use_with_one_row_per_receipt(
        sink: PostgresHandler, postgres_server: PostgresServer, table: str) -> None:
    receipts = every_sample()
    assert sink.handle_batch(receipts).failed == []

    stored = rows(postgres_server, table)
    assert {r["receipt_class"] for r in stored} == set(RECEIPT_CLASSES)
    key_of = sink_key_function()
    assert sorted(r["dedup_key"] for r in stored) == sorted(key_of(r) for r in receipts)
    report = next(r for r in stored if r["dedup_key"] == key_of(sample("SmsReport-failed")))
    assert (report["phone_number"], report["biz_id"], report["success"], report["err_code"],
            report["sms_size"], report["send_time"], report["message_type"]) == (
        "1390000****", "932702304080415357^0", False, "MK:0001", 2, "2021-09-06 15:49:55",
        "SmsReport")
    assert report["raw"] == dict(sample("SmsReport-failed").raw)
    intl = next(r for r in stored if r["receipt_class"] == "IntlSmsReport")
    assert (intl["phone_number"], intl["status"], intl["success"]) == ("8521234****", "1", True)
    uplink = next(r for r in stored if r["receipt_class"] == "SmsUp")
    assert (uplink["content"], uplink["success"], uplink["biz_id"]) == ("内容", None, None)


def test_a_repeat_adds_no_row(sink: PostgresHandler, postgres_server: PostgresServer,
                              table: str) -> None:
    report = sample("SmsReport")
    sink.handle_batch([report, sample("SmsUp")])
    with capture_logs() as logs:
        assert sink.handle_batch([report, platform_duplicate(report)]).failed == []
    assert len(rows(postgres_server, table)) == 2
    assert [(e["event"], e["count"]) for e in logs] == [("sink_repeats_skipped", 2)]


def test_a_row_postgres_refuses_is_failed_alone_and_the_rest_stored(
        sink: PostgresHandler, postgres_server: PostgresServer, table: str) -> None:
    bad = sample("SmsUp", content="nul \u0000 inside")
    result = sink.handle_batch([sample("SmsReport"), bad, sample("SignSmsReport")])

    [(failed, signal)] = result.failed
    assert failed is bad and type(signal).__name__ == "PermanentFailure"
    assert "postgres refused the row" in str(signal)
    assert [r["receipt_class"] for r in rows(postgres_server, table, "receipt_class")] == [
        "SignSmsReport", "SmsReport"]  # sorted by key: "<Class>:..."


def test_a_refused_row_s_reason_quotes_no_value_of_it(
        sink: PostgresHandler, postgres_server: PostgresServer, table: str) -> None:
    sink.handle_batch([sample("SignSmsReport")])  # creates the table
    with psycopg.connect(postgres_server.dsn) as conn:  # a constraint of the user's own
        conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT short CHECK "
                     "(length(phone_number) < 5)")
    result = sink.handle_batch([sample("SmsReport", phone_number="13912345678")])

    [(_failed, signal)] = result.failed
    assert str(signal) == ('postgres refused the row: CheckViolation: new row for relation '
                           f'"{table}" violates check constraint "short"')


def test_an_unreachable_server_asks_for_a_retry_without_the_password() -> None:
    handler = PostgresHandler(f"postgresql://app:hunter2@127.0.0.1:{free_port()}/db",
                              timeout_s=1)
    with pytest.raises(RetryLater) as caught:
        handler.handle_batch([sample("SmsReport")])
    assert "hunter2" not in str(caught.value)
    handler.close()


def test_the_documented_schema_is_the_one_created(postgres_server: PostgresServer,
                                                  table: str) -> None:
    with psycopg.connect(postgres_server.dsn) as conn:
        conn.execute(create_table_sql(table).encode())
        columns = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
    for name, kind in columns:
        assert f"{name} " in (postgres_module.__doc__ or "")
        assert kind in {"text", "boolean", "integer", "jsonb", "timestamp with time zone"}
    assert columns[0] == ("dedup_key", "text")


@pytest.mark.parametrize(("options", "message"), [
    ({"table": "x; drop table y"}, "table must be [schema.]name"),
    ({"timeout_s": 0}, "timeout_s must be a number > 0"),
    ({"dsn": "host=a port"}, "dsn is not a connection string"),
])
def test_bad_options_are_one_line_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        PostgresHandler(**{"dsn": "postgresql://u:pw@h/db", **options})


def test_it_loads_by_entry_point_and_applies_each_receipt_once_through_the_kit(
        postgres_server: PostgresServer, table: str) -> None:
    with pytest.raises(PluginError, match="bad options for handler 'postgres'"):
        load_handlers([HandlerSpec("postgres", options={"dns": "x"})])
    kit = HandlerTest(specs=[HandlerSpec("postgres", options={
        "dsn": postgres_server.dsn, "table": table})])
    try:
        receipts = every_sample()
        run = kit.deliver([*receipts, *map(platform_duplicate, receipts)])
    finally:
        kit.close()
    assert run.outcomes() == ["applied"] * 9 + ["duplicate"] * 9
    assert len(rows(postgres_server, table)) == 9


def test_many_threads_and_handlers_using_a_new_table_at_once_all_succeed(
        postgres_server: PostgresServer, table: str) -> None:
    handlers = [PostgresHandler(postgres_server.dsn, table=table) for _ in range(3)]
    receipts = every_sample()
    try:
        with ThreadPoolExecutor(len(receipts)) as pool:  # CREATE TABLE races on pg_type
            results = list(pool.map(lambda i: handlers[i % 3].handle_batch([receipts[i]]),
                                    range(len(receipts))))
    finally:
        for handler in handlers:
            handler.close()
    assert all(result.failed == [] for result in results)
    assert len(rows(postgres_server, table)) == len(receipts)
