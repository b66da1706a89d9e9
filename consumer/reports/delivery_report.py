"""The delivery report: the figures `alicom-receipts stats` (`consumer.cli.stats`) and the
dashboard show for a window of hours.

It reads the hour buckets of `consumer.reports.delivery_stats` (through `consumer.reports
.hour_counts`) and shows the figures: the success rate (delivered / (delivered + failed)),
the top failure codes with their meaning (`consumer.reports.err_codes`, else the platform's
own err_msg as a hint), submitted and still without a receipt (when sends are tracked),
and the receipt delay (average exact; median and p90 as the upper bound of the delay
bucket that holds them, so "<= 10 s").

`build_report` reads a window, `render_text` / `render_json` write it (`failure_rows`: its
top failure codes with their meaning). Nothing here writes to Redis.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from consumer.clients.redis_client import RedisClient
from consumer.reports.delivery_stats import DEFAULT_PREFIX
from consumer.reports.err_codes import describe
from consumer.reports.hour_counts import HourCounts, read_code_messages, read_hours, total


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
