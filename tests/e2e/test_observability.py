"""Observability end to end, on one world shared by the module: two "hosts" (each its own
metrics address and multiprocess directory), host 1 running a worker, the push server, the
push worker and a reconcile run, host 2 a second worker; the sandbox with faults; a real
Prometheus (Debian's package) scraping both hosts with the shipped alert rules loaded.

* every metric of the catalogue appears on /metrics;
* summing the two hosts' scrapes gives the true totals;
* no published phone number appears in any log line, Redis key name or metric;
* every panel of deploy/grafana/alicom-receipts.json returns data through Prometheus' HTTP
  API, and every shipped alert rule evaluates without error.

With OBSERVABILITY_PICTURE_DATA=<file> the dashboard's key queries over the run are saved
there for bench/observability_picture.py (the README's picture).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_dysmsapi20170525.models import SendSmsRequest

from alicom_sandbox.prometheus_server import PrometheusServer, running_prometheus
from alicom_sandbox.publisher import PublishReport
from alicom_sandbox.redis_server import RedisServer, free_port
from alicom_sandbox.testing import SandboxHandle
from consumer.keys import ENV_SECRET
from consumer.reports.tracking import SendTracker, TrackedSend
from consumer.runtime.instruments import CATALOGUE, exposed_names
from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, WorkerProcess, wait_until, worker_env
from tests.e2e.test_metrics_e2e import Samples, samples_of, scrape_text
from tests.e2e.test_push_e2e import post, push_stored
from tests.e2e.test_reconcile import _client, _dysms

pytestmark = pytest.mark.slow

DASHBOARD = REPO / "deploy" / "grafana" / "alicom-receipts.json"
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
PUBLISHED = 150
LOST_SENDS = 3


@dataclass
class World:
    stack: Stack
    prometheus: PrometheusServer
    addresses: tuple[str, str]
    report: PublishReport
    push_phones: list[str]
    lost_phones: list[str]
    env: dict[str, str]
    logs: list[Path] = field(default_factory=list)
    started_at: float = 0.0

    def scrape(self, host: int) -> str:
        text = scrape_text(self.addresses[host])
        assert text is not None, "host %d serves no metrics" % (host + 1)
        return text

    def phones(self) -> set[str]:
        published = {str(m.obj["phone_number"]) for m in self.report.messages
                     if isinstance(m.obj, dict) and m.obj.get("phone_number")}
        return published | set(self.push_phones) | set(self.lost_phones)


def _push_reports(phones: list[str]) -> list[dict[str, Any]]:
    return [{"phone_number": p, "send_time": "2026-01-01 00:00:00",
             "report_time": "2026-01-01 00:00:03", "success": i % 4 != 0,
             "err_code": "DELIVERED" if i % 4 else "MK:0001", "err_msg": "",
             "sms_size": "1", "biz_id": "777^%d" % i, "out_id": "p%d" % i}
            for i, p in enumerate(phones)]


def _spawn(world_env: dict[str, str], tmp: Path, command: str, config: Path,
           *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = tmp / ("%s.log" % command)
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "consumer", command, "--config",
                                 str(config), *args], cwd=REPO, env=world_env, stdout=log,
                                stderr=subprocess.STDOUT)
    return proc, log_path


def _lose_sends(stack: Stack, tracker: SendTracker, phones: list[str]) -> None:
    """Sends the platform never reports (loss rate 1), tracked for reconcile to find."""
    _dysms(stack, account_id=stack.account_id, loss_rate=1.0)
    answer = _client(stack).send_sms(SendSmsRequest(
        phone_numbers=",".join(phones), sign_name="沙箱", template_code="SMS_1")).body
    assert answer.code == "OK", answer.message
    tracker.record_many(TrackedSend(answer.biz_id, p, time.time()) for p in phones)
    wait_until(lambda: stack.sandbox.admin("GET", "/_sandbox/dysms")["counters"].get("lost")
               == len(phones), 60, "the sends lost")


def _start(stack: Stack, prom: PrometheusServer, addresses: tuple[str, str],
           env: dict[str, str], procs: list[subprocess.Popen[bytes]]) -> World:
    """Starts the processes (the push ones into `procs`), runs the traffic, the faults and a
    reconcile run, and returns once everything settled."""
    host1, workers, push_url, logs = _start_processes(stack, addresses, env, procs)
    world = World(stack, prom, addresses, PublishReport("", "", 0, (), 0.0), [], [], env,
                  logs, time.time())
    base_phone = random.randrange(10**7, 8 * 10**7)
    expected = _traffic_through_faults(world, workers, push_url, base_phone)
    _reconcile_then_push_late(world, host1, push_url, expected, base_phone)
    # Prometheus scrapes every second: a few more scrapes see the reconcile run's counters.
    time.sleep(4)
    return world


def _start_processes(stack: Stack, addresses: tuple[str, str], env: dict[str, str],
                     procs: list[subprocess.Popen[bytes]],
                     ) -> tuple[Path, list[WorkerProcess], str, list[Path]]:
    """Two hosts' workers, host 1's push server and push worker, each serving metrics; once
    all answer: host 1's config, the workers, the push URL and every log."""
    tmp = stack.tmp
    push_port = free_port()
    base = {"push": {"listen": "127.0.0.1:%d" % push_port, "reclaim_idle_s": 4, "block_s": 0.5,
                     "batch_size": 8, "allow_volatile": True},  # the tests' Redis has no AOF
            "worker": {"handler_deadline_s": 2, "shutdown_budget_s": 10}}
    host1 = stack.config("host1.toml", metrics={"address": addresses[0],
                                                "multiproc_dir": str(tmp / "host1")}, **base)
    with host1.open("a", encoding="utf-8") as f:
        # The send tracker (for reconcile) and the delivery statistics (their once-markers
        # are Redis keys named after receipts).
        f.write('\n[[handlers]]\nuse = "consumer.handlers.tracking:SendTracker"\n'
                'options = { url = "%s" }\n\n[[handlers]]\nuse = "delivery-stats"\n'
                'options = { url = "%s" }\n\n[reconcile]\n'
                % (stack.redis_server.url, stack.redis_server.url))
    host2 = stack.config("host2.toml", metrics={"address": addresses[1],
                                                "multiproc_dir": str(tmp / "host2")}, **base)
    workers = [WorkerProcess(host1, "SmsReport", env, tmp / "worker-1.log").start(),
               WorkerProcess(host2, "SmsReport", env, tmp / "worker-2.log").start()]
    stack.workers.extend(workers)
    push_server, push_server_log = _spawn(env, tmp, "push-server", host1)
    push_worker, push_worker_log = _spawn(env, tmp, "push-worker", host1)
    procs.extend([push_server, push_worker])
    push_url = "http://127.0.0.1:%d/alicom" % push_port
    wait_until(lambda: post(push_url + "/SmsReport")[0] == 200, 60, "the push server")
    stack.wait(lambda: all(any(e.get("event") == "ready" for e in w.log_lines())
                           for w in workers), "both workers polling")
    return host1, workers, push_url, [w.log_path for w in workers] + [push_server_log,
                                                                      push_worker_log]


