"""Reading the delivery statistics back: `alicom-receipts stats`.

It reads the hour buckets of `consumer.reports.delivery_stats` (through `consumer.reports
.hour_counts`) and shows the figures: the success rate (delivered / (delivered + failed)),
the top failure codes with their meaning (`consumer.reports.err_codes`, else the platform's
own err_msg as a hint), submitted and still without a receipt (when sends are tracked),
and the receipt delay (average exact; median and p90 as the upper bound of the delay
bucket that holds them, so "<= 10 s").

Usage::

    alicom-receipts stats [--config FILE] [--since 24h] [--until "2021-09-06 15"]
                          [--tz Asia/Shanghai] [--top 10] [--json] [--redis-url URL]

The window is the `--since` hours ending with the hour `--until` (default: the current
hour), both included. Redis and the key prefix come from `--redis-url` / `--prefix`, else
from the `delivery-stats` handler's options in the configuration, else its `[redis] url`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis
import structlog

from consumer.clients.redis_client import RedisClient, connect
from consumer.errors import ConfigError
from consumer.reports.delivery_stats import DEFAULT_PREFIX
from consumer.reports.err_codes import describe
from consumer.reports.hour_counts import HourCounts, read_code_messages, read_hours, total
from consumer.reports.targets import handler_options
from consumer.settings import CONFIG_HELP

log = structlog.get_logger(__name__)

_MAX_HOURS = 24 * 366
_DELIVERY_STATS = frozenset({"delivery-stats",
                             "consumer.handlers.delivery_stats:DeliveryStatsHandler"})


@dataclass(frozen=True)
class Report:
    """The figures of one window: per hour (oldest first), their total, failure codes."""

    hours: list[HourCounts]
    totals: HourCounts
    code_messages: dict[str, str]

    def top_failures(self, n: int) -> list[tuple[str, int]]:
        """The `n` most frequent failure codes, most frequent first (ties by code)."""
        return sorted(self.totals.failures.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def build_report(client: RedisClient, first: datetime, hours: int,
                 prefix: str = DEFAULT_PREFIX) -> Report:
    """Reads `hours` hours from the one containing `first`."""
    counts = read_hours(client, first, hours, prefix)
    return Report(counts, total(counts, counts[0].hour), read_code_messages(client, prefix))


# -- the command -------------------------------------------------------------------------------

def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="alicom-receipts stats",
                                description="Delivery success rate, failure codes, hourly table.")
    p.add_argument("--config", default=None, metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--since", default="24h", help="window length: Nh or Nd (default 24h)")
    p.add_argument("--until", default=None, metavar="'YYYY-MM-DD HH'",
                   help="last hour of the window, in --tz (default: the current hour)")
    p.add_argument("--tz", default="Asia/Shanghai", help="time zone of the hours shown")
    p.add_argument("--top", type=int, default=10, help="failure codes to list (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    p.add_argument("--redis-url", default=None, help="default: from the configuration")
    p.add_argument("--prefix", default=None, help="key prefix (default: from the configuration)")
    return p.parse_args(list(argv))


def parse_since(text: str) -> int:
    """Hours in "24h" / "7d"; ConfigError otherwise or beyond a year."""
    match = re.fullmatch(r"\s*(\d+)\s*([hd])\s*", text.lower())
    if not match or int(match[1]) == 0:
        raise ConfigError("--since must look like 24h or 7d, got %r" % text)
    hours = int(match[1]) * (24 if match[2] == "d" else 1)
    if hours > _MAX_HOURS:
        raise ConfigError("--since is limited to %d days" % (_MAX_HOURS // 24))
    return hours


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
    """Redis URL and key prefix (`consumer.reports.targets`) of the delivery-stats handler."""
    target = handler_options(args, _DELIVERY_STATS)
    if not target.configured:
        sys.stderr.write("alicom-receipts stats: note: the configuration has no delivery-stats "
                         "handler, so nothing counts deliveries there; add [[handlers]] use = "
                         "\"delivery-stats\" (or give --redis-url where another host counts)\n")
    return target.url, str(args.prefix or target.options.get("prefix") or DEFAULT_PREFIX)


def run(argv: Sequence[str], out: TextIO | None = None, now: float | None = None) -> int:
    """The `stats` command; 0 done, 1 Redis unreachable, 2 bad arguments or configuration."""
    out = out or sys.stdout
    args = _parse(argv)
    try:
        hours = parse_since(args.since)
        zone = _zone(args.tz)
        until = _parse_until(args.until, zone, time.time() if now is None else now)
        url, prefix = _target(args)
    except ConfigError as exc:
        sys.stderr.write("alicom-receipts stats: %s\n" % exc)
        return 2
    try:
        client = connect(url, socket_timeout_s=10, connect_timeout_s=5)
    except ConfigError as exc:  # one line, without the password
        sys.stderr.write("alicom-receipts stats: %s\n" % exc)
        return 2
    try:
        report = build_report(client, until - timedelta(hours=hours - 1), hours, prefix)
    except redis.RedisError as exc:
        sys.stderr.write("alicom-receipts stats: Redis did not answer (%s)\n"
                         % type(exc).__name__)
        return 1
    finally:
        client.close()
    render = render_json if args.json else render_text
    out.write(render(report, zone, max(0, args.top)))
    return 0


def failure_rows(report: Report, top: int) -> list[dict[str, Any]]:
    """The top failure codes with count, share of failures, meaning and the platform's hint."""
    failed = report.totals.failed
    rows = []
    for code, n in report.top_failures(top):
        info = describe("" if code == "(empty)" else code)
        rows.append({"code": code, "count": n, "share": n / failed if failed else None,
                     "meaning": info.meaning, "known": info.known,
                     "platform_msg": report.code_messages.get(code, "")})
    return rows


