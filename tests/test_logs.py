"""Every log line says who wrote it; `ecs` lines are ECS; colour only on a terminal; one name
per concept in every log call of the daemon."""

from __future__ import annotations

import ast
import dataclasses
import enum
import io
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import structlog

from consumer.runtime import logs

ROOT = Path(__file__).resolve().parent.parent

#: The ECS fields our lines use, with their ECS types (ECS 8.x field reference:
#: https://www.elastic.co/guide/en/ecs/current/ecs-field-reference.html). Anything else
#: must be a custom field under `alicom.` (ECS: custom fields go in their own namespace).
ECS_FIELDS = {
    "@timestamp": "date",
    "message": "match_only_text",
    "ecs.version": "keyword",
    "log.level": "keyword",
    "log.logger": "keyword",
    "service.name": "keyword",
    "host.hostname": "keyword",
    "process.pid": "long",
    "error.message": "match_only_text",
    "error.stack_trace": "wildcard",
}


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def configured(monkeypatch: pytest.MonkeyPatch, fmt: str,
               stream: io.StringIO | None = None) -> io.StringIO:
    buffer = stream or io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    logs.configure("info", fmt, service="alicom-receipts-test")
    return buffer


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def emit_some() -> None:
    """A structlog line, a warning with an error text, an exception, and a stdlib record."""
    log = structlog.get_logger("alicom_receipts.worker")
    log.info("receipt_settled", queue="Alicom-Queue-1-SmsReport", message_id="M-1",
             dequeue_count=1, outcome="handled", duration_ms=1.5)
    log.warning("poll_failed", queue="Alicom-Queue-1-SmsReport", error="timed out")
    try:
        {}["missing"]
    except KeyError:
        log.exception("handler_crashed", handler="log")
    logging.getLogger("aiohttp.access").warning("GET /x 404")
    for handler in logging.getLogger().handlers:
        handler.flush()
    structlog.get_logger().info("flush")  # a line without a logger name of its own
    logs_flush()


def logs_flush() -> None:
    # The buffered writer behind every structlog logger is flushed by a warning line.
    structlog.get_logger("alicom_receipts.test").warning("end")


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in buffer.getvalue().splitlines() if raw.strip()]


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = prefix + key
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def has_ecs_type(value: Any, ecs_type: str) -> bool:
    if ecs_type == "long":
        return isinstance(value, int) and not isinstance(value, bool)
    if ecs_type == "date":
        return isinstance(value, str) and datetime.fromisoformat(value.replace("Z", "+00:00"))
    return isinstance(value, str)  # keyword, match_only_text, wildcard


def test_every_json_line_names_its_logger_service_host_and_pid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = configured(monkeypatch, "json")
    emit_some()
    found = lines(buffer)
    assert len(found) == 6
    for line in found:
        assert line["service"] == "alicom-receipts-test"
        assert line["host"] == socket.gethostname()
        assert line["pid"] == os.getpid()
        assert line["logger"]
    by_event = {line["event"]: line for line in found}
    assert by_event["receipt_settled"]["logger"] == "alicom_receipts.worker"
    assert by_event["GET /x 404"]["logger"] == "aiohttp.access"
    assert by_event["flush"]["logger"] == "alicom_receipts"


