"""`postgres`: insert each receipt into a PostgreSQL table, keyed by its dedup key.

The table (created on first use when absent; `create = false` leaves that to you)::

    CREATE TABLE IF NOT EXISTS alicom_receipts (
        dedup_key      text PRIMARY KEY,      -- the daemon's dedup key: "<Class>:<hash>"
        receipt_class  text NOT NULL,         -- SmsReport, IntlSmsReport, SmsUp, ...
        message_type   text NOT NULL,         -- the queue type (SmsReport for both reports)
        phone_number   text,                  -- phone_number / to / mobile
        biz_id         text,
        out_id         text,
        message_id     text,                  -- the platform's MessageId (international)
        success        boolean,               -- delivery reports only
        err_code       text,                  -- err_code / error_code
        status         text,                  -- status / sign_status / template_status /
                                              -- approval_status / render_status
        send_time      text,                  -- as sent (send_time / send_date)
        report_time    text,                  -- as sent (report_time / receive_date)
        sms_size       integer,
        content        text,                  -- an uplink's text
        source         text NOT NULL,         -- mns, push, reconcile, replay
        mns_message_id text NOT NULL,         -- the delivery's MessageId ("" for push)
        received_at    timestamptz NOT NULL DEFAULT now(),
        raw            jsonb NOT NULL         -- the body exactly as received
    );

Columns a class does not have stay NULL. Each received batch is one INSERT ... ON CONFLICT
(dedup_key) DO NOTHING in one transaction: a receipt delivered again (a platform duplicate,
a redelivery after kill -9 at any moment) adds no row. This sink is exactly-once.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from consumer.errors import ConfigError, RetryLater, clipped, one_line
from consumer.handler_api import BatchResult
from consumer.handlers import require_number, sink_key_function
from consumer.receipts import Receipt

try:
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

log = structlog.get_logger(__name__)

#: column -> (SQL type, the receipt attributes it is read from, first present wins)
COLUMNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("phone_number", "text", ("phone_number", "to", "mobile")),
    ("biz_id", "text", ("biz_id",)),
    ("out_id", "text", ("out_id",)),
    ("message_id", "text", ("message_id",)),
    ("success", "boolean", ("success",)),
    ("err_code", "text", ("err_code", "error_code")),
    ("status", "text", ("status", "sign_status", "template_status", "approval_status",
                        "render_status")),
    ("send_time", "text", ("send_time", "send_date")),
    ("report_time", "text", ("report_time", "receive_date")),
    ("sms_size", "integer", ("sms_size",)),
    ("content", "text", ("content",)),
)
_NAMES = ("dedup_key", "receipt_class", "message_type", *(c for c, _, _ in COLUMNS),
          "source", "mns_message_id", "raw")
_TABLE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")


def create_table_sql(table: str) -> str:
    """The CREATE TABLE IF NOT EXISTS statement (also what the module docstring shows)."""
    typed = ",\n    ".join(f"{name} {kind}" for name, kind, _ in COLUMNS)
    return (f"CREATE TABLE IF NOT EXISTS {_quoted(table)} (\n"
            "    dedup_key text PRIMARY KEY,\n    receipt_class text NOT NULL,\n"
            f"    message_type text NOT NULL,\n    {typed},\n    source text NOT NULL,\n"
            "    mns_message_id text NOT NULL,\n"
            "    received_at timestamptz NOT NULL DEFAULT now(),\n    raw jsonb NOT NULL\n)")


def _quoted(table: str) -> str:
    return ".".join(f'"{part}"' for part in table.split("."))


class PostgresHandler:
    """Stores receipts as rows (see the module docstring); one transaction per batch.

    Options: `dsn` (a libpq connection string or postgresql:// URL; its password never
    appears in errors or logs), `table` (default "alicom_receipts", may be schema-qualified),
    `create` (default true: create the table on first use), `timeout_s` (connect and
    statement timeout), `dedup_keys` (only if the config overrides `[dedup_keys]`: the same
    table, so the row key is the daemon's dedup key).

    A connection or server failure retries the batch; a receipt PostgreSQL refuses (a NUL
    character, an invalid JSON escape) is dead-lettered alone while the others are stored.
    One connection per handler thread, opened on first use.
    """

    name = "postgres"
    types: tuple[str, ...] | None = None

    def __init__(self, dsn: str, table: str = "alicom_receipts", create: bool = True,
                 timeout_s: float = 10.0,
                 dedup_keys: Mapping[str, Sequence[str]] | None = None) -> None:
        if psycopg is None:
            raise ConfigError("postgres handler needs psycopg 3: pip install "
                              "'alicom-receipts[postgres]'")
        if not _TABLE.match(table):
            raise ConfigError(f"postgres handler: table must be [schema.]name of letters, "
                              f"digits and _, got {table!r}")
        require_number(self.name, "timeout_s", timeout_s, above=0)
        try:
            psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:  # its message may quote the DSN: keep it out
            raise ConfigError("postgres handler: dsn is not a connection string") from None
        self._dsn, self._table, self._create = dsn, table, create
        self._timeout_s = timeout_s
        self._key_of = sink_key_function(dedup_keys)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._connections: list[psycopg.Connection[Any]] = []
        self._created = not create
        self._insert = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (dedup_key) "
                               "DO NOTHING").format(
            sql.Identifier(*table.split(".")),
            sql.SQL(", ").join(sql.Identifier(n) for n in _NAMES),
            sql.SQL(", ").join(sql.Placeholder() * len(_NAMES)))

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """Inserts the batch in one transaction; see the class docstring for failures."""
        try:
            conn = self._connection()
            rows = [self.row(r) for r in receipts]
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(self._insert, rows)
                    added = cur.rowcount
            except (psycopg.DataError, psycopg.IntegrityError):
                return self._one_by_one(conn, receipts)
        except psycopg.Error as exc:
            self._drop_broken()
            raise RetryLater(f"postgres {self._table}: {_safe(exc)}") from None
        if 0 <= added < len(rows):  # rows it had inserted before: the repeats it absorbs
            log.info("sink_repeats_skipped", handler=self.name, count=len(rows) - added)
        return BatchResult()

    def row(self, receipt: Receipt) -> tuple[Any, ...]:
        """The values of one receipt's row, in the table's column order (`raw` as jsonb)."""
        typed = [_first(receipt, attrs) for _, _, attrs in COLUMNS]
        return (self._key_of(receipt), type(receipt).__name__, receipt.message_type, *typed,
                receipt.meta.source, receipt.meta.message_id, Jsonb(dict(receipt.raw)))

    def _one_by_one(self, conn: psycopg.Connection[Any],
                    receipts: Sequence[Receipt]) -> BatchResult:
        """After a batch PostgreSQL refused for its data: each row alone, the bad ones failed."""
        result = BatchResult()
        for receipt in receipts:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(self._insert, self.row(receipt))
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                result.fail(receipt, f"postgres refused the row: {_safe(exc)}")
        return result

    def _connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn
        conn = psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=max(1, round(self._timeout_s)),
            options=f"-c statement_timeout={int(self._timeout_s * 1000)}")
        with self._lock:
            self._connections.append(conn)
        if not self._created:
            self._create_table(conn)
        self._local.conn = conn
        return conn

    def _create_table(self, conn: psycopg.Connection[Any]) -> None:
        """CREATE TABLE IF NOT EXISTS, once per handler; IF NOT EXISTS is not safe against a
        concurrent creation (it fails on pg_type's unique index), so this process's threads
        take turns and another process's win is taken as success."""
        with self._create_lock:
            if self._created:
                return
            with contextlib.suppress(psycopg.errors.UniqueViolation,
                                     psycopg.errors.DuplicateObject,
                                     psycopg.errors.DuplicateTable):
                conn.execute(create_table_sql(self._table).encode())
            self._created = True

    def _drop_broken(self) -> None:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and (conn.closed or conn.broken):
            self._local.conn = None

    def close(self) -> None:
        """Closes every connection this handler opened."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _first(receipt: Receipt, attrs: tuple[str, ...]) -> Any:
    for attr in attrs:
        value = getattr(receipt, attr, None)
        if value is not None:
            return str(value) if isinstance(value, int) and attr.endswith("_status") else value
    return None


def _safe(exc: BaseException) -> str:
    """One line without the connection string (libpq's messages may quote host and user,
    never the password; a DSN is never part of them) and without the server's DETAIL and
    CONTEXT, which quote the refused row ("Failing row contains (..., 13800000001, ...)"):
    the reason goes to log lines and dead letters, where no phone number may be in clear."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    if primary:
        return clipped(one_line(exc, primary))
    return clipped(one_line(exc))
