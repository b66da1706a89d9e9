"""Dedup key names hash the business identity (keyed by an optional secret); phones are masked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.keys import (
    ENV_SECRET,
    SECRET_FILE,
    business_key,
    dedup_key,
    key_names,
    key_secret,
    log_fields,
    make_key_function,
    mask_phone,
)
from consumer.receipts import ReceiptMeta, SmsReport, SmsUp
from consumer.settings import load_settings

META = ReceiptMeta("mns", "Alicom-Queue-1-SmsReport", "MSG-1", 1)
PHONE = "13800000001"


def report(phone: str = PHONE, biz_id: str = "932702304080415357^0") -> SmsReport:
    return SmsReport(raw={}, meta=META, phone_number=phone, biz_id=biz_id, success=True)


def uplink(phone: str = PHONE) -> SmsUp:
    return SmsUp(raw={}, meta=META, phone_number=phone, content="TD",
                 send_time="2017-09-01 00:00:00", dest_code="1234", sequence_id="1")


def test_a_key_is_the_class_and_a_hash_with_nothing_of_the_phone_or_biz_id_in_it() -> None:
    for receipt in (report(), uplink()):
        key = dedup_key(receipt)
        cls, digest = key.split(":")
        assert cls == type(receipt).__name__
        assert re.fullmatch(r"[0-9a-f]{32}", digest)
        assert PHONE not in key
    assert "932702304080415357" not in dedup_key(report())


def test_the_key_follows_the_business_identity_not_the_delivery() -> None:
    other_delivery = SmsReport(raw={"x": 1}, meta=ReceiptMeta("push"), phone_number=PHONE,
                               biz_id="932702304080415357^0", success=False)
    assert dedup_key(report()) == dedup_key(other_delivery)
    assert dedup_key(report()) != dedup_key(report(phone="13800000002"))
    assert dedup_key(report()) != dedup_key(report(biz_id="932702304080415358^0"))


def test_a_secret_changes_every_key_and_the_same_secret_gives_the_same_key() -> None:
    plain, keyed = make_key_function(), make_key_function(secret=b"s3cret")
    again, other = make_key_function(secret=b"s3cret"), make_key_function(secret=b"other")
    assert plain(report()) == dedup_key(report())
    assert keyed(report()) != plain(report())
    assert keyed(report()) == again(report())
    assert keyed(report()) != other(report())
    assert keyed.keyed and not plain.keyed


def test_a_secret_longer_than_blake2b_takes_still_keys_the_hash() -> None:
    long_a, long_b = make_key_function(secret=b"a" * 100), make_key_function(secret=b"b" * 100)
    assert long_a(report()) != long_b(report())


def test_legacy_is_the_old_key_name_in_clear_for_the_upgrade_fallback() -> None:
    key_of = make_key_function({"SmsReport": ["biz_id", "phone_number"]}, b"s")
    assert key_of.legacy(report()) == business_key(report())
    assert key_of.legacy(report()) == "SmsReport:932702304080415357^0:13800000001"


def test_the_secret_comes_from_the_credentials_directory_before_the_environment(
        tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_bytes(b"from-file\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), ENV_SECRET: "from-env"}
    assert key_secret(env) == b"from-file"
    assert key_secret({ENV_SECRET: " from-env "}) == b"from-env"
    assert key_secret({"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) == b""
    assert key_secret({}) == b""


def test_an_unreadable_secret_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).mkdir()  # a directory where the file should be
    with pytest.raises(ConfigError, match="dedup key secret"):
        key_secret({"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_settings_carry_the_secret_into_the_key_function_without_showing_it(
        tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[alicom]\naccount_id = "1234567890123456"\n', encoding="utf-8")
    keyed = load_settings(str(config), {ENV_SECRET: "s3cret"})
    plain = load_settings(str(config), {})
    assert keyed.key_function()(report()) == make_key_function(secret=b"s3cret")(report())
    assert plain.key_function()(report()) == dedup_key(report())
    assert "s3cret" not in repr(keyed) and "s3cret" not in str(keyed.describe())


@pytest.mark.parametrize(("number", "masked"), [
    ("13800000001", "138****0001"),
    ("+8613800000001", "+86138****0001"),
    ("12345678", "******78"),
    ("1234", "****"),
    ("", ""),
])
def test_a_masked_phone_keeps_what_a_person_recognises_and_nothing_to_dial(
        number: str, masked: str) -> None:
    assert mask_phone(number) == masked


def test_log_fields_name_the_receipt_with_its_phone_masked() -> None:
    assert log_fields(report()) == {"biz_id": "932702304080415357^0", "phone": "138****0001"}
    assert log_fields(uplink()) == {"phone": "138****0001"}
    assert log_fields(None) == {}
    assert PHONE not in str(log_fields(report())) + str(log_fields(uplink()))


def test_key_names_give_the_key_and_a_key_functions_legacy_name_only() -> None:
    key_of = make_key_function(secret=b"s")
    assert key_names(key_of, report()) == (key_of(report()), business_key(report()))
    assert key_names(key_of, uplink()) == (key_of(uplink()), business_key(uplink()))
    assert key_names(lambda r: "x", report()) == ("x", None)
