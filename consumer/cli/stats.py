"""`alicom-receipts stats`: the delivery success rate, failure codes and an hourly table.

    alicom-receipts stats [--config FILE] [--since 24h] [--until "2021-09-06 15"]
                          [--tz Asia/Shanghai] [--top 10] [--json] [--redis-url URL]

The window is the `--since` hours ending with the hour `--until` (default: the current
hour), both included. Redis and the key prefix come from `--redis-url` / `--prefix`, else
from the `delivery-stats` handler's options in the configuration, else its `[redis] url`
(`consumer.cli.targets`); the figures are `consumer.reports.delivery_report`'s.
Exit status: 0 done, 2 bad arguments or configuration, 3 Redis did not answer.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from consumer.cli.runner import CommandParser, parse_since
from consumer.cli.targets import (
    add_target_arguments,
    handler_options,
    open_redis,
    run_on_redis,
)
from consumer.clients.redis_client import RedisClient
from consumer.errors import ConfigError
from consumer.reports.delivery_report import build_report, render_json, render_text
from consumer.reports.delivery_stats import DEFAULT_PREFIX

_DELIVERY_STATS = frozenset({"delivery-stats",
                             "consumer.handlers.delivery_stats:DeliveryStatsHandler"})


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = CommandParser(prog="alicom-receipts stats",
                      description="Delivery success rate, failure codes, hourly table.")
    add_target_arguments(p)
    p.add_argument("--since", default="24h", help="window length: Nh or Nd (default 24h)")
    p.add_argument("--until", default=None, metavar="'YYYY-MM-DD HH'",
                   help="last hour of the window, in --tz (default: the current hour)")
    p.add_argument("--tz", default="Asia/Shanghai", help="time zone of the hours shown")
    p.add_argument("--top", type=int, default=10, help="failure codes to list (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    p.add_argument("--prefix", default=None, help="key prefix (default: from the configuration)")
    return p.parse_args(list(argv))


def _parse_until(text: str | None, zone: tzinfo, now: float) -> datetime:
    if text is None:
        return datetime.fromtimestamp(now, timezone.utc)
    for pattern in ("%Y-%m-%d %H", "%Y-%m-%dT%H", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"):
        try:
            return datetime.strptime(text.strip(), pattern).replace(tzinfo=zone)
        except ValueError:
            pass
    raise ConfigError("--until must look like 'YYYY-MM-DD HH', got %r" % text)


def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError("--tz: unknown time zone %r" % name) from exc


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """Redis URL and key prefix of the delivery-stats handler."""
    target = handler_options(args, _DELIVERY_STATS)
    if not target.configured:
        sys.stderr.write("alicom-receipts stats: note: the configuration has no delivery-stats "
                         "handler, so nothing counts deliveries there; add [[handlers]] use = "
                         "\"delivery-stats\" (or give --redis-url where another host counts)\n")
    return target.url, str(args.prefix or target.options.get("prefix") or DEFAULT_PREFIX)


def main(argv: Sequence[str], out: TextIO | None = None, now: float | None = None) -> int:
    """The `stats` command (exit status: see the module docstring); a ConfigError goes to
    the command runner (one line, exit 2)."""
    args = _parse(argv)
    hours = parse_since(args.since)
    zone = _zone(args.tz)
    until = _parse_until(args.until, zone, time.time() if now is None else now)
    url, prefix = _target(args)
    first = until - timedelta(hours=hours - 1)
    render = render_json if args.json else render_text

    def opened() -> tuple[RedisClient, RedisClient]:
        client = open_redis(url)
        return client, client

    def act(client: RedisClient) -> int:
        report = build_report(client, first, hours, prefix)
        (out or sys.stdout).write(render(report, zone, max(0, args.top)))
        return 0

    return run_on_redis("stats", opened, act)
