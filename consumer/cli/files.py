"""`alicom-receipts files [--copy DIR]`: where the shipped deployment files are.

The wheel installs the systemd units, their installer (`systemd/install`) and the example
configuration as data files under `<prefix>/share/alicom-receipts/` (the same layout as the
repository: `systemd/`, `config/`, README.md). Printed without options: that directory, for
example `bash "$(alicom-receipts files)/systemd/install"`; `--copy DIR` copies them there.
From a source checkout (an editable install) the checkout itself is that directory.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from consumer.cli.runner import CommandParser
from consumer.errors import ConfigError

DIST = "alicom-receipts"
MARKER = Path("config") / "alicom-receipts.example.toml"
SHIPPED = ("systemd", "config", "README.md", "LICENSE", "CHANGELOG.md")


def shipped_dir() -> Path:
    """The directory holding systemd/ and config/: the installed data files, else the
    source checkout this module runs from. ConfigError when neither is there."""
    try:
        files = distribution(DIST).files or []
    except PackageNotFoundError:
        files = []
    suffix = ("share", "alicom-receipts", *MARKER.parts)
    for entry in files:
        if tuple(entry.parts[-len(suffix):]) == suffix:
            located = Path(str(entry.locate())).resolve()
            if located.is_file():
                return located.parents[1]
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / MARKER).is_file() and (checkout / "systemd").is_dir():
        return checkout
    raise ConfigError("the deployment files are not installed: reinstall %s from its wheel "
                      "or sdist" % DIST)


def main(argv: Sequence[str]) -> int:
    parser = CommandParser(
        prog="alicom-receipts files",
        description="Print the directory of the shipped systemd units, their installer and the "
                    "example configuration; or copy them.")
    parser.add_argument("--copy", metavar="DIR", default=None,
                        help="copy systemd/, config/ and the README into DIR (created if "
                             "missing; existing files are left alone)")
    args = parser.parse_args(list(argv))
    source = shipped_dir()
    if args.copy is None:
        print(source)
        return 0
    target = Path(args.copy)
    try:
        _copy(source, target)
    except OSError as exc:  # shutil.Error too: a directory that cannot be written, ...
        raise ConfigError("--copy %s: %s" % (target, getattr(exc, "strerror", None)
                                              or type(exc).__name__)) from None
    print("copied %s to %s" % (", ".join(SHIPPED), target), file=sys.stdout)
    return 0


def _copy(source: Path, target: Path) -> None:
    for name in SHIPPED:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, target / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"),
                            copy_function=_copy_new)
        elif path.is_file():
            target.mkdir(parents=True, exist_ok=True)
            _copy_new(str(path), str(target / name))


def _copy_new(src: str, dst: str) -> str:
    """copy2, except over an existing file (an edited config must survive)."""
    if Path(dst).exists():
        return dst
    return str(shutil.copy2(src, dst))
