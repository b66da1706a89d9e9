"""Prometheus metrics in multiprocess mode: what the stats feed becomes on the scrape endpoint,
across processes, with real mmap files, a real HTTP server and real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from alicom_sandbox.redis_server import free_port
from consumer.pipeline.dispatch import STUCK, Dispatcher
from consumer.pipeline.stats import Stats
from consumer.receipts import (
    Receipt,
    ReceiptMeta,
    SignSmsReport,
    SmsReport,
    SmsUp,
    TemplateSmsReport,
)
from consumer.runtime.metrics import (
    Exposition,
    MetricsHandle,
    MetricsSettings,
    setup_metrics,
)

REPO = Path(__file__).resolve().parents[1]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Q = "SmsReport"


def scrape(address: str) -> Samples:
    with urllib.request.urlopen("http://%s/metrics" % address, timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(("alicom_receipts_" + name,
                        frozenset({"message_type": Q, **labels}.items())), 0.0)


def report(n: int, *, success: bool = True, err_code: str = "DELIVERED") -> SmsReport:
    return SmsReport(raw={}, meta=ReceiptMeta("mns", "q", "m-%d" % n, 1),
                     phone_number="1380000%04d" % n, biz_id="biz-%d" % n, success=success,
                     err_code=err_code)


def uplink(n: int) -> SmsUp:
    return SmsUp(raw={}, meta=ReceiptMeta("mns", "q", "u-%d" % n, 1), phone_number="139",
                 content="hi", send_time="2017-01-01 00:00:00", dest_code="1",
                 sequence_id=str(n))


@dataclass
class Running:
    handle: MetricsHandle
    stats: Stats
    address: str
    directory: Path

    def scrape(self) -> Samples:
        return scrape(self.address)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    handles: list[MetricsHandle] = []

    def make(**options: object) -> Running:
        address = "127.0.0.1:%d" % free_port()
        directory = tmp_path / "metrics"
        stats = Stats()
        settings = MetricsSettings(address=address, multiproc_dir=str(directory),
                                   **options)  # type: ignore[arg-type]
        # A long interval: the tests call tick() themselves, nothing depends on the timer.
        handle = setup_metrics(settings, Q, stats, interval_s=3600)
        assert handle is not None
        handles.append(handle)
        return Running(handle, stats, address, directory)

    yield make
    for h in handles:
        h.close()


def test_stats_counters_appear_as_counters_labelled_by_message_type(
        start: Callable[..., Running]) -> None:
    m = start()
    m.stats.incr("received", 16)
    m.stats.incr("received", 4)
    for name, amount in [("empty_polls", 3), ("token_refreshes", 1), ("duplicates", 2),
                         ("retries", 5), ("dead_letters", 1), ("visibility_extensions", 2),
                         ("delete_failures", 1)]:
        m.stats.incr(name, amount)

    s = m.scrape()

    assert value(s, "received_total") == 20
    assert value(s, "empty_polls_total") == 3
    assert value(s, "visibility_extensions_total") == 2
    assert value(s, "delete_failures_total") == 1
    # outcomes_total{outcome} counts these; a second series each would count them twice.
    for name in ("handled", "duplicates", "retries", "dead_letters"):
        assert ("alicom_receipts_%s_total" % name, frozenset({("message_type", Q)})) not in s


def test_receive_progress_poll_errors_by_kind_and_token_health(
        start: Callable[..., Running]) -> None:
    m = start()
    before = time.time()
    m.stats.incr("empty_polls")
    m.stats.event("poll_error", kind="auth")
    m.stats.event("poll_error", kind="transient")
    m.stats.event("poll_error", kind="transient")
    m.stats.event("token_refreshed", before + 3600)
    m.stats.event("token_fetch_failed")

    s = m.scrape()

    assert before <= value(s, "last_receive_timestamp_seconds") <= time.time()
    assert value(s, "poll_errors_total", kind="auth") == 1
    assert value(s, "poll_errors_total", kind="transient") == 2
    assert value(s, "token_refreshes_total") == 1
    assert value(s, "token_expiry_timestamp_seconds") == before + 3600
    assert value(s, "token_refresh_failures_total") == 1
    assert s[("alicom_receipts_processes", frozenset({("role", "worker"),
                                                      ("message_type", Q)}))] == 1
    assert any(name == "alicom_receipts_build_info" and dict(labels)["role"] == "worker"
               for name, labels in s)


def test_queue_lag_is_now_minus_enqueue_time_and_delivery_delay_is_report_minus_send(
        start: Callable[..., Running]) -> None:
    m = start()
    enqueued_ms = int((time.time() - 42) * 1000)
    receipt = SmsReport(raw={}, meta=ReceiptMeta("mns", "q", "m-1", 1, enqueued_ms),
                        phone_number="13800000001", biz_id="b", success=True,
                        send_time="2026-01-01 10:00:00", report_time="2026-01-01 10:00:07")
    m.stats.outcome("handled", "log", 0.01, receipt)
    m.stats.outcome("dead_letter", "", 0.0, None)  # no receipt: no lag to measure

    s = m.scrape()

    assert value(s, "queue_lag_seconds_count", source="mns") == 1
    assert 42 <= value(s, "queue_lag_seconds_sum", source="mns") < 42 + 60
    assert value(s, "queue_lag_seconds_bucket", source="mns", le="30.0") == 0
    assert value(s, "queue_lag_seconds_bucket", source="mns", le="60.0") == 1
    assert value(s, "delivery_delay_seconds_sum") == 7
    assert value(s, "delivery_delay_seconds_bucket", le="5.0") == 0
    assert value(s, "delivery_delay_seconds_bucket", le="10.0") == 1


def test_outcomes_durations_and_sms_delivery_outcomes_by_err_code(
        start: Callable[..., Running]) -> None:
    m = start()
    m.stats.outcome("handled", "log", 0.002, report(1))
    m.stats.outcome("handled", "log", 0.2, report(2, success=False, err_code="IC:0015"))
    m.stats.outcome("handled", "log", 0.2, report(3, success=False, err_code="IC:0015"))
    m.stats.outcome("handled", "log", 0.003, uplink(1))           # not a delivery report
    m.stats.outcome("duplicate", "", 0.0, report(1))              # counted once, when handled
    m.stats.outcome("retry", "webhook", 2.0, report(4, success=False, err_code="MK:0001"))
    m.stats.outcome("dead_letter", "", 0.0, None)                 # a body that did not decode
    m.stats.outcome("in_progress", "", 0.0, report(5))            # left: another holds it
    m.stats.outcome("in_progress", "", 0.0, report(6))

    s = m.scrape()

    assert {o: value(s, "outcomes_total", outcome=o)
            for o in ("handled", "duplicate", "retry", "dead_letter", "in_progress")} == {
        "handled": 3, "duplicate": 1, "retry": 1, "dead_letter": 1, "in_progress": 2}
    # A receipt is labelled with its own type (a push worker takes every type).
    assert s[("alicom_receipts_outcomes_total", frozenset(
        {"message_type": "SmsUp", "outcome": "handled"}.items()))] == 1
    assert value(s, "sms_deliveries_total", success="true", err_code="DELIVERED") == 1
    assert value(s, "sms_deliveries_total", success="false", err_code="IC:0015") == 2
    assert value(s, "sms_deliveries_total", success="false", err_code="MK:0001") == 0
    assert value(s, "handler_duration_seconds_count", handler="log") == 3
    assert value(s, "handler_duration_seconds_bucket", handler="log", le="0.005") == 1
    assert value(s, "handler_duration_seconds_count", handler="webhook") == 1
    assert value(s, "handler_duration_seconds_sum", handler="webhook") == 2.0


def test_review_results_are_counted_by_state(start: Callable[..., Running]) -> None:
    m = start()
    meta = ReceiptMeta("mns", "q", "s-1", 1)
    for status in ("approving", "Rejected", "approved", "withdrawn"):
        m.stats.outcome("handled", "review-status", 0.001, SignSmsReport(
            raw={}, meta=meta, order_id="1", sign_status=status))
    m.stats.outcome("retry", "review-status", 0.001, TemplateSmsReport(
        raw={}, meta=meta, order_id="2", template_status="approved"))  # not handled: not counted

    s = m.scrape()

    assert {state: s.get(("alicom_receipts_review_results_total", frozenset(
        {"message_type": "SignSmsReport", "state": state}.items())), 0.0)
        for state in ("approving", "approved", "rejected", "other")} == {
        "approving": 1, "approved": 1, "rejected": 1, "other": 1}
    assert not any(name == "alicom_receipts_review_results_total"
                   and dict(labels)["message_type"] == "TemplateSmsReport"
                   for name, labels in s)


def test_err_code_labels_are_capped_and_the_rest_count_as_other(
        start: Callable[..., Running]) -> None:
    m = start(max_err_codes=3)
    codes = ["A:0001", "B:0002", "C:0003", "D:0004", "E:0005", "A:0001", "x" * 500]
    for n, code in enumerate(codes):
        m.stats.outcome("handled", "log", 0.01, report(n, success=False, err_code=code))

    s = m.scrape()

    labelled = {dict(labels)["err_code"]: v for (name, labels), v in s.items()
                if name == "alicom_receipts_sms_deliveries_total"}
    assert labelled == {"A:0001": 2, "B:0002": 1, "C:0003": 1, "other": 3}


def test_the_exposition_carries_only_known_labels(start: Callable[..., Running]) -> None:
    m = start()
    m.stats.incr("received", 1)
    m.stats.outcome("handled", "log", 0.01, report(1))
    m.stats.add_in_flight(1)
    m.handle.tick()

    s = m.scrape()

    assert {key for (_name, labels) in s for key, _v in labels} == {
        "message_type", "outcome", "handler", "le", "success", "err_code", "version", "role"}
    assert all(name.startswith("alicom_receipts_") for name, _ in s)


def test_in_flight_is_sampled_and_stuck_handler_threads_come_from_the_dispatcher(
        start: Callable[..., Running]) -> None:
    m = start()
    m.stats.add_in_flight(5)
    m.stats.add_in_flight(-1)
    m.handle.tick()
    release = threading.Event()

    class Wedged:
        name = "wedged"

        def handle(self, receipt: Receipt) -> None:
            release.wait(60)

    dispatcher = Dispatcher({Q: [Wedged()]}, deadline_s=0.2, max_workers=2,
                            stuck_gauge=m.handle.stuck_gauge)
    try:
        outcomes = dispatcher.dispatch([report(1)], late=lambda _i, _o: None)
        assert outcomes[0].reason == STUCK
        s = m.scrape()
        assert value(s, "in_flight") == 4
        assert value(s, "stuck_handler_threads") == 1
        release.set()
        wait_for(lambda: dispatcher.stuck_threads == 0)
        assert value(m.scrape(), "stuck_handler_threads") == 0
    finally:
        release.set()
        dispatcher.close()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        done.wait(0.05)
    raise AssertionError("condition not reached")


CHILD = """
import sys
from consumer.runtime.metrics import setup_metrics
from consumer.settings import MetricsSettings
from consumer.pipeline.stats import Stats
stats = Stats()
handle = setup_metrics(MetricsSettings(address=sys.argv[1], multiproc_dir=sys.argv[2]),
                       "SmsReport", stats, interval_s=3600)
