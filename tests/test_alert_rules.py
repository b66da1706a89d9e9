"""The shipped alert rules load in Prometheus' own checker, every alert has a `promtool test
rules` unit test that passes, and a runbook line in the README."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
UNIT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make test` installs it (.ci/ensure-prometheus)"
    return found


def alerts() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules_clean() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: %d rules found" % len(alerts()) in done.stdout


def test_every_alert_has_a_passing_promtool_unit_test() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))["tests"]
    firing = {case["alertname"] for test in cases for case in test["alert_rule_test"]
              if case["exp_alerts"]}
    assert {str(a["alert"]) for a in alerts()} <= firing, "an alert without a firing test"
    done = subprocess.run([promtool(), "test", "rules", UNIT_TESTS.name], cwd=UNIT_TESTS.parent,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_unit_tests_can_fail(tmp_path: Path) -> None:
    """A changed threshold breaks its test: the tests pin the rules, not just run them."""
    broken = RULES.read_text(encoding="utf-8").replace(") > 300", ") > 3000")
    assert broken != RULES.read_text(encoding="utf-8")
    (tmp_path / "alerts.yml").write_text(broken, encoding="utf-8")
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    done = subprocess.run([promtool(), "test", "rules", UNIT_TESTS.name], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "AlicomReceiptsQueueLagHigh" in done.stdout + done.stderr


@pytest.mark.parametrize("alert", [str(a["alert"]) for a in alerts()])
def test_every_alert_has_a_runbook_line_in_the_readme(alert: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    anchor = "alert-" + alert.lower()
    rule = next(a for a in alerts() if a["alert"] == alert)
    assert str(rule["annotations"]["runbook"]).endswith("#" + anchor)  # type: ignore[index]
    assert re.search(r'<a id="%s"></a>\*\*%s\*\*' % (anchor, alert), readme), alert
