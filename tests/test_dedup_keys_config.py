"""`[dedup_keys]`: the business identity of a receipt is configurable, and checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.receipts import ReceiptMeta, SmsReport
from consumer.settings import InvalidSettings, Settings, load_settings

BASE = '[alicom]\naccount_id = "1234567890123456"\n'
META = ReceiptMeta("mns", "q", "m-1", 1)


def settings_from(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "c.toml"
    path.write_text(BASE + text, encoding="utf-8")
    return load_settings(str(path), {})


def report(phone: str, out_id: str = "o-1") -> SmsReport:
    return SmsReport(raw={}, meta=META, phone_number=phone, send_time="2026-01-01 00:00:00",
                     report_time="2026-01-01 00:00:05", success=True, err_code="DELIVERED",
                     err_msg="", sms_size=1, biz_id="biz-1", out_id=out_id)


def test_by_default_an_sms_report_is_identified_by_biz_id_and_phone(tmp_path: Path) -> None:
    key_of = settings_from(tmp_path, "").key_function()
    assert key_of(report("1380000")) != key_of(report("1390000"))
    assert key_of(report("1380000", "a")) == key_of(report("1380000", "b"))


def test_configured_fields_replace_the_default_identity(tmp_path: Path) -> None:
    key_of = settings_from(tmp_path, '[dedup_keys]\nSmsReport = ["biz_id", "out_id"]\n'
                           ).key_function()
    assert key_of(report("1380000", "a")) == key_of(report("1390000", "a"))
    assert key_of(report("1380000", "a")) != key_of(report("1380000", "b"))


@pytest.mark.parametrize(("text", "expected"), [
    ('[dedup_keys]\nNoSuchReport = ["x"]\n', "unknown receipt class"),
    ('[dedup_keys]\nSmsReport = ["no_such_field"]\n', "no_such_field"),
    ('[dedup_keys]\nSmsReport = "biz_id"\n', "must be a list of field names"),
])
def test_a_bad_dedup_key_setting_is_one_clear_problem(tmp_path: Path, text: str,
                                                      expected: str) -> None:
    with pytest.raises(InvalidSettings) as info:
        settings_from(tmp_path, text)
    assert any(expected in p for p in info.value.problems), info.value.problems
