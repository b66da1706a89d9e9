"""`alicom-receipts dashboard`: a read-only report page (aiohttp), server-side rendered.

    alicom-receipts dashboard [--config FILE] [--listen 127.0.0.1:8088] [--since 24h]
                              [--secret-file FILE] [--allow CIDR ...] [--refresh-s 30]

Shows the success rate over time, the failure reasons, the hourly table, the send tasks with
their counts and CSV exports, the suppressed numbers and the review states
(`consumer.cli.dashboard_page`); it only reads Redis. The same protections as the push
receiver: an optional secret path segment (`/<secret>/`, from `--secret-file` or
`$ALICOM_RECEIPTS_DASHBOARD_SECRET`; a wrong or missing one answers 404) and a source-address
allowlist (`--allow`, repeatable; others get 403). Where each report lives comes from the
handlers' options in the configuration (`consumer.cli.targets`).

Routes under the base path: `/` the page, `/numbers.csv` the suppressed numbers,
`/tasks/<id>.csv?status=delivered|failed|pending` one task's numbers, and `/metrics`: the
shared state as Prometheus gauges, read from Redis on each scrape (one dashboard per
deployment, so unlike a per-worker collector nothing is multiplied by the number of hosts):
`alicom_receipts_review_items{kind,state}` (signatures / templates in each review state),
`alicom_receipts_suppressed_numbers`, `alicom_receipts_tasks_sending` (tasks of the window
still waiting for receipts).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hmac
import io
import ipaddress
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
from aiohttp import web

from consumer.cli.dashboard_page import Stores, collect, render
from consumer.cli.numbers import CSV_COLUMNS
from consumer.cli.numbers import open_numbers as _open_numbers
from consumer.cli.numbers import when as _when
from consumer.cli.runner import CommandParser, parse_since
from consumer.cli.targets import add_target_arguments, handler_options, open_redis
from consumer.errors import ConfigError, StartupUnavailable
from consumer.receipts import SHANGHAI
from consumer.reports import delivery_stats, reviews, tasks

SECRET_ENV = "ALICOM_RECEIPTS_DASHBOARD_SECRET"  # noqa: S105 - a variable name
_SECRET = re.compile(r"[A-Za-z0-9._~-]{16,}")
_STATS = frozenset({"delivery-stats", "consumer.handlers.delivery_stats:DeliveryStatsHandler"})
_TRACKER = frozenset({"send-tracker", "consumer.handlers.tracking:SendTracker"})
_REVIEWS = frozenset({"review-status", "consumer.handlers.review_status:ReviewStatus"})
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Dashboard:
    """The aiohttp application; Redis is read in a thread so the loop never blocks on it."""

    def __init__(self, stores: Stores, hours: int, refresh_s: int, secret: str | None,
                 allow: Sequence[IpNetwork]) -> None:
        self._stores = stores
        self._hours = hours
        self._refresh_s = refresh_s
        self._secret = secret
        self._allow = tuple(allow)

    @property
    def base(self) -> str:
        return "/%s/" % self._secret if self._secret else "/"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        base = "/{key}/" if self._secret else "/"
        app.router.add_get(base, self._page)
        app.router.add_get(base + "numbers.csv", self._numbers_csv)
        app.router.add_get(base + "tasks/{task}.csv", self._task_csv)
        app.router.add_get(base + "metrics", self._metrics)
        return app

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> web.StreamResponse:
        if self._allow and not _within(request.remote or "", self._allow):
            return web.Response(status=403, text="this address may not read the report\n")
        key = request.match_info.get("key", "")
        if self._secret is not None and not hmac.compare_digest(key.encode(),
                                                                self._secret.encode()):
            raise web.HTTPNotFound
        return await handler(request)

    async def _page(self, request: web.Request) -> web.Response:
        page = await asyncio.to_thread(collect, self._stores, self._hours, time.time(),
                                       SHANGHAI, self._refresh_s)
        return web.Response(text=render(page, self.base), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _numbers_csv(self, request: web.Request) -> web.Response:
        numbers = self._stores.numbers
        records = await asyncio.to_thread(numbers.suppressed)
        header = list(CSV_COLUMNS)
        header[0] = "number_hash" if numbers.ids.hashed else "number"
        rows = [[r.number, r.reason, str(r.failures), _when(r.first_failure),
                 _when(r.last_failure), _when(r.suppressed_since), _when(r.suppressed_until),
                 r.err_code, r.err_msg] for r in records]
        return _csv("suppressed-numbers.csv", header, rows)

    async def _task_csv(self, request: web.Request) -> web.Response:
        status = request.query.get("status", "")
        if status not in ("delivered", "failed", "pending"):
            raise web.HTTPBadRequest(text="status must be delivered, failed or pending\n")
        task_id = request.match_info["task"]
        rows = await asyncio.to_thread(self._stores.tasks.numbers, task_id, status)
        hashed = self._stores.tasks_hashed
        return _csv("task-%s-%s.csv" % (re.sub(r"[^A-Za-z0-9_.-]", "_", task_id), status),
                    ["number_hash" if hashed else "number", "state", "err_code"], rows)


    async def _metrics(self, request: web.Request) -> web.Response:
        text = await asyncio.to_thread(self.metrics_text)
        return web.Response(body=text, content_type="text/plain", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    def metrics_text(self) -> bytes:
        """The gauges in Prometheus' text format (Redis read now)."""
        from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

        items = GaugeMetricFamily("alicom_receipts_review_items", "Signatures and templates "
                                  "in each review state (shared state)", labels=["kind", "state"])
        for (kind, state), n in sorted(self._stores.reviews.state_counts().items()):
            items.add_metric([kind, state], n)
        suppressed = GaugeMetricFamily("alicom_receipts_suppressed_numbers",
                                       "Numbers suppressed now (shared state)",
                                       value=self._stores.numbers.count_suppressed())
        sending = GaugeMetricFamily("alicom_receipts_tasks_sending", "Send tasks of the "
                                    "dashboard's window still waiting for receipts",
                                    value=len(self._stores.tasks.tasks(
                                        self._hours * 3600.0, "sending")))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed([items, suppressed, sending]))
        return generate_latest(registry)


