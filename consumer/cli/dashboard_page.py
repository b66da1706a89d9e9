"""The report page's figures and its HTML: server-side rendered, the charts as inline SVG.

Nothing here needs JavaScript or anything from the network: the page refreshes itself with a
`<meta http-equiv="refresh">`, the charts are SVG drawn here, the tables are plain tables,
and the CSV exports are links. Every value that came from the platform or from Redis is
HTML-escaped. `collect` reads everything the page shows (a few round trips); `render` is pure.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from urllib.parse import quote

from consumer.clients.redis_client import RedisClient
from consumer.reports.delivery_report import Report, build_report, failure_rows
from consumer.reports.hour_counts import HourCounts
from consumer.reports.number_rules import Classifier
from consumer.reports.numbers import NumberList, NumberRecord
from consumer.reports.reviews import Review, ReviewStore
from consumer.reports.tasks import TaskCounts, TaskStore

__all__ = ["Page", "collect", "render"]

_TOP_CODES = 12
_MAX_ROWS = 200


@dataclass(frozen=True)
class Page:
    """Everything one rendering shows."""

    report: Report
    tasks: list[TaskCounts]
    numbers: list[NumberRecord]
    numbers_hashed: bool
    reviews: list[Review]
    zone: tzinfo
    generated: datetime
    refresh_s: int


@dataclass(frozen=True)
class Stores:
    """Where the page reads from (the prefixes of the configured handlers)."""

    client: RedisClient
    stats_prefix: str
    tasks: TaskStore
    numbers: NumberList
    reviews: ReviewStore
    tasks_hashed: bool = False
    """Task numbers are stored hashed (the send-tracker's `hash_numbers`)."""


def collect(stores: Stores, hours: int, now: float, zone: tzinfo, refresh_s: int) -> Page:
    """Reads the last `hours` hours of statistics, the tasks created in them, the suppressed
    numbers and the review states. Errors: redis-py's."""
    end = datetime.fromtimestamp(now, timezone.utc)
    report = build_report(stores.client, end - timedelta(hours=hours - 1), hours,
                          stores.stats_prefix)
    return Page(report, stores.tasks.tasks(hours * 3600.0, limit=_MAX_ROWS),
                stores.numbers.suppressed(limit=_MAX_ROWS), stores.numbers.ids.hashed,
                stores.reviews.current(), zone, end, refresh_s)


# -- small pieces ------------------------------------------------------------------------------

def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "-" if value is None else "%.1f%%" % (value * 100)


def _time(epoch_s: float | None, zone: tzinfo) -> str:
    if not epoch_s:
        return "-"
    if math.isinf(epoch_s):
        return "never"
    return datetime.fromtimestamp(epoch_s, zone).strftime("%Y-%m-%d %H:%M:%S")


def _table(table_id: str, header: Sequence[str], rows: Sequence[Sequence[str]],
           empty: str) -> str:
    """A table; cells are already HTML. `empty` is shown when there are no rows."""
    if not rows:
        return '<p class="empty" id="%s">%s</p>' % (table_id, _e(empty))
    head = "".join("<th>%s</th>" % _e(h) for h in header)
    body = "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % c for c in row) for row in rows)
    return '<table id="%s"><thead><tr>%s</tr></thead><tbody>%s</tbody></table>' % (
        table_id, head, body)


# -- charts (SVG) ------------------------------------------------------------------------------

def rate_chart(hours: Sequence[HourCounts], zone: tzinfo, width: int = 760,
               height: int = 220) -> str:
    """Receipts per hour (bars, left scale) and the success rate (line, 0-100 %)."""
    left, right, top, bottom = 44, 44, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(1, len(hours))
    peak = max((h.receipts for h in hours), default=0) or 1
    parts = ['<svg id="rate-chart" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
             'viewBox="0 0 %d %d" role="img" aria-label="success rate and receipts per hour">'
             % (width, height, width, height)]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" class="grid"/>'
                     % (left, width - right, y, y))
        parts.append('<text x="%d" y="%.1f" class="axis" text-anchor="start">%d%%</text>'
                     % (width - right + 4, y + 4, frac * 100))
        parts.append('<text x="%d" y="%.1f" class="axis" text-anchor="end">%d</text>'
                     % (left - 4, y + 4, round(peak * frac)))
    points = []
    for i, h in enumerate(hours):
        x = left + i * step
        label = h.hour.astimezone(zone).strftime("%m-%d %H:00")
        bar = plot_h * h.receipts / peak
        parts.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" class="bar">'
                     "<title>%s: %d receipts, %s</title></rect>"
                     % (x + 1, top + plot_h - bar, max(1.0, step - 2), bar, _e(label),
                        h.receipts, _pct(h.success_rate)))
        if h.success_rate is not None:
            points.append("%.1f,%.1f" % (x + step / 2, top + plot_h * (1 - h.success_rate)))
        if i % max(1, len(hours) // 8) == 0:
            parts.append('<text x="%.1f" y="%d" class="axis" text-anchor="middle">%s</text>'
                         % (x + step / 2, height - 8, _e(label[6:])))
    if points:
        parts.append('<polyline points="%s" class="rate"/>' % " ".join(points))
        for point in points:
            cx, cy = point.split(",")
            parts.append('<circle cx="%s" cy="%s" r="2.5" class="rate-dot"/>' % (cx, cy))
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(chart_id: str, items: Sequence[tuple[str, int]], width: int = 360) -> str:
    """Horizontal bars, one per (label, count)."""
    if not items:
        return ""
    row_h, label_w = 20, 150
    peak = max(n for _, n in items) or 1
    height = row_h * len(items) + 4
    parts = ['<svg id="%s" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
             'viewBox="0 0 %d %d" role="img">' % (chart_id, width, height, width, height)]
    for i, (label, n) in enumerate(items):
        y = i * row_h + 2
        bar = (width - label_w - 50) * n / peak
        parts.append('<text x="%d" y="%d" class="axis" text-anchor="end">%s</text>'
                     % (label_w - 6, y + 14, _e(label[:24])))
        parts.append('<rect x="%d" y="%d" width="%.1f" height="%d" class="fail-bar"/>'
                     % (label_w, y + 2, max(1.0, bar), row_h - 6))
        parts.append('<text x="%.1f" y="%d" class="axis">%d</text>'
                     % (label_w + bar + 4, y + 14, n))
    parts.append("</svg>")
    return "".join(parts)


# -- the page ----------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.4em 0}td,th{padding:2px 10px;border-bottom:1px solid #eee;
text-align:left}td.n,th.n{text-align:right}.figures td{font-size:1.2em;font-weight:600}
.grid{stroke:#ddd}.axis{font-size:10px;fill:#555}.bar{fill:#c9d7ee}.rate{fill:none;
stroke:#1b7a3a;stroke-width:2}.rate-dot{fill:#1b7a3a}.fail-bar{fill:#d9534f}
.empty{color:#777}.note{color:#555;font-size:.9em}.rejected{color:#b52b27;font-weight:600}
"""


def _summary(page: Page) -> str:
    t = page.report.totals
    cells = [("submitted", str(t.submitted) if t.pending is not None else "-"),
             ("delivered", str(t.delivered)), ("failed", str(t.failed)),
             ("success-rate", _pct(t.success_rate)),
             ("without-receipt", "-" if t.pending is None else str(t.pending))]
    head = "".join("<th>%s</th>" % _e(name.replace("-", " ")) for name, _ in cells)
    body = "".join('<td id="total-%s">%s</td>' % (name, _e(value)) for name, value in cells)
    return '<table class="figures"><tr>%s</tr><tr>%s</tr></table>' % (head, body)


def _failures(page: Page) -> str:
    classify = Classifier().reason
    rows, by_reason = [], dict[str, int]()
    for row in failure_rows(page.report, _TOP_CODES):
        code = "" if row["code"] == "(empty)" else row["code"]
        reason = classify(code, row["platform_msg"]) or "other"
        by_reason[reason] = by_reason.get(reason, 0) + row["count"]
        rows.append([_e(row["code"]), '<span class="n">%d</span>' % row["count"],
                     _pct(row["share"]), _e(reason), _e(row["meaning"]),
                     _e(row["platform_msg"])])
    chart = bar_chart("reason-chart", sorted(by_reason.items(), key=lambda kv: -kv[1]))
    table = _table("failures", ["code", "count", "share", "reason", "meaning",
                                "platform's message"], rows, "no failed deliveries")
    return chart + table


def _hourly(page: Page) -> str:
    rows = [[_e(h.hour.astimezone(page.zone).strftime("%Y-%m-%d %H:00")),
             "-" if h.pending is None else str(h.submitted), str(h.delivered), str(h.failed),
             _pct(h.success_rate), "-" if h.delay_avg_s is None else "%.1f s" % h.delay_avg_s]
            for h in reversed(page.report.hours) if not h.empty]
    return _table("hourly", ["hour", "submitted", "delivered", "failed", "rate",
                             "avg delay"], rows, "no receipts in this window")


def _tasks(page: Page, base: str) -> str:
    rows = []
    for t in page.tasks:
        links = " ".join('<a href="%stasks/%s.csv?status=%s">%s</a>'
                         % (base, quote(t.task_id, safe=""), s, s)
                         for s in ("delivered", "failed", "pending"))
        reasons = ", ".join("%s %d" % (_e(r), n) for r, n in
                            sorted(t.reasons.items(), key=lambda kv: -kv[1]))
        rows.append([_e(t.task_id), _time(t.created, page.zone), _e(t.status),
                     str(t.submitted), str(t.delivered), str(t.failed), str(t.pending),
                     reasons or "-", links])
    return _table("tasks", ["task", "created", "status", "submitted", "delivered", "failed",
                            "pending", "failure reasons", "CSV"], rows,
                  "no tasks in this window")


def _numbers(page: Page, base: str) -> str:
    rows = [[_e(r.number), _e(r.reason), str(r.failures), _time(r.last_failure, page.zone),
             _time(r.suppressed_until, page.zone), _e(r.err_code), _e(r.err_msg)]
            for r in page.numbers]
    note = ('<p class="note">Numbers are stored as keyed hashes (hash_numbers is on).</p>'
            if page.numbers_hashed else "")
    return note + _table("numbers", ["number", "reason", "failures", "last failure",
                                     "suppressed until", "err_code", "err_msg"], rows,
                         "no number is suppressed") + (
        '<p><a href="%snumbers.csv">export CSV</a></p>' % base)


def _reviews(page: Page) -> str:
    rows = [[_e(r.kind), _e(r.name), '<span class="%s">%s</span>' % (
        _e(r.state), _e({"approving": "in review"}.get(r.state, r.state))),
        _e(r.reason) if r.state == "rejected" else "", _time(r.at, page.zone), _e(r.order_id)]
        for r in page.reviews]
    return _table("reviews", ["kind", "name", "state", "reason", "since", "order"], rows,
                  "no review results yet")


def render(page: Page, base: str = "/") -> str:
    """The whole page; `base` is the path links start with (it holds the secret, if any)."""
    t = page.report.totals
    window = "%d hours to %s (%s)" % (len(page.report.hours),
                                      page.generated.astimezone(page.zone).strftime(
                                          "%Y-%m-%d %H:%M"), page.zone)
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="refresh" content="%d">' % page.refresh_s,
        "<title>alicom-receipts report</title><style>%s</style></head><body>" % _STYLE,
        "<h1>SMS delivery report</h1>",
        '<p class="note">Last %s, by send hour; refreshes every %d s.</p>'
        % (_e(window), page.refresh_s),
        _summary(page),
        "<h2>Success rate over time</h2>", rate_chart(page.report.hours, page.zone),
        "<h2>Failure reasons</h2>", _failures(page) if t.failed else
        '<p class="empty" id="failures">no failed deliveries</p>',
        "<h2>Hourly</h2>", _hourly(page),
        "<h2>Send tasks</h2>", _tasks(page, base),
        "<h2>Suppressed numbers</h2>", _numbers(page, base),
        "<h2>Signature and template reviews</h2>", _reviews(page),
        "</body></html>",
    ])
