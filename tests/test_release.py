"""The release as a user gets it: `pip wheel .`, then the wheel installed in a fresh virtual
environment (its dependencies from the package index or pip's cache): `--version`, the units
and the example configuration in the installed package, and `alicom-receipts demo`. And the
sdist holds the whole project."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer import __version__

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's files (tracked and new, not ignored): builds leave the
    checkout clean."""
    root = tmp_path_factory.mktemp("src")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    return root


@pytest.fixture(scope="module")
def installed(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin/ directory of a fresh venv holding only the wheel and its dependencies."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=600)
    wheel = next(out.glob("alicom_receipts-%s-py3-none-any.whl" % __version__))
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    done = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    yield env_dir / "bin"


def cli(bin_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # Run from / so that nothing of the checkout can be imported by accident.
    return subprocess.run([str(bin_dir / "alicom-receipts"), *args], cwd="/",
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_the_installed_wheel_prints_its_version(installed: Path) -> None:
    done = cli(installed, "--version")
    assert (done.returncode, done.stdout.strip()) == (0, "alicom-receipts %s" % __version__)


def test_the_units_and_the_example_config_are_installed_with_it(installed: Path,
                                                                 tmp_path: Path) -> None:
    done = cli(installed, "files")
    assert done.returncode == 0, done.stderr
    shipped = Path(done.stdout.strip())
    assert shipped.is_relative_to(installed.parent.resolve())  # in the venv, not the checkout
    for name in ("alicom-receipts@.service", "alicom-receipts-push.service",
                 "alicom-receipts-push-worker@.service", "alicom-receipts.target",
                 "alicom-receipts-reconcile.timer", "install"):
        assert (shipped / "systemd" / name).read_bytes() == (REPO / "systemd" / name).read_bytes()
    example = "config/alicom-receipts.example.toml"
    assert (shipped / example).read_text() == (REPO / example).read_text()
    copied = cli(installed, "files", "--copy", str(tmp_path / "deploy"))
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "deploy" / example).is_file()
    assert (tmp_path / "deploy" / "systemd" / "alicom-receipts@.service").is_file()


def test_the_demo_runs_from_the_installed_wheel(installed: Path) -> None:
    done = cli(installed, "demo", "--seconds", "2", timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "demo: sent " in done.stdout and "Worker exited 0" in done.stdout


def test_the_sdist_holds_the_whole_project(source: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "build", "--sdist", "-o", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=600)
    sdist = next(tmp_path.glob("alicom_receipts-%s.tar.gz" % __version__))
    with tarfile.open(sdist) as tar:
        names = {name.partition("/")[2] for name in tar.getnames()}
    for expected in ("LICENSE", "CHANGELOG.md", "README.md", "Makefile", ".ci/run",
                     "config/alicom-receipts.example.toml", "systemd/alicom-receipts@.service",
                     "systemd/install", "examples/example-plugin/pyproject.toml",
                     "tests/e2e/conftest.py", "tests/sandbox/conftest.py",
                     "tests/test_release.py", "alicom_sandbox/server.py", "bench/worker_bench.py",
                     "consumer/_version.py"):
        assert expected in names, expected
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
