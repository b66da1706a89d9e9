"""Where a report's data lives: the Redis URL and options of the handler that writes it.

The read-side commands (`stats`, `numbers`, `tasks`, `reviews`, `dashboard`) find the Redis
and key prefix a handler writes to the same way: `--redis-url` / `--prefix` flags, else the
options of that handler in the configuration (`[[handlers]] use = ...`), else the
configuration's `[redis] url` and the default prefix.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from consumer.errors import ConfigError
from consumer.settings import CONFIG_HELP, config_path, load_settings

__all__ = ["Target", "add_target_arguments", "handler_options", "open_redis"]


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
    parser.add_argument("--config", default=None, metavar="FILE", help=CONFIG_HELP)
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
        if spec.use in uses:
            options, configured = dict(spec.options), True
    return Target(str(args.redis_url or options.get("url") or settings.redis_url), options,
                  configured)


def open_redis(url: str) -> redis.Redis:
    """A client for a command (short timeouts); ConfigError for a URL that is not one, with
    the URL left out of the message (it may hold a password)."""
    try:
        return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    except ValueError as exc:
        raise ConfigError("the Redis URL is not a redis:// URL") from exc
