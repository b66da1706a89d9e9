"""The systemd units: `systemd/verify` (systemd-analyze verify + security rating) and
`systemd/install` into a staging directory."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.errors import EXIT_CONFIG, EXIT_UNAVAILABLE
from consumer.settings.push import PushSettings
from consumer.sources.push.guard import FD_RESERVE

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
CONFIG = "/etc/alicom-receipts/alicom-receipts.toml"
ENTRY = "/opt/alicom-receipts/venv/bin/alicom-receipts"
# The long-running services `systemd/verify` rates: unit file -> the unit it rates.
RATED = {"alicom-receipts@.service": "alicom-receipts@SmsReport-1.service",
         "alicom-receipts-push.service": "alicom-receipts-push.service",
         "alicom-receipts-push-worker@.service": "alicom-receipts-push-worker@1.service"}
# The push units: unit file -> (sub-command, the least TimeoutStopSec a graceful stop needs).
PUSH_UNITS = {
    # aiohttp's run_app: 5 s shutdown_timeout for requests in progress, then the cleanup.
    "alicom-receipts-push.service": ("push-server", 5),
    # worker.shutdown_budget_s (20 s by default) for the batches in progress, then the close.
    "alicom-receipts-push-worker@.service": ("push-worker", 20),
}

pytestmark = pytest.mark.slow


def _have_systemd_analyze() -> bool:
    """systemd-analyze, installing Debian's systemd package as root when it is missing."""
    if shutil.which("systemd-analyze"):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"],
                       capture_output=True, check=False)
    return shutil.which("systemd-analyze") is not None


@pytest.fixture(scope="module")
def analyze() -> None:
    if not _have_systemd_analyze():
        pytest.skip("systemd-analyze is missing and could not be installed (not root, no apt)")


def _verify(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(directory / "verify")], capture_output=True, text=True,
                          timeout=120, check=False)


def test_units_verify_and_rate_ok_or_better(analyze: None) -> None:
    done = _verify(SYSTEMD)
    assert done.returncode == 0, done.stdout + done.stderr
    verified = next(line for line in done.stdout.splitlines()
                    if line.startswith("verify: systemd-analyze verify "))
    for name in ("alicom-receipts-push.service", "alicom-receipts-push-worker@1.service"):
        assert name in verified.split(), verified
    ratings = {line.split()[-4].rstrip(":"): line for line in done.stdout.splitlines()
               if "Overall exposure" in line}
    assert set(ratings) == set(RATED.values()), done.stdout
    for rating in ratings.values():
        assert rating.split()[-2] in ("SAFE", "OK"), rating


def _copy_units(tmp_path: Path) -> Path:
    copy = tmp_path / "systemd"
    shutil.copytree(SYSTEMD, copy)
    return copy


@pytest.mark.parametrize(("name", "good", "bad"), [
    ("alicom-receipts@.service", "Type=notify", "Type=notifyy"),
    ("alicom-receipts-push.service", "Type=exec", "Type=execc"),
    ("alicom-receipts-push-worker@.service", "Type=exec", "Type=execc"),
])
def test_verify_fails_on_a_broken_unit(analyze: None, tmp_path: Path, name: str, good: str,
                                       bad: str) -> None:
    copy = _copy_units(tmp_path)
    unit = copy / name
    unit.write_text(unit.read_text().replace(good, bad))
    done = _verify(copy)
    assert done.returncode != 0
    assert bad.removeprefix("Type=") in done.stderr


@pytest.mark.parametrize("name", sorted(RATED))
def test_verify_fails_when_the_hardening_is_gone(analyze: None, tmp_path: Path,
                                                 name: str) -> None:
    copy = _copy_units(tmp_path)
    unit = copy / name
    text = unit.read_text()
    head, _, tail = text.partition("# Hardening")
    unit.write_text(head + "[Install]" + tail.partition("[Install]")[2])
    done = _verify(copy)
    assert done.returncode != 0
    assert "%s must rate OK or better" % RATED[name] in done.stderr


def test_unit_contract() -> None:
    text = (SYSTEMD / "alicom-receipts@.service").read_text()
    lines = set(text.splitlines())
    for expected in ("Type=notify", "NotifyAccess=main", "Restart=always",
                     "PartOf=alicom-receipts.target", "WantedBy=alicom-receipts.target",
                     "LoadCredential=access_key_id:/etc/alicom-receipts/credentials/access_key_id",
                     "LoadCredential=access_key_secret:"
                     "/etc/alicom-receipts/credentials/access_key_secret",
                     "# EnvironmentFile=/etc/alicom-receipts/credentials.env"):
        assert expected in lines, expected
    stop = next(x for x in lines if x.startswith("TimeoutStopSec="))
    # Above the default drain budget (worker.shutdown_budget_s = 20 s).
    assert int(stop.removeprefix("TimeoutStopSec=").removesuffix("s")) > 20