def _traffic_through_faults(world: World, workers: list[WorkerProcess], push_url: str,
                            base_phone: int) -> int:
    """Publishes and pushes receipts (duplicates, malformed, a review, bad requests) while
    some receive and delete calls fail; returns how many were applied once all settled."""
    stack = world.stack
    with stack.publisher() as pub:
        world.report = pub.publish("SmsReport", PUBLISHED, duplicate_rate=0.05, malformed=3,
                                   seed=1212, rate_per_s=100)
    # Faults while receiving: some receive calls fail (poll errors by kind), some deletes too.
    stack.sandbox.set_faults(error_rate=0.2)
    world.push_phones = ["139%08d" % (base_phone + i) for i in range(12)]
    reports = _push_reports(world.push_phones)
    assert push_stored(push_url + "/SmsReport", json.dumps(reports[:8]).encode())[0] == 200
    assert push_stored(push_url + "/SmsReport", json.dumps(reports[8:]).encode())[0] == 200
    review = (REPO / "consumer" / "testing" / "samples" / "push-SignSmsReport.json").read_bytes()
    assert push_stored(push_url + "/SignSmsReport", review)[0] == 200
    assert post(push_url + "/SmsReport", b"[{not json")[0] == 400
    assert post(push_url + "/NoSuchType", b"[]")[0] == 404
    # The workers meet the faults for a few seconds more; the test's own calls need none.
    wait_until(lambda: all("poll_failed" in w.log_path.read_text() for w in workers), 60,
               "a receive call failing on each host")
    stack.sandbox.reset()
    expected = (len({m.body for m in world.report.messages if m.malformed is None})
                + len(reports) + 1)
    stack.wait(lambda: len(stack.applied()) >= expected, "every receipt applied", 120)
    stack.wait(stack.queue_is_empty, "every message deleted", 120)
    return expected


