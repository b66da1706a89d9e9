"""Where a report's data lives: the Redis URL and options of the handler that writes it.

The read-side commands (`stats`, `numbers`, `tasks`, `reviews`, `dashboard`) find the Redis
and key prefix a handler writes to the same way: `--redis-url` / `--prefix` flags, else the
options of that handler in the configuration (`[[handlers]] use = ...`), else the
configuration's `[redis] url` and the default prefix.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from consumer.cli.runner import add_config_argument
from consumer.clients.redis_client import RedisClient, connect
from consumer.errors import EXIT_UNANSWERED
from consumer.handlers.bulk_sender import PARTS as BULK_PARTS
from consumer.handlers.bulk_sender import USES as BULK_USES
from consumer.handlers.bulk_sender import part_options
from consumer.settings import HandlerSpec, config_path, load_settings

__all__ = ["Target", "add_target_arguments", "handler_options", "open_redis",
           "run_on_redis"]

_Opened = TypeVar("_Opened")


@dataclass(frozen=True)
class Target:
    """The Redis URL (may hold a password: never print it) and the handler's options."""

    url: str = field(repr=False)
    options: Mapping[str, Any]
    #: The configuration names that handler (or --redis-url says where to read): False means
    #: nothing writes what the command is about to read, which deserves a hint.
    configured: bool = True


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config` and `--redis-url`; each command adds its own `--prefix`."""
    add_config_argument(parser)
    parser.add_argument("--redis-url", default=None, help="default: from the configuration")


def handler_options(args: argparse.Namespace, uses: frozenset[str]) -> Target:
    """The target of the handler named by any of `uses` (entry point or module:attr).

    With `--redis-url` and no `--config`, the configuration is not read at all. Raises
    ConfigError for an unreadable or invalid configuration.
    """
    if args.redis_url and not args.config:
        return Target(args.redis_url, {})
    settings = load_settings(config_path(args.config, os.environ), dict(os.environ))
    options: dict[str, Any] = {}
    configured = bool(args.redis_url)
    for spec in settings.handlers:
        found = dict(spec.options) if spec.use in uses else _bulk_part(spec, uses)
        if found is not None:
            options, configured = found, True
    return Target(str(args.redis_url or options.get("url") or settings.redis_url), options,
                  configured)


def _bulk_part(spec: HandlerSpec, uses: frozenset[str]) -> dict[str, Any] | None:
    """The options of the part of a `bulk-sender` handler that is one of `uses` (its own
    table and the handler's `url`); None when `spec` is no bulk-sender or leaves it out."""
    if spec.use not in BULK_USES:
        return None
    for option, part in BULK_PARTS.items():
        if part.name in uses or f"{part.__module__}:{part.__qualname__}" in uses:
            try:
                found = part_options(option, spec.options.get(option, True))
            except TypeError:  # the worker refuses it; a command reads the defaults
                found = {}
            if found is not None and "url" in spec.options:
                found["url"] = spec.options["url"]
            return found
    return None


def open_redis(url: str) -> RedisClient:
    """A client for a command (short timeouts) from the one factory, so that Sentinel and
    Cluster URLs work here as they do for the handlers writing the data; ConfigError for a
    URL that is not one, never quoting it (it may hold a password)."""
    return connect(url, socket_timeout_s=10, connect_timeout_s=5)


def run_on_redis(command: str, open_: Callable[[], tuple[_Opened, RedisClient]],
                 act: Callable[[_Opened], int]) -> int:
    """Runs a read-side command: `open_` gives what `act` works on and the client it holds.
    A Redis that does not answer (a cluster's slot map is read as its client is made) is
    one line and exit 3; the client is closed. A ConfigError goes to the command runner."""
    prog = "alicom-receipts " + command
    try:
        opened, client = open_()
    except redis.RedisError as exc:
        return _unanswered(prog, exc)
    try:
        return act(opened)
    except redis.RedisError as exc:
        return _unanswered(prog, exc)
    finally:
        client.close()


def _unanswered(prog: str, exc: redis.RedisError) -> int:
    # The exception's text may quote the URL (and its password): only its type is shown.
    sys.stderr.write("%s: Redis did not answer (%s)\n" % (prog, type(exc).__name__))
    return EXIT_UNANSWERED
