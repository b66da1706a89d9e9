"""structlog set-up: JSON lines when stderr is not a terminal, readable console output on one.

Called once by the command line at start-up; nothing here runs at import. Standard-library
logging (the SDKs', tenacity's) is routed through the same renderer.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog

_SECRET_KEYS = frozenset({"access_key_secret", "security_token", "password", "secret"})


def _scrub(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Last line of defence: a field named like a secret never reaches the output."""
    for key in _SECRET_KEYS & event.keys():
        event[key] = "***"
    return event


# One encoder for every line: json.dumps with options builds a new one per call, and a line
# is written per receipt. `default=repr`: a value JSON cannot hold is shown, never fatal.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=repr)


def _json_line(event: dict[str, Any], **_options: Any) -> str:
    """structlog's JSONRenderer serializer (it passes its own `default`, which repr matches)."""
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

    def flush(self) -> None:
        with self._write_lock:
            self._write()

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


def configure(level: str = "info", fmt: str = "auto") -> None:
    """`fmt` is "json", "console" or "auto" (console on a terminal, JSON otherwise)."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer() if use_console
                     else structlog.processors.JSONRenderer(serializer=_json_line))
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _scrub,
    ]
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_factory(BufferedLineLogger(sys.stderr)),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        # format_exc_info: a stdlib record's exc_info (aiohttp's, the SDKs') becomes the
        # traceback text; without it the JSON line would show `<traceback object at 0x..>`.
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
        foreign_pre_chain=shared,
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


def _factory(logger: BufferedLineLogger) -> Callable[..., BufferedLineLogger]:
    """structlog's logger_factory: every bound logger shares the one buffered writer."""
    def factory(*_args: Any) -> BufferedLineLogger:
        return logger
    return factory
