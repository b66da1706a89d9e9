"""Two `reconcile` runs at once (a timer on every host): one works, the other, started while
the first holds the lease, says another run holds it and exits 0 without a single
QuerySendDetails call."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from consumer.reports.tracking import SendTracker, TrackedSend
from consumer.settings import TrackingSettings
from consumer.sources.reconcile.run import lease_key
from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, worker_env
from tests.e2e.test_reconcile import _configs, _counters, _dysms, _phones, sending

pytestmark = pytest.mark.slow  # real worker / push processes

__all__ = ["sending"]  # the fixture, used by name


def test_two_runs_at_once_one_works_the_other_leaves_saying_so(sending: Stack) -> None:
    stack = sending
    _dysms(stack, loss_rate=1.0, query_qps=50)
    tracker = SendTracker(stack.redis)
    _, config = _configs(stack, qps=1, batch_size=1)  # 6 lookups at 1/s: a run of ~6 s
    phones = _phones(6)
    sent_at = time.time() - 60
    tracker.record_many(TrackedSend("777^%d" % i, p, sent_at) for i, p in enumerate(phones))
    env = worker_env(stack.sandbox.access_key_id, stack.sandbox.access_key_secret)
    argv = [sys.executable, "-m", "consumer", "reconcile", "--config", str(config),
            "--grace", "0s"]
    # The second starts once the first holds the lease: two processes Popen'd together can
    # start seconds apart on a loaded machine, and one that came after the first run ended
    # would (rightly) work too.
    runs = [_reconcile_run(argv, env)]
    deadline = time.monotonic() + 120
    while stack.redis.get(lease_key(TrackingSettings())) is None:
        assert runs[0].poll() is None, runs[0].communicate()[0]
        assert time.monotonic() < deadline, "the first run never took the lease"
        time.sleep(0.02)
    runs.append(_reconcile_run(argv, env))
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


def _reconcile_run(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
