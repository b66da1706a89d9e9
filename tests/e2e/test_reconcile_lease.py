"""Two `reconcile` runs started at once (a timer on every host): one works, the other says
another run holds the lease and exits 0 without a single QuerySendDetails call."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from consumer.reports.tracking import SendTracker, TrackedSend
from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, worker_env
from tests.e2e.test_reconcile import _configs, _counters, _dysms, _phones, sending

pytestmark = pytest.mark.slow  # real worker / push processes

__all__ = ["sending"]  # the fixture, used by name


def test_two_runs_at_once_one_works_the_other_leaves_saying_so(sending: Stack) -> None:
    stack = sending
    _dysms(stack, loss_rate=1.0, query_qps=50)
    tracker = SendTracker(stack.redis)
    _, config = _configs(stack, qps=2, batch_size=1)  # 6 lookups at 2/s: a run of ~3 s
    phones = _phones(6)
    sent_at = time.time() - 60
    tracker.record_many(TrackedSend("777^%d" % i, p, sent_at) for i, p in enumerate(phones))
    env = worker_env(stack.sandbox.access_key_id, stack.sandbox.access_key_secret)
    argv = [sys.executable, "-m", "consumer", "reconcile", "--config", str(config),
            "--grace", "0s"]
    runs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    codes = [run.returncode for run in runs]
    busy = [i for i, out in enumerate(outputs) if "another run holds the lease" in out]
    assert len(busy) == 1, outputs
    worked = 1 - busy[0]
    assert codes[busy[0]] == 0, outputs[busy[0]]
    assert "pending past the grace period" in outputs[worked], outputs[worked]
    assert "pending past the grace period" not in outputs[busy[0]]
    assert "6 pending past the grace period" in outputs[worked], outputs[worked]
    assert _counters(stack).get("queries", 0) == 6, _counters(stack)  # none from the second