@pytest.mark.parametrize("now_ns", [
    1_795_902_232_123_456_789,  # a fraction: microseconds, rounded down
    1_795_902_232_000_000_000,  # a whole second: no fraction, as isoformat writes it
    1_795_902_232_000_999_999,  # under a microsecond past it: a whole second too
    1_795_902_233_000_001_000,  # the next second, one microsecond in
])
def test_timestamps_are_what_structlogs_iso_utc_stamper_writes(now_ns: int) -> None:
    stamp = logs._Stamp("test")
    expected = datetime.fromtimestamp(now_ns // 1000 / 1e6, tz=timezone.utc)
    assert stamp.timestamp(now_ns) == expected.isoformat().replace("+00:00", "Z")
    assert stamp.timestamp(now_ns) == stamp.timestamp(now_ns)  # the cached second too


def test_a_field_named_like_a_secret_is_masked_and_a_level_named_as_structlog_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = configured(monkeypatch, "json")
    structlog.get_logger("alicom_receipts.test").warn("x", password="hunter2", secret="s")
    logs.flush()
    [line] = lines(buffer)
    assert (line["password"], line["secret"], line["level"]) == ("***", "***", "warning")


@dataclasses.dataclass
class Point:
    x: int


class Pair(NamedTuple):
    code: str
    count: int


class Kind(enum.Enum):
    A = "a"


class Ratio(float):
    """A float subclass, as numpy.float64 is."""


#: Values JSON cannot hold or orjson refuses, each written as the standard library's
#: `json.dumps(ensure_ascii=False, default=repr)` wrote it: as is, or its repr.
ODD_VALUES: list[dict[str, Any]] = [
    {"text": "号码在黑名单中", "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
     "point": Point(1), "tags": {"a"}, "raw": b"x", "by_number": {1: "one", 2.5: "half"},
     "nested": [1, 2.5, None, True, ("a", "b")], "path": Path("/tmp/x")},
    {"big": 2**70},         # past 64 bits: orjson refuses it
    {"lone": "\ud800"},     # a lone surrogate (a JSON escape can carry one)
    {"pair": Pair("isv.BUSINESS_LIMIT_CONTROL", 2),  # orjson hands a tuple subclass over
     "pairs": [Pair("DELIVERED", 1), ("x", Pair("y", 0))], "ratio": Ratio(0.25)},
]


@pytest.mark.parametrize("fields", ODD_VALUES,
                         ids=["odd-types", "big-int", "surrogate", "subclasses"])
def test_json_lines_hold_what_the_standard_library_encoder_wrote(
        monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any]) -> None:
    buffer = configured(monkeypatch, "json")
    structlog.get_logger("alicom_receipts.test").warning("odd", **fields)
    raw = buffer.getvalue().strip()
    line = json.loads(raw)
    assert list(line)[:len(fields) + 1] == [*fields, "event"]  # the call's order
    assert {k: line[k] for k in fields} == json.loads(
        json.dumps(fields, ensure_ascii=False, default=repr))
    assert "\\u" not in raw  # non-ASCII as is, never escaped


def test_what_json_lines_write_unlike_the_standard_library_encoder() -> None:
    # The documented differences (logs.py, CHANGELOG), pinned: valid JSON where the standard
    # library wrote NaN / Infinity, values for a UUID and an Enum.
    line = logs._json_line(None, "warning", {
        "ratio": float("nan"), float("inf"): "key", "id": uuid.UUID(int=1), "kind": Kind.A})
    assert line == ('{"ratio":null,"null":"key",'
                    '"id":"00000000-0000-0000-0000-000000000001","kind":"a"}')


def test_info_lines_are_what_structlogs_own_path_writes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = configured(monkeypatch, "json")
    log = structlog.get_logger("alicom_receipts.test")
    log.info("settled", zeta=1, alpha="b")           # the daemon's calls: the fast path
    log.bind(bound=2).info("bound", zeta=1)           # structlog's own from here on
    log.info("%s of %d", "one", 2, zeta=1)
    log.warning("settled", zeta=1, alpha="b")
    logs.flush()
    fast, bound, interpolated, warned = lines(buffer)
    assert list(fast) == [*warned] and fast["level"] == "info"
    assert {k: v for k, v in fast.items() if k not in {"level", "timestamp"}} == {
        k: v for k, v in warned.items() if k not in {"level", "timestamp"}}
    assert (bound["bound"], bound["zeta"], bound["event"]) == (2, 1, "bound")
    assert interpolated["event"] == "one of 2"
    with structlog.testing.capture_logs() as captured:  # its processor drops every event
        log.info("captured", zeta=1)
    assert captured == [{"zeta": 1, "event": "captured", "log_level": "info"}]
    logs.flush()
    assert "captured" not in buffer.getvalue()


