"""Two push workers and handlers slower than `reclaim_idle_s`: the entries being worked on
are leased (idle time reset, dedup claim extended) like MNS messages' visibility, so the
other worker never re-takes one while it runs: every receipt applied once, no runs overlap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, wait_until, worker_env
from tests.e2e.misbehaving import Stamps
from tests.e2e.test_push_e2e import SECRET, Procs, drained, post, push_stored

pytestmark = pytest.mark.slow


def test_two_push_workers_with_slow_handlers_apply_each_receipt_once(stack: Stack) -> None:
    procs = Procs(stack)
    stamps_path = stack.tmp / "stamps.jsonl"
    # Each call takes 5 s, past the 3 s after which an idle entry is re-taken by XAUTOCLAIM
    # (and past its 2 s deadline: stuck, waited for, its success kept).
    procs.config = stack.config(
        "push.toml",
        push={"listen": "127.0.0.1:%d" % procs.port, "secret": SECRET, "reclaim_idle_s": 3,
              "block_s": 0.5, "batch_size": 8, "allow_volatile": True},  # no AOF here
        worker={"handler_deadline_s": 2, "shutdown_budget_s": 10},
        handlers=[{"use": "tests.e2e.misbehaving:Stamper",
                   "options": {"path": str(stamps_path), "markers": str(stack.tmp / "m"),
                               "sleep_s": 5}}])
    env = worker_env(stack.sandbox.access_key_id, stack.sandbox.access_key_secret)
    second_log = open(stack.tmp / "push-worker-2.log", "ab")  # noqa: SIM115 - closed below
    second = None
    try:
        procs.start("push-server")
        procs.start("push-worker")
        second = subprocess.Popen(
            [sys.executable, "-m", "consumer", "push-worker", "--config", str(procs.config)],
            cwd=REPO, env=env, stdout=second_log, stderr=subprocess.STDOUT)
        wait_until(lambda: procs.alive() and post(procs.url + "/SmsReport")[0] == 200, 60,
                   "the push server to answer")
        reports = [{"phone_number": "1381111****", "send_time": "2017-01-01 00:00:00",
                    "report_time": "2017-01-01 00:00:01", "success": True,
                    "err_code": "DELIVERED", "err_msg": "ok", "sms_size": "1",
                    "biz_id": "901^%d" % i, "out_id": "p%d" % i} for i in range(8)]
        assert push_stored(procs.url + "/SmsReport", json.dumps(reports).encode())[0] == 200
        stack.wait(lambda: procs.alive() and second.poll() is None
                   and len(Stamps(stamps_path).ended()) == 8 and drained(stack),
                   "eight receipts applied and the stream drained", 90)
        stamps = Stamps(stamps_path)
        assert set(stamps.ended().values()) == {1}
        assert set(stamps.started().values()) == {1}  # never re-taken while running
        stamps.assert_no_overlap()
    finally:
        procs.kill_all()
        if second is not None:
            second.kill()
            second.wait(10)
        second_log.close()
