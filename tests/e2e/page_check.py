"""The report page in a real browser: Debian's Chromium driven by Playwright (Playwright's own
browser download is never used; `.ci/ensure-chromium` installs the package)."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from alicom_sandbox.redis_server import free_port
from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, wait_until, worker_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run"]
SECRET = "page-secret-0123456789"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@contextmanager
def running_dashboard(stack: Stack, config: Path) -> Iterator[str]:
    """The real `alicom-receipts dashboard` process behind a secret path; its base URL."""
    port = free_port()
    secret_file = stack.tmp / "dashboard-secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    env = worker_env(stack.sandbox.access_key_id, stack.sandbox.access_key_secret)
    log = open(stack.tmp / "dashboard.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer", "dashboard", "--config", str(config),
         "--listen", "127.0.0.1:%d" % port, "--secret-file", str(secret_file),
         "--allow", "127.0.0.0/8", "--refresh-s", "60"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        root = "http://127.0.0.1:%d/" % port
        wait_until(lambda: _answers(root), 30, "the dashboard listening")
        yield root + SECRET + "/"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _column(page: Page, table: str, index: int) -> list[str]:
    return [c.strip() for c in page.locator("#%s tbody tr td:nth-child(%d)"
                                            % (table, index)).all_inner_texts()]


def _row(page: Page, table: str, first_cell: str) -> list[str]:
    for row in page.locator("#%s tbody tr" % table).all():
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        if cells[0] == first_cell:
            return cells
    raise AssertionError("no row %r in #%s" % (first_cell, table))


def check_dashboard(stack: Stack, config: Path, codes: Mapping[tuple[str, str], str],
                    suppressed: set[str], tasks: Mapping[str, list[tuple[str, str]]],
                    reviews: Mapping[tuple[str, str], tuple[str, str]],
                    screenshot: str | None = None) -> None:
    """Loads the page in Chromium and checks every figure against the sandbox's sends."""
    delivered = sum(1 for c in codes.values() if c == "DELIVERED")
    with running_dashboard(stack, config) as url, sync_playwright() as pw:
        assert urllib.request.urlopen(url, timeout=5).status == 200
        try:
            urllib.request.urlopen(url.rsplit("/", 2)[0] + "/", timeout=5)
            raise AssertionError("the page answered without its secret")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url)
        assert page.inner_text("#total-submitted") == str(len(codes))
        assert page.inner_text("#total-delivered") == str(delivered)
        assert page.inner_text("#total-failed") == str(len(codes) - delivered)
        assert page.inner_text("#total-success-rate") == "%.1f%%" % (100 * delivered / len(codes))
        assert page.locator("#rate-chart circle").count() >= 1
        for task_id, pairs in tasks.items():
            failed = [p for b, p in pairs if codes[(b, p)] != "DELIVERED"]
            row = _row(page, "tasks", task_id)
            assert row[2:7] == ["done", str(len(pairs)), str(len(pairs) - len(failed)),
                                str(len(failed)), "0"]
        assert set(_column(page, "numbers", 1)) == suppressed
        for (kind, name), (state, reason) in reviews.items():
            row = [r for r in page.locator("#reviews tbody tr").all()
                   if r.locator("td").nth(1).inner_text() == name]
            cells = [c.strip() for c in row[0].locator("td").all_inner_texts()]
            assert cells[0] == kind
            assert cells[2] == {"approving": "in review"}.get(state, state)
            assert cells[3] == (reason if state == "rejected" else "")
        # the CSV link of one task's failures, followed as a user would
        task_id, pairs = next(iter(tasks.items()))
        row_el = next(r for r in page.locator("#tasks tbody tr").all()
                      if r.locator("td").first.inner_text().strip() == task_id)
        link = row_el.locator("a", has_text="failed").get_attribute("href")
        assert link is not None
        answer = page.request.get(url.rsplit("/", 2)[0] + link)
        rows = list(csv.DictReader(io.StringIO(answer.text())))
        assert sorted(r["number"] for r in rows) == sorted(
            p for b, p in pairs if codes[(b, p)] != "DELIVERED")
        # the shared state as gauges, for Prometheus
        metrics = {(m.name, tuple(sorted(m.labels.items()))): m.value
                   for f in text_string_to_metric_families(page.request.get(
                       url + "metrics").text()) for m in f.samples}
        assert metrics[("alicom_receipts_suppressed_numbers", ())] == len(suppressed)
        assert metrics[("alicom_receipts_tasks_sending", ())] == 0
        for kind in ("sign", "template"):
            for state in ("approving", "approved", "rejected"):
                assert metrics[("alicom_receipts_review_items",
                                (("kind", kind), ("state", state)))] == sum(
                    1 for (k, _), (st, _r) in reviews.items() if k == kind and st == state)
        shot = stack.tmp / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    if screenshot:
        shutil.copyfile(shot, screenshot)