# -- rendering ---------------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "-" if value is None else "%.1f%%" % (value * 100)


def _secs(value: float) -> str:
    if value >= 3600:
        return "%g h" % (value / 3600)
    return "%g min" % (value / 60) if value >= 60 else "%g s" % value


def _avg(value: float | None) -> str:
    return "-" if value is None else "%.1f s" % value


def _bound(value: float | None) -> str:
    """A quantile's bucket bound: "<= 10 s", "> 1 h" past the last bound, "-" without data."""
    if value is None:
        return "-"
    return "> 1 h" if math.isinf(value) else "<= " + _secs(value)


def _label(hour: datetime, zone: tzinfo) -> str:
    return hour.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def render_text(report: Report, zone: tzinfo, top: int) -> str:
    """The human report: a summary, the top failure codes, the hours that have data."""
    t, hours = report.totals, report.hours
    end = hours[-1].hour + timedelta(hours=1)
    lines = [
        "Delivery statistics, %d h from %s to %s (%s), by send hour"
        % (len(hours), _label(t.hour, zone), _label(end, zone), zone),
        "  receipts       %d (delivered %d, failed %d, other %d)"
        % (t.receipts, t.delivered, t.failed, t.other),
        "  success rate   %s" % _pct(t.success_rate),
        "  submitted      %s" % ("- (sends not tracked)" if t.pending is None else
                                 "%d, %d without a receipt yet" % (t.submitted, t.pending)),
        "  receipt delay  avg %s, median %s, p90 %s"
        % (_avg(t.delay_avg_s), _bound(t.delay_quantile_s(0.5)), _bound(t.delay_quantile_s(0.9))),
        "",
    ]
    rows = failure_rows(report, top)
    if rows:
        lines.append("Top failure codes (of %d failed)" % t.failed)
        lines.append("  %-28s %6s %7s  %s" % ("code", "count", "share", "meaning"))
        for row in rows:
            meaning = row["meaning"]
            if row["platform_msg"] and not row["known"]:
                meaning += "; platform says: " + row["platform_msg"]
            lines.append("  %-28s %6d %7s  %s"
                         % (row["code"], row["count"], _pct(row["share"]), meaning))
        lines.append("")
    lines.append("Hourly (%s; hours without data left out)" % zone)
    lines.append("  %-16s  %9s %9s %7s %7s %7s %10s %10s" % (
        "hour", "submitted", "delivered", "failed", "other", "rate", "avg delay", "median"))
    for h in hours:
        if h.empty:
            continue
        lines.append("  %-16s  %9s %9d %7d %7d %7s %10s %10s" % (
            _label(h.hour, zone), "-" if h.pending is None else h.submitted, h.delivered,
            h.failed, h.other, _pct(h.success_rate), _avg(h.delay_avg_s),
            _bound(h.delay_quantile_s(0.5))))
    return "\n".join(lines) + "\n"


def _json_bound(value: float | None) -> float | str | None:
    return "inf" if value is not None and math.isinf(value) else value


def _figures(h: HourCounts, zone: tzinfo) -> dict[str, Any]:
    return {
        "hour": h.hour.astimezone(zone).isoformat(), "submitted": h.submitted,
        "delivered": h.delivered, "failed": h.failed, "other": h.other,
        "without_receipt": h.pending, "success_rate": h.success_rate,
        "delay_avg_s": h.delay_avg_s, "delay_count": h.delay_count,
        "delay_median_le_s": _json_bound(h.delay_quantile_s(0.5)),
        "delay_p90_le_s": _json_bound(h.delay_quantile_s(0.9)),
    }


def render_json(report: Report, zone: tzinfo, top: int) -> str:
    """The same figures as one JSON document. Quantiles are bucket upper bounds in seconds,
    "inf" past the last bound, null without data; `without_receipt` is null when no sends
    were tracked. `hours` lists only hours with data."""
    t = report.totals
    end = report.hours[-1].hour + timedelta(hours=1)
    totals = _figures(t, zone)
    del totals["hour"]
    document = {
        "window": {"from": t.hour.astimezone(zone).isoformat(),
                   "to": end.astimezone(zone).isoformat(), "hours": len(report.hours),
                   "tz": str(zone)},
        "totals": totals,
        "failures": failure_rows(report, top),
        "hours": [_figures(h, zone) for h in report.hours if not h.empty],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"
