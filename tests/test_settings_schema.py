"""The one settings schema: every section in it, every number with a documented range that
refuses what would break a running worker, and the example configuration documenting it all.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from dataclasses import fields
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from consumer.reports import delivery_stats, tasks
from consumer.settings import (
    SECTIONS,
    InvalidSettings,
    Range,
    TrackingSettings,
    env_var,
    load_settings,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "alicom-receipts.example.toml"
BASE = '[alicom]\npreset = "sandbox"\n'


def _is_number(tp: object) -> bool:
    args = typing.get_args(tp) or (tp,)
    return any(a in (int, float) for a in args)


def numeric_settings() -> list[tuple[str, str, Range]]:
    out = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if _is_number(hints[f.name]):
                rule = f.metadata.get("range")
                assert isinstance(rule, Range), f"{section}.{f.name} has no documented range"
                out.append((section, f.name, rule))
    return out


NUMERIC = numeric_settings()
HOSTILE = [math.inf, -math.inf, math.nan, 1e300, 0, -1, -1e300]


def test_the_schema_covers_push_reconcile_tracking_run_and_metrics() -> None:
    assert {"push", "reconcile", "tracking", "run", "metrics", "service", "dedup",
            "deadletter"} <= set(SECTIONS)
    assert len(NUMERIC) >= 55


def _toml(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _admitted(rule: Range, value: float, is_int: bool) -> bool:
    return rule.admits(value) and (not is_int or float(value).is_integer())


@pytest.mark.parametrize(("section", "key", "rule"), NUMERIC,
                         ids=[f"{s}.{k}" for s, k, _ in NUMERIC])
def test_every_number_refuses_inf_nan_huge_zero_and_negatives_in_one_line(
        tmp_path: Path, section: str, key: str, rule: Range) -> None:
    hint = typing.get_type_hints(SECTIONS[section])[key]
    is_int = int in (typing.get_args(hint) or (hint,))
    config = tmp_path / "c.toml"
    for value in HOSTILE:
        # TOML has only 64-bit integers and floats: an int setting gets the float as written.
        literal = _toml(value) if not (is_int and float(value).is_integer()
                                       and abs(value) < 2**63) else str(int(value))
        config.write_text(f"{BASE}[{section}]\n{key} = {literal}\n", encoding="utf-8")
        var = env_var(section, key)
        for env in ({}, {var: literal}):
            path = str(config) if not env else _without(tmp_path, section)
            if _admitted(rule, value, is_int):
                load_settings(path, env)
                continue
            with pytest.raises(InvalidSettings) as info:
                load_settings(path, env)
            problems = info.value.problems
            assert len(problems) == 1, (value, problems)
            assert "\n" not in problems[0]
            named = f"{var}: {section}.{key} " if env else f"{section}.{key} "
            assert problems[0].startswith(named), (value, problems)


def _without(tmp_path: Path, section: str) -> str:
    base = tmp_path / "base.toml"
    base.write_text(BASE, encoding="utf-8")
    return str(base)


def test_the_defaults_lie_inside_their_ranges() -> None:
    for section, cls in SECTIONS.items():
        cls()  # validates every field; raises InvalidSettings if a default were out of range
        assert section


def test_wait_seconds_is_at_least_one(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(BASE + "[poll]\nwait_seconds = 0\n", encoding="utf-8")
    with pytest.raises(InvalidSettings, match=r"poll.wait_seconds must be 1-30 \(0 would spin"):
        load_settings(str(config), {})


def test_check_level_errors_in_push_reconcile_and_tracking_are_all_reported(
        tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(BASE + '[push]\nsecret = "short"\n[reconcile]\nqps = 0\n'
                             "[tracking]\nttl_s = 60\n", encoding="utf-8")
    with pytest.raises(InvalidSettings) as info:
        load_settings(str(config), {})
    assert [p.split(" ")[0] for p in info.value.problems] == [
        "push.secret", "reconcile.qps", "tracking.ttl_s"]


def test_an_environment_override_out_of_range_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(InvalidSettings) as info:
        load_settings(None, {"ALICOM_RECEIPTS_PUSH_HANDOFF_TIMEOUT_S": "2"})
    assert info.value.problems == (
        "ALICOM_RECEIPTS_PUSH_HANDOFF_TIMEOUT_S: push.handoff_timeout_s must be > 0 and < 0.7 "
        "(the platform waits 700 ms), got 2.0",)


# -- the example configuration documents all of it --------------------------------------------


def _blocks(text: str) -> dict[str, str]:
    """Section name -> its text (comments included) up to the next uncommented table."""
    out: dict[str, str] = {}
    parts = re.split(r"(?m)^\[([a-z_]+)\]\s*$", text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        out[name] = body.split("\n[[handlers]]")[0]
    return out


def test_the_example_documents_every_setting_with_its_range() -> None:
    blocks = _blocks(EXAMPLE.read_text(encoding="utf-8"))
    for section, cls in SECTIONS.items():
        assert section in blocks, f"[{section}] is missing from the example"
        for f in fields(cls):
            line = re.search(rf"(?m)^#? ?{f.name} = .*$", blocks[section])
            assert line, f"{section}.{f.name} is missing from the example's [{section}]"
            rule = f.metadata.get("range")
            if isinstance(rule, Range):
                assert rule.text() in line.group(0), \
                    f"{section}.{f.name}: the example does not state its range {rule.text()}"


def test_the_example_documents_every_option_of_every_built_in_handler() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    ours = [ep for ep in entry_points(group="alicom_receipts.handlers")
            if ep.value.startswith("consumer.")]
    assert len(ours) >= 6
    for ep in ours:
        assert f'use = "{ep.name}"' in text, f"handler {ep.name} is missing from the example"
        for name in inspect.signature(ep.load()).parameters:
            assert re.search(rf"\b{name} =", text), f"{ep.name}'s option {name} is undocumented"


def test_the_example_loads_once_the_account_id_is_set() -> None:
    settings = load_settings(str(EXAMPLE), {"ALICOM_RECEIPTS_ALICOM_ACCOUNT_ID": "1"})
    assert settings.push.listen == "127.0.0.1:8080"
    assert settings.tracking.key_prefix == "alicom:track"


def test_the_tracking_defaults_are_the_stores_own_defaults() -> None:
    assert TrackingSettings().tasks_prefix == tasks.DEFAULT_PREFIX
    assert TrackingSettings().stats_prefix == delivery_stats.DEFAULT_PREFIX


@pytest.mark.parametrize("key", ["deadline_s", "max_attempts", "retry_base_s", "retry_max_s"])
def test_a_handlers_own_numbers_refuse_inf_nan_huge_zero_and_negatives(
        tmp_path: Path, key: str) -> None:
    config = tmp_path / "c.toml"
    for literal in ("inf", "-inf", "nan", "1e300", "0", "-1"):
        config.write_text(f'{BASE}[[handlers]]\nuse = "log"\n{key} = {literal}\n',
                          encoding="utf-8")
        with pytest.raises(InvalidSettings) as info:
            load_settings(str(config), {})
        assert len(info.value.problems) == 1, (literal, info.value.problems)
        assert info.value.problems[0].startswith(f"handlers[0].{key} must be"), literal
