"""The report page's server: who may read it, its CSV exports and its HTML, on a real Redis
(the browser test is tests/e2e/test_bulk_e2e.py)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from alicom_sandbox.redis_server import RedisServer
from consumer import cli
from consumer.cli import dashboard
from consumer.cli.dashboard_page import Stores
from consumer.errors import ConfigError
from consumer.reports.numbers import NumberList
from consumer.reports.reviews import ReviewStore
from consumer.reports.tracking import SendTracker

SECRET = "s3cret-path-segment-0123"


def _board(client: redis.Redis, secret: str | None = SECRET,
           allow: tuple[str, ...] = ()) -> dashboard.Dashboard:
    tracker = SendTracker(client)
    stores = Stores(client, "alicom:stats", tracker.tasks, NumberList(client),
                    ReviewStore(client))
    return dashboard.Dashboard(stores, 24, 30, secret,
                               [ipaddress.ip_network(a) for a in allow])


def _serve(board: dashboard.Dashboard,
           check: Callable[[TestClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with TestClient(TestServer(board.app())) as http:
            await check(http)
    asyncio.run(main())


def test_the_page_needs_its_secret_and_escapes_what_it_shows(redis_client: redis.Redis) -> None:
    NumberList(redis_client).add("13800000001", reason="<script>alert(1)</script>")

    async def check(http: TestClient) -> None:
        assert (await http.get("/")).status == 404
        assert (await http.get("/wrong-secret-0123456789/")).status == 404
        page = await http.get("/%s/" % SECRET)
        assert page.status == 200
        html = await page.text()
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert 'href="/%s/numbers.csv"' % SECRET in html
        assert '<meta http-equiv="refresh" content="30">' in html
        csv_text = await (await http.get("/%s/numbers.csv" % SECRET)).text()
        assert csv_text.splitlines()[1].startswith("13800000001,manual,0,")
        assert (await http.get("/%s/tasks/x.csv?status=lost" % SECRET)).status == 400
    _serve(_board(redis_client), check)


def test_an_address_outside_the_allowlist_is_refused(redis_client: redis.Redis) -> None:
    async def check(http: TestClient) -> None:
        assert (await http.get("/")).status == 403  # the test client comes from 127.0.0.1
    _serve(_board(redis_client, None, ("10.0.0.0/8",)), check)


def test_task_exports_list_the_numbers_of_one_state(redis_client: redis.Redis) -> None:
    tracker = SendTracker(redis_client)
    tracker.record("9^0", "13800000001", time.time())
    tracker.record("9^0", "13800000002", time.time())

    async def check(http: TestClient) -> None:
        answer = await http.get("/tasks/9%5E0.csv?status=pending")
        assert answer.status == 200
        assert answer.headers["Content-Disposition"] == (
            'attachment; filename="task-9_0-pending.csv"')
        assert (await answer.text()).splitlines() == [
            "number,state,err_code", "13800000001,pending,", "13800000002,pending,"]
    _serve(_board(redis_client, None), check)


def test_bad_flags_are_one_line_errors(redis_server: RedisServer,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    url = ["dashboard", "--redis-url", redis_server.url]
    assert cli.main([*url, "--listen", "nowhere"]) == 2
    assert "dashboard: --listen must be host:port" in capsys.readouterr().err
    assert cli.main([*url, "--allow", "not-a-net"]) == 2
    assert "--allow" in capsys.readouterr().err
    assert cli.main([*url, "--secret-file", "/nonexistent/secret"]) == 2
    assert "--secret-file cannot be read" in capsys.readouterr().err
    # A Redis Cluster reads its slot map as its client is made: not answering is temporary.
    assert cli.main(["dashboard", "--redis-url", "redis+cluster://127.0.0.1:1"]) == 75
    assert capsys.readouterr().err == ("alicom-receipts dashboard: Redis did not answer "
                                       "(ConnectionError) (temporary: try again later)\n")


def test_the_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dashboard.SECRET_ENV, " " + SECRET + "\n")
    assert dashboard._secret(argparse.Namespace(secret_file=None)) == SECRET
    monkeypatch.setenv(dashboard.SECRET_ENV, "short")
    with pytest.raises(ConfigError, match="at least 16"):
        dashboard._secret(argparse.Namespace(secret_file=None))
