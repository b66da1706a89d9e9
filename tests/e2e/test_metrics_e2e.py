"""Metrics end to end: two real worker processes on one queue, one scrape endpoint on the
host, counts that add up to what was published, and the endpoint surviving its server's exit.

Needs the wiring of consumer.runtime.metrics into consumer.runtime.app (`setup_metrics` in
`build_worker`,
closed with the worker's resources); without it no worker serves the address and the first
wait below times out.
"""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack
from tests.e2e.harness import WorkerProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
COUNT = 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_text(address: str) -> str | None:
    """The exposition, or None while no process serves the address."""
    try:
        with urllib.request.urlopen("http://%s/metrics" % address, timeout=10) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def samples_of(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items()
               if n == "alicom_receipts_" + name and want <= ls)


def handled_in_file(path: Path) -> float:
    """One process's own count of handled receipts, read from its counter file alone."""
    merged: Any = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
    return float(sum(s.value for m in merged for s in m.samples
               if s.name == "alicom_receipts_outcomes_total" and s.labels["outcome"] == "handled"))


def serving(workers: list[WorkerProcess]) -> list[WorkerProcess]:
    return [w for w in workers
            if any(e.get("event") == "metrics_serving" for e in w.log_lines())]


def test_two_workers_expose_one_aggregate_that_matches_what_was_published(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = stack.tmp / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))  # inherited by the workers
    address = "127.0.0.1:%d" % free_port()
    config = stack.config(metrics={"address": address})
    workers = [stack.worker(config), stack.worker(config)]
    stack.wait(lambda: all(any(e.get("event") == "ready" for e in w.log_lines())
                           for w in workers), "both workers polling")
    stack.wait(lambda: scrape_text(address) is not None, "one worker serving the address")
    stack.wait(lambda: len(serving(workers)) == 1, "the serving worker logged it")

    with stack.publisher() as pub:
        report = pub.publish("SmsReport", COUNT, seed=41)
    expected = Counter((m.obj["success"], m.obj["err_code"]) for m in report.messages)
    stack.wait(lambda: len(stack.applied()) == COUNT, "every receipt applied")
    stack.wait(stack.queue_is_empty, "every message deleted")

    def settled() -> bool:
        text = scrape_text(address)
        return text is not None and total(samples_of(text), "deleted_total") >= COUNT
    stack.wait(settled, "the deletes counted")
    text = scrape_text(address)
    assert text is not None
    s = samples_of(text)

    assert total(s, "outcomes_total", outcome="handled") == COUNT
    assert total(s, "received_total") >= COUNT
    assert total(s, "handler_duration_seconds_count", handler="recorder") == COUNT
    by_code = Counter({(ls_dict["success"] == "true", ls_dict["err_code"]): int(v)
                       for (n, ls), v in s.items()
                       if n == "alicom_receipts_sms_deliveries_total"
                       and (ls_dict := dict(ls)) and v})
    assert by_code == expected
    # The aggregate is the sum of each process's own file, and each file matches what that
    # process applied (the recorder notes the pid).
    applied_by_pid = Counter(int(str(r["pid"])) for r in stack.records())
    assert set(applied_by_pid) == {w.pid for w in workers}, "both workers took receipts"
    for w in workers:
        assert handled_in_file(directory / ("counter_%d.db" % w.pid)) == applied_by_pid[w.pid]
    secrets = (stack.sandbox.access_key_id, stack.sandbox.access_key_secret)
    assert not [x for x in secrets if x in text]

    # The serving worker stops: its live gauges go, its counts stay, the other takes over.
    server = serving(workers)[0]
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert not (directory / ("gauge_livesum_%d.db" % server.pid)).exists()
    stack.wait(lambda: scrape_text(address) is not None, "the other worker serving")
    after = samples_of(scrape_text(address) or "")
    assert total(after, "outcomes_total", outcome="handled") == COUNT
    assert total(after, "in_flight") == 0
    # Both have served, one after the other (info lines reach the log within 0.1 s).
    stack.wait(lambda: len(serving(workers)) == 2, "the takeover logged")
