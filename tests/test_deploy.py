"""The container and Kubernetes files: every configuration they carry loads, and every
command they run is one of the CLI's (hadolint, kubectl kustomize and kubernetes-validate
run in `make lint`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from consumer.cli import COMMANDS
from consumer.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


def _configmap_toml() -> str:
    text = (DEPLOY / "kubernetes" / "configmap.yaml").read_text(encoding="utf-8")
    body = text.split("alicom-receipts.toml: |\n", 1)[1]
    return "\n".join(line.removeprefix("    ") for line in body.splitlines())


@pytest.mark.parametrize("source", ["configmap", "compose"])
def test_the_shipped_configurations_load(source: str, tmp_path: Path) -> None:
    if source == "configmap":
        path = tmp_path / "cm.toml"
        path.write_text(_configmap_toml(), encoding="utf-8")
    else:
        path = DEPLOY / "compose" / "worker.toml"
    settings = load_settings(str(path), {})
    assert settings.metrics.address == ":9464"  # the port the probes and the Service use
    # The drain fits in the 30 s grace period (terminationGracePeriodSeconds,
    # stop_grace_period) with room for the exit.
    assert settings.worker.shutdown_budget_s <= 25


def _commands() -> list[tuple[str, str]]:
    """(file, sub-command) of every process the image is started with."""
    found = []
    cmd = re.search(r'^CMD (\[.*\])$', (REPO / "Dockerfile").read_text(), re.M)
    assert cmd is not None
    found.append(("Dockerfile", json.loads(cmd.group(1))[0]))
    for path in [*sorted((DEPLOY / "kubernetes").glob("*.yaml")), DEPLOY / "compose.yaml"]:
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r'\s*(?:args|command): (\[.*)', line)
            if match and "redis" not in match.group(1):
                found.append((path.name, match.group(1).split('"')[1]))
    return found


def test_every_container_runs_a_command_the_cli_has() -> None:
    commands = _commands()
    assert len(commands) >= 8, commands
    assert {name for _, name in commands} >= {"worker", "push-server", "push-worker",
                                              "reconcile", "sandbox"}
    assert [c for c in commands if c[1] not in COMMANDS] == []


def test_the_image_runs_as_a_non_root_user_with_the_config_path_set() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert "ALICOM_RECEIPTS_CONFIG=/etc/alicom-receipts/alicom-receipts.toml" in dockerfile
    assert '"alicom-receipts"' in dockerfile.split("ENTRYPOINT", 1)[1].splitlines()[0]
