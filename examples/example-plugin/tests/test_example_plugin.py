"""The example plugin's own tests: the daemon's testing kit, in-process, nothing to start."""

from __future__ import annotations

import pytest
from alicom_example_plugin import PrintHandler, failed_deliveries

from consumer.handlers.plugins import PluginError
from consumer.keys import dedup_key
from consumer.testing import HandlerTest, every_sample, platform_duplicate, sample


def test_prints_one_line_per_receipt_and_nothing_for_a_duplicate(
        capsys: pytest.CaptureFixture[str]) -> None:
    receipts = every_sample()
    run = HandlerTest(PrintHandler, options={"prefix": ">>"}).deliver(
        [*receipts, platform_duplicate(receipts[0])])

    assert run.outcomes() == ["applied"] * len(receipts) + ["duplicate"]
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted(
        f">> {r.message_type} {dedup_key(r)} {r.meta.message_id}" for r in receipts)


def test_a_bad_stream_option_fails_to_load_in_one_line() -> None:
    with pytest.raises(PluginError, match="stream must be 'stdout' or 'stderr', got 'x'"):
        HandlerTest(PrintHandler, options={"stream": "x"})


def test_failed_deliveries_takes_both_report_classes_and_only_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    failed_intl = sample("SmsReport-intl", Status="2", ErrorCode="UNDELIV")
    run = HandlerTest(failed_deliveries).deliver(
        [sample("SmsReport"), sample("SmsReport-failed"), failed_intl, sample("SmsUp")])

    assert [(s.outcome, s.reason) for s in run.settled] == [
        ("applied", ""), ("applied", ""), ("applied", ""),
        ("dead_letter", "permanent_failure: : no_handler")]
    assert sorted(capsys.readouterr().err.splitlines()) == [  # handlers run in parallel
        "FAILED IntlSmsReport UNDELIV", "FAILED SmsReport MK:0001"]
