"""structlog set-up: JSON lines, ECS JSON lines or console output; colour only on a terminal.

Called once by the command line at start-up; nothing here runs at import. Standard-library
logging (the SDKs', tenacity's) is routed through the same renderer.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TextIO, cast

import ecs_logging
import orjson
import structlog
from structlog.processors import format_exc_info
from structlog.typing import EventDict

_SECRET_KEYS = frozenset({"access_key_secret", "security_token", "password", "secret"})


# orjson encodes a line per receipt: a `receipt_settled` line's encoding took 56k
# instructions in the standard library's C encoder (its non-ASCII string escaping alone 13k)
# and takes under 8k in orjson: 8% of the worker's instructions per receipt (README,
# Benchmarks). Its options keep the lines as the standard library wrote them: non-ASCII as
# is, keys in their order, non-string keys as text, dates and dataclasses through
# `_default` (their repr, like any other value JSON cannot hold: shown, never fatal).
# What differs: compact separators (`{"a":1,"b":2}`, as the ECS format's), a UUID or an
# Enum written as its value (not its repr), NaN and infinities as null (valid JSON), also
# as a key ("null", not "NaN" / "Infinity").
_ORJSON_OPTIONS: Final = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
                          | orjson.OPT_PASSTHROUGH_DATETIME)
# What orjson refuses (an integer past 64 bits, a lone surrogate, nesting past 255 levels)
# the standard library's encoder writes, built once: json.dumps with options builds one per
# call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=repr, separators=(",", ":"))


def _default(value: object) -> object:
    """A value orjson hands over, as the standard library's encoder writes it. orjson takes
    exact tuples and floats only: a NamedTuple (any tuple subclass) is an array, a float
    subclass (numpy.float64) a number; anything else its repr."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float):
        return float(value)
    return repr(value)