class _Fixed:
    """A collector answering families read just before."""

    def __init__(self, families: Sequence[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)


def _csv(filename: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> web.Response:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return web.Response(text=text.getvalue(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": 'attachment; filename="%s"' % filename})


def _within(address: str, networks: Sequence[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = CommandParser(prog="alicom-receipts dashboard",
                      description="A read-only report page.")
    add_target_arguments(p)
    p.add_argument("--listen", default="127.0.0.1:8088", metavar="HOST:PORT",
                   help="address to serve on (default 127.0.0.1:8088)")
    p.add_argument("--since", default="24h", help="window of the page: Nh or Nd (default 24h)")
    p.add_argument("--refresh-s", type=int, default=30, help="the page reloads itself")
    p.add_argument("--secret-file", default=None, metavar="FILE",
                   help="serve under /<secret>/ (else $%s)" % SECRET_ENV)
    p.add_argument("--allow", action="append", default=[], metavar="CIDR",
                   help="addresses allowed to read (repeatable; default: anyone)")
    p.add_argument("--hash-numbers", action="store_true", default=None,
                   help="numbers are stored hashed (default: from the number-hygiene handler)")
    p.add_argument("--prefix", default=None, help=argparse.SUPPRESS)
    return p.parse_args(list(argv))


def _secret(args: argparse.Namespace) -> str | None:
    text = os.environ.get(SECRET_ENV, "")
    if args.secret_file:
        try:
            text = Path(args.secret_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("--secret-file cannot be read (%s)"
                              % (exc.strerror or type(exc).__name__)) from exc
    text = text.strip()
    if text and not _SECRET.fullmatch(text):
        raise ConfigError("the dashboard secret must be at least 16 of A-Z a-z 0-9 . _ ~ - "
                          "(it is a URL path segment)")
    return text or None


def build(args: argparse.Namespace) -> tuple[Dashboard, str, int]:
    """The dashboard the flags and configuration describe, its host and port."""
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or args.refresh_s < 1:
        raise ConfigError("--listen must be host:port and --refresh-s >= 1")
    try:
        allow = [ipaddress.ip_network(c, strict=False) for c in args.allow]
    except ValueError as exc:
        raise ConfigError("--allow: %s" % exc) from exc
    numbers, _client = _open_numbers(args)
    stats = handler_options(args, _STATS)
    tracker = handler_options(args, _TRACKER)
    review = handler_options(args, _REVIEWS)
    stores = Stores(
        open_redis(stats.url),
        str(stats.options.get("prefix") or delivery_stats.DEFAULT_PREFIX),
        tasks.TaskStore(open_redis(tracker.url),
                        str(tracker.options.get("tasks_prefix") or tasks.DEFAULT_PREFIX)),
        numbers,
        reviews.ReviewStore(open_redis(review.url),
                            str(review.options.get("prefix") or reviews.DEFAULT_PREFIX)),
        bool(tracker.options.get("hash_numbers", False)))
    dashboard = Dashboard(stores, parse_since(args.since), args.refresh_s, _secret(args), allow)
    return dashboard, host.strip("[]") or "127.0.0.1", int(port)


def main(argv: Sequence[str]) -> int:
    """Serves until SIGINT / SIGTERM. Bad flags or configuration (ConfigError), a Redis
    Cluster not answering at start and a listen address in use are the command runner's
    one-line errors (`consumer.cli.runner`)."""
    args = _parse(argv)
    try:
        dashboard, host, port = build(args)  # ConfigError: the runner's one line, exit 2
    except redis.RedisError as exc:  # a cluster reads its slot map as its client is made
        raise StartupUnavailable("Redis did not answer (%s)" % type(exc).__name__) from None
    shown = "/<secret>/" if dashboard.base != "/" else "/"
    print("alicom-receipts dashboard: serving http://%s:%d%s" % (host, port, shown), flush=True)
    web.run_app(dashboard.app(), host=host, port=port, print=None, access_log=None)
    return 0