def _reconcile_then_push_late(world: World, host1: Path, push_url: str, expected: int,
                              base_phone: int) -> None:
    """Loses some tracked sends' receipts, recovers them with a reconcile run, then pushes a
    few receipts spread over several scrapes."""
    stack, tmp = world.stack, world.stack.tmp
    world.lost_phones = ["137%08d" % (base_phone + i) for i in range(LOST_SENDS)]
    _lose_sends(stack, SendTracker(stack.redis), world.lost_phones)
    done = subprocess.run([sys.executable, "-m", "consumer", "reconcile", "--config",
                           str(host1), "--grace", "0s"], cwd=REPO, env=world.env,
                          capture_output=True, text=True, timeout=120, check=False)
    (tmp / "reconcile.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    world.logs.append(tmp / "reconcile.log")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "%d recovered" % LOST_SENDS in done.stdout
    # rate() needs a series to grow between two scrapes: a few pushes spread over several
    # scrape intervals keep the answer-time and handler-duration histograms moving (the
    # pushes above can all fall between two scrapes, and their p99 panels read NaN).
    late = ["139%08d" % (base_phone + 100 + i) for i in range(8)]
    world.push_phones += late
    for n in range(4):
        assert push_stored(push_url + "/SmsReport",
                          json.dumps(_push_reports(late[2 * n:2 * n + 2])).encode())[0] == 200
        time.sleep(1.5)
    stack.wait(lambda: len(stack.applied()) >= expected + LOST_SENDS + len(late),
               "the late pushes applied", 60)


@pytest.fixture(scope="module")
def world(e2e_sandbox: SandboxHandle, redis_server: RedisServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    client = redis_server.client()
    client.flushdb()
    account_id = str(random.randrange(10**15, 10**16))
    stack = Stack(e2e_sandbox, redis_server, client, tmp_path_factory.mktemp("observability"),
                  account_id)
    e2e_sandbox.create_queue(stack.queue_name("SmsReport"), visibility_timeout_s=4)
    e2e_sandbox.admin("POST", "/_sandbox/dysms/reset", {})
    env = {**worker_env(e2e_sandbox.access_key_id, e2e_sandbox.access_key_secret),
           ENV_SECRET: "observability-e2e-secret"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    addresses = ("127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with running_prometheus(addresses, [RULES]) as prom:
            yield _start(stack, prom, addresses, env, procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        for w in stack.workers:
            w.kill()
        e2e_sandbox.reset()
        e2e_sandbox.admin("POST", "/_sandbox/dysms/reset", {})
        client.flushdb()


def test_every_catalogue_metric_appears_on_the_host_endpoint(world: World) -> None:
    names = {name for name, _labels in samples_of(world.scrape(0))}
    missing = [n for spec in CATALOGUE for n in exposed_names(spec) if n not in names]
    assert not missing, missing


def _total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == "alicom_receipts_" + name and set(labels.items()) <= ls)


def test_summing_the_two_hosts_gives_the_true_totals(world: World) -> None:
    hosts = [samples_of(world.scrape(0)), samples_of(world.scrape(1))]
    # Every published message was deleted exactly once, by one of the two workers.
    deleted = [_total(s, "deleted_total") for s in hosts]
    assert all(d > 0 for d in deleted), "both hosts took messages: %s" % deleted
    assert sum(deleted) == PUBLISHED
    # Each handled SmsReport is one delivery counted by the process that handled it (MNS on
    # either host, push on host 1; reconcile's recovered ones have their own counter).
    applied = [r for r in world.stack.records() if r["source"] in ("mns", "push")]
    reports = [r for r in applied if str(r["key"]).startswith("SmsReport:")]
    assert len(applied) == len(reports) + 1  # and the one signature review pushed
    assert sum(_total(s, "sms_deliveries_total") for s in hosts) == len(reports)
    assert sum(_total(s, "outcomes_total", outcome="handled") for s in hosts) == len(applied)
    assert _total(hosts[0], "reconcile_recovered_total") == LOST_SENDS
    assert _total(hosts[1], "reconcile_recovered_total") == 0
    assert sum(_total(s, "in_flight") for s in hosts) == 0
    # Shared state (one Redis stream) is reported by the host that reads it, for max().
    assert _total(hosts[0], "push_pending") == 0


def test_no_published_phone_number_appears_in_logs_redis_key_names_or_metrics(
        world: World) -> None:
    phones = world.phones()
    assert len(phones) >= PUBLISHED // 2 + len(world.push_phones) + LOST_SENDS
    haystacks = {str(path): path.read_text(encoding="utf-8", errors="replace")
                 for path in world.logs}
    haystacks["redis keys"] = "\n".join(
        k.decode("utf-8", "replace") for k in world.stack.redis.scan_iter(count=1000))
    haystacks["host 1 metrics"] = world.scrape(0)
    haystacks["host 2 metrics"] = world.scrape(1)
    settled = [json.loads(line) for line in haystacks[str(world.logs[0])].splitlines()
               if '"receipt_settled"' in line]
    assert settled, "the worker logged its receipts"
    # A person can still tell which receipt a line is about: biz_id and the masked number.
    assert all(re.fullmatch(r"1\d{2}\*{4}\d{4}", line["phone"]) and line["biz_id"]
               for line in settled if line["outcome"] == "handled")
    assert "alicom:dedup:SmsReport:" in haystacks["redis keys"]
    assert ":once:SmsReport:" in haystacks["redis keys"]  # the delivery-stats markers
    found = sorted((where, phone) for where, text in haystacks.items()
                   for phone in phones if phone in text)
    assert not found, found[:10]


def _panel_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [(panel["title"], target["expr"]) for panel in doc["panels"]
            for target in panel.get("targets", [])]


def test_every_dashboard_panel_returns_data_from_prometheus(world: World) -> None:
    queries = _panel_queries()
    assert len(queries) >= 20
    empty = []
    for title, expr in queries:
        values = [float(s["value"][1]) for s in world.prometheus.query(expr)]
        if not any(math.isfinite(v) for v in values):
            empty.append((title, expr, values))
    picture_data = os.environ.get("OBSERVABILITY_PICTURE_DATA")
    if picture_data:
        _save_picture_data(world, Path(picture_data))
    assert not empty, empty


def test_every_alert_rule_evaluates_without_error_on_real_data(world: World) -> None:
    def loaded() -> list[dict[str, Any]]:
        groups = world.prometheus.api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]
    wait_until(lambda: bool(loaded()) and all(r.get("lastEvaluation", "").startswith("2")
                                               for r in loaded()), 60, "rules evaluated")
    rules = loaded()
    assert len(rules) == 8
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # The hosts are up and no worker died: the availability alerts stay quiet.
    firing = {r["name"] for r in rules if r["state"] == "firing"}
    assert not firing & {"AlicomReceiptsEndpointDown", "AlicomReceiptsWorkerDown"}


def _save_picture_data(world: World, path: Path) -> None:
    """Every panel's targets over the run, as Prometheus' query_range answers."""
    end = time.time()
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    series = {panel["title"]: [
        {"legend": t.get("legendFormat", ""), "result": world.prometheus.query_range(
            t["expr"], world.started_at - 5, end, 1)} for t in panel["targets"]]
        for panel in doc["panels"] if panel.get("targets")}
    path.write_text(json.dumps({"start": world.started_at - 5, "end": end,
                                "series": series}), encoding="utf-8")


def test_idle_receivers_still_show_receive_progress(world: World) -> None:
    """An empty long poll or stream read is progress: no NoReceiveProgress alert for a quiet
    queue or a push worker without pushes."""
    def last_receive() -> dict[tuple[str, str], float]:
        return {(dict(ls).get("message_type", ""), "host%d" % (host + 1)): v
                for host in (0, 1)
                for (n, ls), v in samples_of(world.scrape(host)).items()
                if n == "alicom_receipts_last_receive_timestamp_seconds"}
    before = last_receive()
    assert ("", "host1") in before, "the push worker's series"
    wait_until(lambda: all(last_receive()[k] > v for k, v in before.items()), 30,
               "every receiver's last receive moving on while idle")
