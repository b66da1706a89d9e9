"""Metrics settings that cannot work are a ConfigError: a bad address or err_code cap, a directory
that cannot be created, and one that is not this user's own, private and symlink-free
(prometheus_client would otherwise write through whatever another user planted there)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from alicom_sandbox.redis_server import free_port
from consumer.errors import ConfigError
from consumer.pipeline.stats import Stats
from consumer.runtime.metrics import MetricsSettings, multiproc_dir, setup_metrics

Q = "SmsReport"


def start_metrics(directory: str | None) -> None:
    """setup_metrics as a worker calls it; closes the handle when it started."""
    settings = MetricsSettings(address="127.0.0.1:%d" % free_port(), multiproc_dir=directory)
    handle = setup_metrics(settings, Q, Stats(), interval_s=3600)
    assert handle is not None
    handle.close()


def test_a_symlink_planted_in_the_directory_is_refused_and_not_followed(
        tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir(mode=0o700)
    target = tmp_path / "root-only"
    target.write_bytes(b"")
    target.chmod(0o600)
    (directory / ("counter_%d.db" % os.getpid())).symlink_to(target)
    with pytest.raises(ConfigError, match="holds a symlink counter_%d.db" % os.getpid()):
        start_metrics(str(directory))
    assert target.stat().st_size == 0


def test_a_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "metrics").symlink_to(real)
    with pytest.raises(ConfigError, match="is a symlink"):
        start_metrics(str(tmp_path / "metrics"))
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_directory_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(ConfigError, match=r"writable by others .* chmod go-w"):
        start_metrics(str(directory))
    assert list(directory.iterdir()) == []


def test_the_temp_fallback_created_by_another_user_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for var in ("PROMETHEUS_MULTIPROC_DIR", "RUNTIME_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    fallback = multiproc_dir(MetricsSettings(address="127.0.0.1:1"), os.environ)
    assert fallback == str(tmp_path / ("alicom-receipts-metrics-%d" % os.getuid()))
    if os.geteuid() == 0:
        os.mkdir(fallback, 0o755)
        os.chown(fallback, 65534, 65534)  # as another user would have made it
    else:
        fallback = "/usr"  # a directory of root's, which this user cannot own
        monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(ConfigError, match=r"belongs to uid .* not to this user"):
        start_metrics(fallback if os.geteuid() != 0 else None)


def test_a_fresh_fallback_is_made_private_and_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for var in ("PROMETHEUS_MULTIPROC_DIR", "RUNTIME_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    start_metrics(None)
    [made] = tmp_path.iterdir()
    assert made.name == "alicom-receipts-metrics-%d" % os.getuid()
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert any(p.suffix == ".db" for p in made.iterdir())  # the values went there


@pytest.mark.parametrize("fields", [
    {"address": "no-port"},
    {"address": "127.0.0.1:99999"},
    {"address": "127.0.0.1:9464", "max_err_codes": 0},
])
def test_bad_settings_are_a_config_error(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"^metrics\.(address|max_err_codes) must be"):
        MetricsSettings(**fields)


def test_an_unusable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = MetricsSettings(address="127.0.0.1:%d" % free_port(),
                               multiproc_dir=str(blocker / "metrics"))
    with pytest.raises(ConfigError, match="cannot be created"):
        setup_metrics(settings, Q, Stats())