assert "prometheus_client" in sys.modules
stats.incr("received", int(sys.argv[3]))
stats.add_in_flight(int(sys.argv[4]))
handle.tick()
print("ready", flush=True)
if sys.stdin.readline().strip() == "close":
    handle.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def child(address: str, directory: Path, received: int,
          in_flight: int) -> tuple[subprocess.Popen[str], str]:
    """A fresh interpreter running setup_metrics; returns it and its output up to "ready"."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, address, str(directory),
                             str(received), str(in_flight)], cwd=REPO, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = []
    while (line := proc.stdout.readline()) and line.strip() != "ready":
        lines.append(line)
    assert line.strip() == "ready", "".join(lines)
    return proc, "".join(lines)


def test_the_serving_process_sums_every_process_and_drops_the_gauges_of_dead_ones(
        start: Callable[..., Running]) -> None:
    m = start()
    m.stats.incr("received", 10)
    m.stats.add_in_flight(1)
    m.handle.tick()

    clean, clean_log = child(m.address, m.directory, 7, 2)
    killed, _ = child(m.address, m.directory, 5, 3)
    try:
        assert "metrics_address_busy" in clean_log
        s = m.scrape()
        assert value(s, "received_total") == 22
        assert value(s, "in_flight") == 6
        assert any(p.name == "counter_%d.db" % clean.pid for p in m.directory.iterdir())

        # A clean exit removes its live gauges (mark_process_dead); its counts stay.
        assert clean.stdin is not None and clean.stdout is not None
        clean.stdin.write("close\n")
        clean.stdin.flush()
        assert clean.stdout.readline().strip() == "closed"
        assert value(m.scrape(), "in_flight") == 4
        # SIGKILL leaves its files behind; the next scrape finds the PID gone.
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        s = m.scrape()
        assert value(s, "in_flight") == 1
        assert value(s, "received_total") == 22
    finally:
        for proc in (clean, killed):
            proc.kill()
            proc.communicate(timeout=30)


def test_one_process_serves_the_address_and_another_takes_over_when_it_stops(
        tmp_path: Path) -> None:
    address = "127.0.0.1:%d" % free_port()
    first, second = Exposition(address, str(tmp_path)), Exposition(address, str(tmp_path))
    try:
        assert first.try_serve()
        with capture_logs() as logs:
            assert not second.try_serve()
            assert not second.try_serve()
        assert [e["event"] for e in logs] == ["metrics_address_busy"]  # said once
        scrape(address)

        first.close()
        with capture_logs() as logs:
            assert second.try_serve()
        assert logs[0]["event"] == "metrics_serving" and logs[0]["taken_over"] is True
        assert isinstance(scrape(address), dict)
    finally:
        first.close()
        second.close()


def test_close_puts_back_the_value_class_it_found(start: Callable[..., Running]) -> None:
    before = values.ValueClass
    m = start()
    assert values.ValueClass._multiprocess
    m.handle.close()
    assert values.ValueClass is before


def test_disabled_metrics_never_import_prometheus_client() -> None:
    code = ("import sys\n"
            "from consumer.runtime.metrics import setup_metrics\n"
            "from consumer.settings import MetricsSettings\n"
            "from consumer.pipeline.stats import Stats\n"
            "assert setup_metrics(MetricsSettings(address=None), 'SmsReport', Stats()) is None\n"
            "assert 'prometheus_client' not in sys.modules, 'imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert done.returncode == 0, done.stderr


def test_extra_routes_answer_beside_metrics(tmp_path: Path) -> None:
    address = "127.0.0.1:%d" % free_port()
    exposition = Exposition(address, str(tmp_path))
    exposition.routes["/healthz"] = lambda: (200, "ok\n")
    exposition.routes["/readyz"] = lambda: (503, "redis: refused\n")
    try:
        assert exposition.try_serve()
        with urllib.request.urlopen("http://%s/healthz" % address, timeout=10) as resp:
            assert (resp.status, resp.read()) == (200, b"ok\n")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen("http://%s/readyz" % address, timeout=10)
        assert refused.value.code == 503 and refused.value.read() == b"redis: refused\n"
        assert isinstance(scrape(address), dict)
    finally:
        exposition.close()