def test_a_forked_child_stamps_its_own_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    configured(monkeypatch, "json")
    stamp = logs._Stamp("test")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        try:
            os.write(write, str(stamp(None, "info", {})["pid"]).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    assert int(os.read(read, 64)) == child
    assert stamp(None, "info", {})["pid"] == os.getpid()


def test_ecs_lines_use_ecs_fields_with_ecs_types_and_keep_ours_under_a_namespace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = configured(monkeypatch, "ecs")
    emit_some()
    found = lines(buffer)
    assert len(found) == 6
    for line in found:
        fields = flatten(line)
        for name in ("@timestamp", "message", "ecs.version", "log.level", "log.logger",
                     "service.name", "host.hostname", "process.pid"):
            assert name in fields, (name, line)
        for name, value in fields.items():
            if name.startswith(logs.ECS_NAMESPACE + "."):
                continue
            assert name in ECS_FIELDS, "not an ECS field: %s in %s" % (name, line)
            assert has_ecs_type(value, ECS_FIELDS[name]), (name, value)
    settled = next(flatten(x) for x in found if x["message"] == "receipt_settled")
    assert settled["log.level"] == "info" and settled["log.logger"] == "alicom_receipts.worker"
    assert settled["alicom.message_id"] == "M-1" and settled["alicom.dequeue_count"] == 1
    assert settled["process.pid"] == os.getpid()
    failed = next(flatten(x) for x in found if x["message"] == "poll_failed")
    assert failed["error.message"] == "timed out" and failed["log.level"] == "warning"
    crashed = next(flatten(x) for x in found if x["message"] == "handler_crashed")
    assert "KeyError: 'missing'" in crashed["error.stack_trace"]


def test_console_output_is_coloured_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    to_file = configured(monkeypatch, "console")
    structlog.get_logger("alicom_receipts.demo").warning("receipt_settled", outcome="handled")
    assert "receipt_settled" in to_file.getvalue()
    assert "\x1b[" not in to_file.getvalue()
    structlog.reset_defaults()
    to_tty = configured(monkeypatch, "console", TtyBuffer())
    structlog.get_logger("alicom_receipts.demo").warning("receipt_settled", outcome="handled")
    assert "\x1b[" in to_tty.getvalue()


def test_auto_is_json_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = configured(monkeypatch, "auto")
    structlog.get_logger("alicom_receipts.x").warning("hello")
    assert json.loads(buffer.getvalue())["event"] == "hello"


def test_the_service_defaults_to_the_command() -> None:
    assert logs.default_service(["alicom-receipts", "push-server", "--config", "f"]) == (
        "alicom-receipts-push-server")
    assert logs.default_service(["alicom-receipts", "--help"]) == "alicom-receipts"


#: The one name of each concept in log calls, and the names that drifted from it.
ALIASES = {
    "queue_type": "message_type",
    "mns_message_id": "message_id",
    "msg_id": "message_id",
    "queue_name": "queue",
    "type": "message_type",
}


def log_call_keywords() -> list[tuple[str, int, str]]:
    """(file, line, keyword) of every keyword argument of a `log.<level>(...)` call."""
    found = []
    levels = {"debug", "info", "warning", "error", "exception", "critical"}
    for path in (ROOT / "consumer").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in levels and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in {"log", "_log", "logger"}):
                found += [(str(path.relative_to(ROOT)), node.lineno, kw.arg)
                          for kw in node.keywords if kw.arg]
    return found


def test_log_calls_use_one_name_per_concept() -> None:
    keywords = log_call_keywords()
    assert len(keywords) > 100  # the scan sees the daemon's log calls
    drifted = ["%s:%d %s (say %s)" % (f, n, kw, ALIASES[kw]) for f, n, kw in keywords
               if kw in ALIASES]
    assert not drifted, drifted
    # pid, host, service and logger are on every line already.
    doubled = ["%s:%d %s" % (f, n, kw) for f, n, kw in keywords
               if kw in {"pid", "host", "service", "logger"}]
    assert not doubled, doubled