@pytest.mark.parametrize("name", sorted(RATED))
def test_a_configuration_error_is_not_restarted(name: str) -> None:
    lines = _settings((SYSTEMD / name).read_text())
    assert "Restart=always" in lines
    assert "RestartPreventExitStatus=%d" % EXIT_CONFIG in lines
    assert EXIT_UNAVAILABLE != EXIT_CONFIG  # a temporary start-up failure is restarted


def _settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _hardening(text: str) -> list[str]:
    block = text.partition("# Hardening")[2].partition("[Install]")[0]
    return _settings(block.partition("\n")[2])  # without the rest of the comment line


@pytest.mark.parametrize("name", sorted(PUSH_UNITS))
def test_push_unit_contract(name: str) -> None:
    command, least_stop_s = PUSH_UNITS[name]
    text = (SYSTEMD / name).read_text()
    lines = _settings(text)
    exec_start = [x for x in lines if x.startswith("ExecStart=")]
    assert len(exec_start) == 1, exec_start
    assert shlex.split(exec_start[0].removeprefix("ExecStart=")) == [
        ENTRY, command, "--config", CONFIG]
    for expected in ("Type=exec", "Restart=always", "User=alicom-receipts",
                     "Group=alicom-receipts", "PartOf=alicom-receipts.target",
                     "WantedBy=alicom-receipts.target", "KillMode=mixed"):
        assert expected in lines, expected
    # The commands do not speak sd_notify, and neither reads the AccessKey.
    for absent in ("Type=notify", "NotifyAccess=", "WatchdogSec=", "LoadCredential=",
                   "EnvironmentFile="):
        assert not [x for x in lines if x.startswith(absent)], absent
    stop = next(x for x in lines if x.startswith("TimeoutStopSec="))
    assert int(stop.removeprefix("TimeoutStopSec=").removesuffix("s")) > least_stop_s
    # The same hardening as the MNS worker, line for line.
    worker = (SYSTEMD / "alicom-receipts@.service").read_text()
    assert _hardening(text) == _hardening(worker)
    assert "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" in _hardening(text)


def test_the_push_unit_has_room_for_its_connection_cap() -> None:
    lines = _settings((SYSTEMD / "alicom-receipts-push.service").read_text())
    [limit] = [x for x in lines if x.startswith("LimitNOFILE=")]
    room = int(limit.removeprefix("LimitNOFILE=")) - FD_RESERVE
    assert room >= PushSettings().max_connections


@pytest.mark.parametrize("command", sorted(c for c, _ in PUSH_UNITS.values()))
def test_push_commands_take_the_units_arguments(command: str) -> None:
    done = subprocess.run([sys.executable, "-m", "consumer", command, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "--config FILE" in done.stdout


def test_install_into_a_staging_directory(tmp_path: Path) -> None:
    # A wheel built from a copy of the checkout (the checkout stays clean); installed
    # without dependencies or an index, so the test needs no network.
    source = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(source)],
                   capture_output=True, check=True)
    wheel = next(wheels.glob("alicom_receipts-*.whl"))
    dest = tmp_path / "root"
    env = {**os.environ, "DESTDIR": str(dest), "PACKAGE": str(wheel), "PREFIX": "/srv/alicom",
           "PYTHON": shutil.which("python3") or sys.executable,
           "PIP_INSTALL_ARGS": "--no-deps --no-index"}
    done = subprocess.run(["bash", str(SYSTEMD / "install")], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    venv = dest / "srv/alicom/venv"
    script = venv / "bin/alicom-receipts"
    assert os.access(script, os.X_OK)
    assert "consumer.cli" in script.read_text()
    units = dest / "etc/systemd/system"
    assert {p.name for p in units.iterdir()} >= {"alicom-receipts@.service",
                                                 "alicom-receipts.target", *PUSH_UNITS}
    unit = (units / "alicom-receipts@.service").read_text()
    assert "exec /srv/alicom/venv/bin/alicom-receipts worker" in unit  # PREFIX written in
    assert "/opt/alicom-receipts" not in unit
    for name, (command, _stop) in PUSH_UNITS.items():
        unit = (units / name).read_text()
        assert "ExecStart=/srv/alicom/venv/bin/alicom-receipts %s --config %s\n" % (
            command, CONFIG) in unit
        assert "/opt/alicom-receipts" not in unit
        assert stat.S_IMODE((units / name).stat().st_mode) == 0o644
    config = dest / "etc/alicom-receipts/alicom-receipts.toml"
    assert config.read_text() == (REPO / "config/alicom-receipts.example.toml").read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    creds = dest / "etc/alicom-receipts/credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    assert "access_key_secret" in (creds / "README").read_text()
    assert "systemctl enable --now alicom-receipts@SmsReport-{1..4}" in done.stdout
    assert ("systemctl enable --now alicom-receipts-push alicom-receipts-push-worker@{1..2}"
            in done.stdout)

    # Again: an edited config is kept.
    config.write_text("# mine\n")
    again = subprocess.run(["bash", str(SYSTEMD / "install")], env=env, capture_output=True,
                           text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "# mine\n"
