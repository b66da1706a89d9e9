"""JSON log lines of standard-library records (aiohttp's, the SDKs') carry the traceback."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from consumer.runtime import logs


@pytest.fixture
def json_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """JSON logging configured onto a buffer standing in for stderr; undone afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    logs.configure("info", "json")
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_a_stdlib_exception_record_is_rendered_with_its_traceback(
        json_stderr: io.StringIO) -> None:
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    line = json.loads(json_stderr.getvalue().strip().splitlines()[-1])
    assert line["event"] == "Error handling request"
    assert "Traceback (most recent call last)" in line["exception"]
    assert "KeyError: 'missing'" in line["exception"]
    assert "traceback object" not in json.dumps(line)