def _json_line(_logger: Any, _name: str, event: dict[str, Any]) -> str:
    """The JSON format's renderer (structlog's JSONRenderer calls a serializer through two
    more frames and two keyword dicts; this is the whole of what it did here)."""
    try:
        return orjson.dumps(event, default=_default, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return _ENCODER.encode(event)


class BufferedLineLogger:
    """A structlog logger that writes info and debug lines through a buffer flushed every
    `flush_s` by a background thread, and warnings and errors at once, flushing the buffer
    before them so that the order holds.

    One line per receipt is thousands of lines a second; flushing each one (structlog's
    PrintLogger does) is a write(2) per receipt under a lock. The price: on `kill -9` the
    last `flush_s` of info lines can be lost; a normal exit flushes everything.
    """

    def __init__(self, stream: TextIO, flush_s: float = 0.1) -> None:
        self._stream = stream
        self._lock = threading.Lock()        # guards _pending: held for an append or a swap
        self._write_lock = threading.Lock()  # one writer at a time, so the order holds
        self._pending: list[str] = []
        self._flush_s = flush_s
        self._thread = threading.Thread(target=self._flusher, name="log-flush", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def buffered(self, message: str) -> None:
        with self._lock:
            self._pending.append(message)

    def now(self, message: str) -> None:
        with self._write_lock:
            with self._lock:
                self._pending.append(message)
            self._write()

    def flush(self, timeout_s: float = -1) -> bool:
        """Writes what is pending; with `timeout_s` >= 0 gives up (False) when another
        writer holds the stream that long (a signal handler may interrupt that writer)."""
        if not self._write_lock.acquire(timeout=timeout_s):
            return False
        try:
            self._write()
        finally:
            self._write_lock.release()
        return True

    def _write(self) -> None:
        """Writes what is pending (write lock held). The write(2) happens outside `_lock`:
        threads logging meanwhile append without waiting for the disk or the pipe."""
        with self._lock:
            lines, self._pending = self._pending, []
        if lines:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed or gone: nothing sensible is left to do with a log line

    def _flusher(self) -> None:
        while True:
            time.sleep(self._flush_s)
            self.flush()

    msg = debug = info = buffered
    warning = warn = error = err = critical = exception = fatal = failure = now


#: `log.format` values; "auto" is console on a terminal, JSON otherwise.
FORMATS: Final = ("auto", "json", "console", "ecs")
#: The ECS fields of every line, from the identity fields every format carries.
_ECS_IDENTITY: Final = {"logger": "log.logger", "service": "service.name",
                        "host": "host.hostname", "pid": "process.pid"}
#: Our own fields go under this ECS custom namespace (ECS reserves the top level for itself).
ECS_NAMESPACE: Final = "alicom"


def default_service(argv: Sequence[str]) -> str:
    """`alicom-receipts-<command>` for `alicom-receipts <command> ...`, else `alicom-receipts`."""
    if len(argv) > 1 and re.fullmatch(r"[a-z][a-z-]*", argv[1]):
        return "alicom-receipts-" + argv[1]
    return "alicom-receipts"


class _Stamp:
    """What every line gets, in one processor (a line is written per receipt: each call of
    the chain counts): `level`; `timestamp`, ISO 8601 UTC with microseconds as structlog's
    `TimeStamper(fmt="iso", utc=True)` writes it, its date and time formatted once a
    second; `logger` (the structlog logger's name, or a standard-library record's);
    `service`, `host` and `pid` (this process's: a forked child writes its own); and, the
    last line of defence, any field named like a secret masked."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._host = socket.gethostname()
        self._second: tuple[int, str] = (-1, "")  # replaced whole: safe across threads

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
        event["level"] = _LEVELS.get(name, name)
        event["timestamp"] = self.timestamp(time.time_ns())
        if "logger" not in event:
            record = event.get("_record")
            event["logger"] = (record.name if record is not None
                               else getattr(logger, "name", None) or _ROOT_NAME)
        event.setdefault("service", self._service)
        event.setdefault("host", self._host)
        event.setdefault("pid", _pid)
        for key in _SECRET_KEYS:  # four lookups; `& event.keys()` made a set of every field
            if key in event:
                event[key] = "***"
        return event

    def timestamp(self, now_ns: int) -> str:
        """`2026-11-28T21:43:52.123456Z` (no fraction at a whole second, as isoformat)."""
        seconds, rest = divmod(now_ns, 1_000_000_000)
        cached = self._second
        if cached[0] != seconds:
            cached = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
            self._second = cached
        micros = rest // 1000
        return "%s.%06dZ" % (cached[1], micros) if micros else cached[1] + "Z"


# This process's id, read by `configure` and again in a forked child (os.getpid() is a
# system call, and a line is written per receipt).
_pid = os.getpid()
_fork_hook = False


def _read_pid() -> None:
    global _pid  # noqa: PLW0603 - one value for the process, replaced only at a fork
    _pid = os.getpid()


#: structlog's names of the levels of its method names (add_log_level's mapping).
_LEVELS: Final = {"warn": "warning", "exception": "error"}


def _exc_info(logger: Any, name: str, event: EventDict) -> EventDict:
    """structlog's format_exc_info, only for a line that has `exc_info` (few have)."""
    return format_exc_info(logger, name, event) if "exc_info" in event else event


def _to_ecs(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Renames the fields to ECS (the identity fields, `error` text, the timestamp) and moves
    every field of ours under `alicom.`; ecs-logging then turns `event` into `message`."""
    out: dict[str, Any] = {"event": event.pop("event", ""),
                           "@timestamp": event.pop("timestamp", None)}
    event.pop("level", None)  # ecs-logging writes log.level from the method name
    if "exception" in event:
        out["exception"] = event.pop("exception")
    for ours, ecs in _ECS_IDENTITY.items():
        if ours in event:
            out[ecs] = event.pop(ours)
    if "error" in event:
        out["error.message"] = str(event.pop("error"))
    for key, value in event.items():
        if not key.startswith("_"):
            out["%s.%s" % (ECS_NAMESPACE, key)] = value
    if out["@timestamp"] is None:
        del out["@timestamp"]
    return out


def _renderer(fmt: str, stream: TextIO) -> list[Any]:
    """The last processors of a format. Colour only where a person reads a terminal."""
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    if fmt == "console":
        return [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    if fmt == "ecs":
        return [_to_ecs, ecs_logging.StructlogFormatter(ensure_ascii=False)]
    if fmt == "json":
        return [_json_line]
    raise ValueError("log.format must be one of %s, got %r" % (", ".join(FORMATS), fmt))


def configure(level: str = "info", fmt: str = "auto", service: str | None = None) -> None:
    """Sets up structlog and standard-library logging for this process, onto stderr.

    `fmt` is one of FORMATS. Every line carries `logger`, `service` (default: from the
    command line, `alicom-receipts-worker`), `host` and `pid`; under "ecs" they are
    `log.logger`, `service.name`, `host.hostname`, `process.pid`, the message is `message`
    and our own fields are under `alicom.`.
    """
    global _fork_hook  # noqa: PLW0603 - registered once per process
    _read_pid()  # a process forked before this call has its own
    if not _fork_hook:
        os.register_at_fork(after_in_child=_read_pid)
        _fork_hook = True
    stream = sys.stderr
    renderer = _renderer(fmt, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _Stamp(service or default_service(sys.argv)),
    ]
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, _exc_info, *renderer],
        wrapper_class=_bound_logger_class(numeric),
        logger_factory=_factory(_new_writer(stream)),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        # format_exc_info: a stdlib record's exc_info (aiohttp's, the SDKs') becomes the
        # traceback text; without it the JSON line would show `<traceback object at 0x..>`.
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, *renderer],
        foreign_pre_chain=shared,
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


def _bound_logger_class(level: int) -> type[Any]:
    """structlog's filtering bound logger for `level`, its `info` in one frame.

    A `receipt_settled` line per receipt goes through `info`; structlog's own passes the
    keywords on twice more (`_proxy_to_logger`, then `_process_event`, which copies the
    context and updates it from them), a fifth of a line's instructions. Here a call
    without a bound context or %-arguments (every call of the daemon) hands its keyword
    dict (this call's own) to the processors as the event dict: the same keys in the same
    order (the keywords, then `event`), the same processors, DropEvent and return values
    as `_process_event`. Anything else is structlog's own `info`.
    """
    base: Any = structlog.make_filtering_bound_logger(level)
    if level > logging.INFO:
        return cast(type[Any], base)

    class Bound(base):  # type: ignore[misc]  # a class structlog makes
        def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
            if args or self._context:
                return super().info(event, *args, **kw)
            kw["event"] = event
            logger = self._logger
            out: Any = kw
            try:
                for processor in self._processors:
                    out = processor(logger, "info", out)
            except structlog.DropEvent:
                return None
            if isinstance(out, (str, bytes, bytearray)):
                return logger.info(out)
            if isinstance(out, tuple):
                return logger.info(*out[0], **out[1])
            if isinstance(out, dict):
                return logger.info(**out)
            raise ValueError("the last processor returned %s, not a str, bytes, tuple or "
                             "dict" % type(out).__name__)

    return Bound


_WRITERS: list[BufferedLineLogger] = []  # one per configure() call, the last one in use


def _new_writer(stream: TextIO) -> BufferedLineLogger:
    _WRITERS.append(BufferedLineLogger(stream))
    return _WRITERS[-1]


def flush(timeout_s: float = 1.0) -> None:
    """Writes every buffered line now (before os._exit, which skips atexit); waits at most
    `timeout_s` for a writer that holds the stream."""
    for writer in _WRITERS:
        writer.flush(timeout_s)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or gone: nothing to do
            stream.flush()


_ROOT_NAME: Final = "alicom_receipts"


class _Named:
    """What a structlog logger writes through: its name, and the one shared buffered writer."""

    def __init__(self, name: str, writer: BufferedLineLogger) -> None:
        self.name = name
        w = writer
        self.msg = self.debug = self.info = w.buffered
        self.warning = self.warn = self.error = self.err = w.now
        self.critical = self.exception = self.fatal = self.failure = w.now


def _factory(writer: BufferedLineLogger) -> Callable[..., _Named]:
    """structlog's logger_factory: `get_logger(name)` gets a `_Named` over the one writer."""
    named: dict[str, _Named] = {}

    def factory(*args: Any) -> _Named:
        name = str(args[0]) if args and args[0] else _ROOT_NAME
        found = named.get(name)
        if found is None:
            found = named.setdefault(name, _Named(name, writer))
        return found
    return factory
