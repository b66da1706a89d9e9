"""Handlers for the check tests, referenced from a config by `module:attr`."""

from __future__ import annotations

from consumer import SmsReport


def on_report(receipt: SmsReport) -> None:
    """Typed SmsReport: a config that also routes IntlSmsReport to it must be refused."""
