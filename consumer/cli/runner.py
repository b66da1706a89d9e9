"""The one command runner: every `alicom-receipts` command runs through `run_command`.

What it guarantees, for every command (the router in `consumer.cli` calls it):

- a configuration or usage error (`ConfigError`) is one line on stderr,
  "alicom-receipts <command>: <what is wrong>", and exit status 2 (`EXIT_CONFIG`);
- a temporary start-up failure (`StartupUnavailable`, or a listen address still in use) is
  one line on stderr and exit status 75 (`EXIT_UNAVAILABLE`, sysexits' EX_TEMPFAIL);
- Ctrl-C before a command installed its own signal handling is exit status 130, quietly.

Commands themselves use `CommandParser` (argparse whose usage errors are one line, exit 2),
`add_config_argument` (the one `--config` option, accepted before or
after a sub-command's action), `load` (settings from `--config` / `$ALICOM_RECEIPTS_CONFIG`
/ the embedded default, then logging set up from them), `queue_type` (`--queue` as a type
or a queue name, everywhere), `parse_since` (a `--since` window: 24h, 7d) and `port` (an
argparse type).
Anything else escaping a command is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import NoReturn

from consumer.errors import (
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    ConfigError,
    StartupUnavailable,
)
from consumer.runtime import logs
from consumer.settings import (
    CONFIG_HELP,
    QUEUE_MESSAGE_TYPES,
    Settings,
    config_path,
    did_you_mean,
    load_settings,
)

__all__ = ["EXIT_CONFIG", "EXIT_UNAVAILABLE", "CommandParser", "add_config_argument",
           "config_in_every_action", "load", "non_negative", "parse_since", "port", "positive",
           "queue_type", "run_command", "share"]

_MAX_SINCE_HOURS = 24 * 366


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Runs `body` and turns the failures a user can cause into one line and an exit status
    (see the module docstring). `prog` is "alicom-receipts <command>"."""
    try:
        return int(body() or 0)
    except ConfigError as exc:
        _say(prog, str(exc))
        return EXIT_CONFIG
    except StartupUnavailable as exc:
        _say(prog, "%s (temporary: try again later)" % exc)
        return EXIT_UNAVAILABLE
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        _say(prog, "%s: another process listens there; stop it or choose another address "
                   "or port" % _address_in_use(exc))
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130


def _say(prog: str, text: str) -> None:
    # A multi-problem configuration error is already one problem per line; nothing else
    # may span lines (a traceback-like message would hide the one that matters).
    lines = text.splitlines() or [""]
    head = " ".join(lines[0].split()) if len(lines) == 1 else lines[0]
    sys.stderr.write("%s: %s\n" % (prog, "\n".join([head, *lines[1:]])))
    sys.stderr.flush()


def _address_in_use(exc: OSError) -> str:
    """ "127.0.0.1:8080 is in use" from the several ways asyncio and socket word EADDRINUSE."""
    found = re.search(r"\('([^']*)', (\d+)\)", str(exc))
    where = "%s:%s" % found.groups() if found else "the listen address"
    return "%s is in use" % where


class CommandParser(argparse.ArgumentParser):
    """argparse for every command: a usage error is one line, "prog: what (see prog --help)",
    and exit status 2, like a configuration error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, "%s: %s (see %s --help)\n" % (self.prog, message, self.prog))


def add_config_argument(parser: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """The `--config FILE` option. Give it to a command's parser and, with `nested=True`, to
    each of its sub-commands' parsers, so that it is accepted before or after the action."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP,
                        default=argparse.SUPPRESS if nested else None)


def config_in_every_action(actions: argparse._SubParsersAction[CommandParser]) -> None:
    """`--config` after the action too ("numbers list --config F"), for every action."""
    for parser in actions.choices.values():
        add_config_argument(parser, nested=True)


def load(args: argparse.Namespace, env: Mapping[str, str] | None = None, *,
         configure_logs: bool = True) -> Settings:
    """The settings named by `args.config` (see `consumer.settings.config_path`), with
    logging configured from them; raises ConfigError (the runner prints it)."""
    environ = dict(os.environ if env is None else env)
    settings = load_settings(config_path(getattr(args, "config", None), environ), environ)
    if configure_logs:
        logs.configure(settings.log.level, settings.log.format)
    return settings


def queue_type(settings: Settings, text: str, flag: str = "--queue") -> str:
    """The message type `text` names: the type itself ("SmsReport") or its queue's name
    ("Alicom-Queue-<account id>-SmsReport"), as `list` commands show either. ConfigError
    naming `flag` otherwise."""
    name = text.strip()
    if name.startswith(settings.queue_prefix):
        name = name[len(settings.queue_prefix):]
    if name in QUEUE_MESSAGE_TYPES:
        return name
    known = list(QUEUE_MESSAGE_TYPES)
    raise ConfigError("%s must be a message type (%s) or its queue name (%sSmsReport), got %r%s"
                      % (flag, ", ".join(known), settings.queue_prefix, text,
                         did_you_mean(name, known)))


def parse_since(text: str) -> int:
    """Hours in "24h" / "7d" (a `--since` window); ConfigError otherwise or beyond a year."""
    match = re.fullmatch(r"\s*(\d+)\s*([hd])\s*", text.lower())
    if not match or int(match[1]) == 0:
        raise ConfigError("--since must look like 24h or 7d, got %r" % text)
    hours = int(match[1]) * (24 if match[2] == "d" else 1)
    if hours > _MAX_SINCE_HOURS:
        raise ConfigError("--since is limited to %d days" % (_MAX_SINCE_HOURS // 24))
    return hours


def port(text: str) -> int:
    """argparse type: a TCP port, 1-65535 (0 is refused: say which port you want)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a port number 1-65535, got %r" % text) from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number 1-65535, got %d" % value)
    return value


def positive(text: str) -> float:
    """argparse type: a finite number above 0 (a rate, a duration)."""
    value = _float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("must be a number above 0, got %r" % text)
    return value


def non_negative(text: str) -> float:
    """argparse type: a finite number, 0 or more (a duration where 0 means "none")."""
    value = _float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError("must be a number, 0 or more, got %r" % text)
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def share(text: str) -> float:
    """argparse type: a share from 0 to 1."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:  # nan fails too
        raise argparse.ArgumentTypeError("must be a share from 0 to 1, got %r" % text)
    return value
