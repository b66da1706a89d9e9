"""Handlers for the routing tests, referenced from a config by `module:attr`."""

from __future__ import annotations

import json
import os

from consumer import SmsReport

#: Where `on_report` appends what it was given (the test sets it in the worker's environment).
RECORD_ENV = "ALICOM_TEST_TYPED_RECORDS"


def on_report(receipt: SmsReport) -> None:
    """Typed SmsReport, as in the README: it reads `phone_number`, which an IntlSmsReport
    lacks; a config that also routes IntlSmsReport to it must be refused."""
    line = json.dumps({"class": type(receipt).__name__, "phone": receipt.phone_number[-4:]})
    path = os.environ.get(RECORD_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
