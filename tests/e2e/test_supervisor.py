"""`alicom-receipts run`: restarts, backoff, recycling and stopping, with real processes.

The first tests drive the `Supervisor` state machine step by step over short-lived real
processes (a hand-moved clock stands in for waiting out the backoff); the others run the real
`alicom-receipts run` against the sandbox and Redis, and read what happened from its JSON log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.runtime.supervisor import Slot, Supervisor, after_exit, restart_delay
from consumer.runtime.wakeups import NotifyInbox, SignalPipe
from consumer.settings import RunSettings
from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, wait_until, worker_env

FAST = RunSettings(restart_initial_s=1.0, restart_max_s=8.0, stable_after_s=30.0)


def report_key(obj: dict[str, str]) -> str:
    return "SmsReport:%s:%s" % (obj["biz_id"], obj["phone_number"])


# -- the state machine, over real short-lived processes ---------------------------------------

class Clock:
    """Monotonic time the test moves by hand, so no test sleeps through a backoff."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_restart_delay_doubles_up_to_the_cap() -> None:
    assert [restart_delay(n, FAST) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_a_stable_run_clears_the_failures_and_a_clean_exit_restarts_at_once() -> None:
    slot = Slot("SmsReport", 1, failures=3)
    assert after_exit(slot, 1, ran_s=2.0, run=FAST) == 8.0  # fourth failure in a row
    assert after_exit(slot, -9, ran_s=31.0, run=FAST) == 1.0  # ran stably: first failure again
    assert slot.failures == 1
    assert after_exit(slot, 0, ran_s=1.0, run=FAST) == 0.0  # recycling is no failure
    assert slot.failures == 1


def test_a_failing_process_is_restarted_after_a_growing_delay() -> None:
    clock = Clock()
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(slot: Slot) -> subprocess.Popen[bytes]:
        spawned.append(python("raise SystemExit(3)"))
        return spawned[-1]

    sup = Supervisor([Slot("SmsReport", 1)], spawn, FAST, stop_budget_s=5, clock=clock)
    sup.start_all()
    for delay in (1.0, 2.0, 4.0):
        spawned[-1].wait(30)
        sup.reap()
        assert sup.timeout() == delay
        clock.now += delay - 0.5
        sup.restart_due()
        assert len(spawned) == int(delay).bit_length(), "restarted before its delay"
        clock.now += 0.5
        sup.restart_due()
    assert len(spawned) == 4
    assert sup.slots[0].restarts == 3


def test_a_recycled_process_comes_back_at_once() -> None:
    clock = Clock()
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(slot: Slot) -> subprocess.Popen[bytes]:
        spawned.append(python("raise SystemExit(0)" if not spawned else "import time; "
                              "time.sleep(60)"))
        return spawned[-1]

    sup = Supervisor([Slot("SmsReport", 1)], spawn, FAST, stop_budget_s=5, clock=clock)
    sup.start_all()
    spawned[0].wait(30)
    sup.reap()
    sup.restart_due()
    assert len(spawned) == 2
    sup.request_stop(signal.SIGTERM)
    assert spawned[1].wait(30) == -signal.SIGTERM
    sup.reap()
    assert sup.finished()
    assert sup.exit_code() == 0  # died of the SIGTERM it was given before it had handlers


def test_a_worker_that_cannot_be_started_is_tried_again_after_the_backoff() -> None:
    clock = Clock()
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(slot: Slot) -> subprocess.Popen[bytes]:
        if not spawned and slot.failures == 0:
            raise OSError(11, "Resource temporarily unavailable")
        spawned.append(python("raise SystemExit(0)"))
        return spawned[-1]

    sup = Supervisor([Slot("SmsReport", 1)], spawn, FAST, stop_budget_s=5, clock=clock)
    sup.start_all()
    assert sup.slots[0].proc is None
    assert sup.timeout() == 1.0
    clock.now += 1.0
    sup.restart_due()
    assert len(spawned) == 1
    spawned[0].wait(30)


def test_stop_passes_sigterm_on_and_kills_what_outlives_the_deadline() -> None:
    clock = Clock()
    ignores_term = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                    "print('ready', flush=True); time.sleep(60)")
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(slot: Slot) -> subprocess.Popen[bytes]:
        procs.append(subprocess.Popen([sys.executable, "-c", ignores_term],
                                      stdout=subprocess.PIPE))
        return procs[-1]

    sup = Supervisor([Slot("SmsUp", 1)], spawn, FAST, stop_budget_s=5, clock=clock)
    sup.start_all()
    assert procs[0].stdout is not None
    assert procs[0].stdout.readline() == b"ready\n"
    sup.request_stop(signal.SIGTERM)
    sup.enforce_deadline()
    sup.reap()
    assert not sup.finished(), "it ignores SIGTERM and the deadline has not passed"
    assert sup.timeout() == 5.0
    clock.now += 5.0
    sup.enforce_deadline()
    assert procs[0].wait(30) == -signal.SIGKILL
    procs[0].stdout.close()
    sup.reap()
    assert sup.finished()
    assert sup.exit_code() == 1
    sup.restart_due()
    assert len(procs) == 1, "nothing restarts while stopping"


# -- the real `alicom-receipts run` ------------------------------------------------------------

class Run:
    """`python -m consumer run` as a subprocess; its log (and its workers') goes to a file."""

    def __init__(self, stack: Stack, config: Path, processes: int) -> None:
        self.log_path = stack.tmp / "run.log"
        env = worker_env(stack.sandbox.access_key_id, stack.sandbox.access_key_secret)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "consumer", "run", "--config", str(config),
                 "--processes", str(processes)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if line.get("event") == name:
                    out.append(line)
        return out

    def child_pids(self) -> dict[str, int]:
        """The current pid of each slot, from the latest `child_started` line."""
        return {e["child"]: e["child_pid"] for e in self.events("child_started")}

    def wait(self, predicate: Any, what: str, timeout_s: float = 60) -> None:
        def check() -> bool:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise AssertionError("run exited %s:\n%s" % (self.proc.returncode, tail))
            return bool(predicate())
        wait_until(check, timeout_s, what)

    def kill_all(self) -> None:
        """Teardown: SIGKILL to `run` and to every worker it ever started."""
        for pid in [self.proc.pid, *(e["child_pid"] for e in self.events("child_started"))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def start_run(stack: Stack) -> Iterator[Any]:
    runs: list[Run] = []

    def start(config: Path, processes: int = 2) -> Run:
        runs.append(Run(stack, config, processes))
        return runs[-1]

    yield start
    for run in runs:
        run.kill_all()


# Two workers each hold 32 messages on a 4 s visibility: only a heartbeat on time keeps a live
# worker's messages from coming back, and the assertion allows repeats of the victim's only.
@pytest.mark.alone
def test_run_restarts_a_killed_worker_and_the_receipts_it_held_are_applied_once(
        stack: Stack, start_run: Any) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 300, seed=21)
    expected = {report_key(m.obj) for m in report.messages}
    config = stack.config(recorder={"slow_s": 0.1, "started_path": str(stack.started_path)},
                          worker={"handler_threads": 4, "in_flight_max": 32})
    run = start_run(config, 2)
    run.wait(lambda: len({r["pid"] for r in stack.records()}) == 2, "both workers applying")
    pids = run.child_pids()

    def held_by(pid: int) -> set[str]:
        applied = {r["key"] for r in stack.records() if r["pid"] == pid}
        return {str(r["key"]) for r in stack.started() if r["pid"] == pid} - applied

    victim = pids["SmsReport-1"]
    run.wait(lambda: held_by(victim), "the worker holding receipts in its handlers")
    os.kill(victim, signal.SIGKILL)
    held = held_by(victim)
    run.wait(lambda: run.child_pids()["SmsReport-1"] != victim, "the killed worker restarted")
    run.wait(lambda: set(stack.applied()) == expected, "all applied")
    run.wait(stack.queue_is_empty, "all deleted")

    exited = [e for e in run.events("child_exited") if e["child_pid"] == victim]
    assert exited[0]["signal"] == "SIGKILL"
    assert exited[0]["restart_in_s"] == 1.0
    records = stack.records()
    applied = stack.applied()
    assert held, "the killed worker held nothing"
    for key in held:
        assert applied[key] == 1, key
        assert [r["pid"] for r in records if r["key"] == key] != [victim]
    # A receipt whose handler had returned before the kill but whose completion was not yet
    # written (the ackers record completions in batches) runs again: only the killed
    # worker's last applications may repeat, at most its in-flight window (32).
    repeated = {k for k, n in applied.items() if n > 1}
    assert repeated <= {r["key"] for r in records if r["pid"] == victim}
    assert len(repeated) <= 32
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(60) == 0


def test_run_restarts_a_recycled_worker_at_once_and_sigterm_drains_them_all(
        stack: Stack, start_run: Any) -> None:
    with stack.publisher() as pub:
        report = pub.publish("SmsReport", 200, seed=22)
    expected = {report_key(m.obj) for m in report.messages}
    run = start_run(stack.config(worker={"max_receipts": 40}), 2)
    run.wait(lambda: set(stack.applied()) == expected, "all applied")
    run.wait(stack.queue_is_empty, "all deleted")
    run.wait(lambda: any(e["code"] == 0 for e in run.events("child_exited")),
             "a worker recycled")
    recycled = next(e for e in run.events("child_exited") if e["code"] == 0)
    assert recycled["restart_in_s"] == 0.0
    run.wait(lambda: run.child_pids()[recycled["child"]] != recycled["child_pid"], "its successor")
    # Every worker is up (its signal handlers installed) before the stop.
    run.wait(lambda: len(run.events("worker_started")) == len(run.events("child_started")),
             "every worker started")
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(60) == 0
    stopped = run.events("child_stopped")
    assert sorted(e["child"] for e in stopped) == ["SmsReport-1", "SmsReport-2"]
    assert all(e["code"] == 0 for e in stopped)
    assert run.events("worker_stopped")[-1]["drained"] is True
    assert max(stack.applied().values()) == 1
    assert run.events("run_stopped")[-1]["code"] == 0


def test_a_second_sigterm_ends_the_workers_at_once(stack: Stack, start_run: Any) -> None:
    gate = stack.tmp / "gate"  # never opened: the handlers stay busy
    with stack.publisher() as pub:
        pub.publish("SmsReport", 4, seed=23)
    run = start_run(stack.config(recorder={"gate_path": str(gate),
                                           "started_path": str(stack.started_path)}), 1)
    run.wait(lambda: len(stack.started()) == 4, "four handlers waiting at the gate")
    run.proc.send_signal(signal.SIGTERM)
    run.wait(lambda: run.events("stopping") and len(run.events("stopping")) >= 2,
             "run and its worker stopping")
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(60) == 1
    assert [e["code"] for e in run.events("child_stopped")] == [1]
    assert run.events("second_signal_exit_now")
    assert stack.applied() == {}


def test_a_worker_that_overruns_its_own_stop_is_killed_and_restarted() -> None:
    clock = Clock()
    # Says STOPPING=1 on its slot's notify socket (as a recycling worker does), then hangs.
    stops_and_hangs = ("import os, socket, time; s = socket.socket(socket.AF_UNIX, "
                       "socket.SOCK_DGRAM); s.sendto(b'STOPPING=1', b'\\0' + "
                       "os.environ['NOTIFY_SOCKET'][1:].encode()); time.sleep(60)")
    inbox = NotifyInbox(["SmsUp-1"])
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(slot: Slot) -> subprocess.Popen[bytes]:
        procs.append(subprocess.Popen([sys.executable, "-c", stops_and_hangs],
                                      env={**os.environ, **inbox.env_for(slot.name)}))
        return procs[-1]

    sup = Supervisor([Slot("SmsUp", 1)], spawn, FAST, stop_budget_s=5, clock=clock)
    try:
        sup.start_all()
        with SignalPipe() as pipe:
            _signals, ready = pipe.wait(30, inbox.fds())
        for name in inbox.stopping(ready):
            sup.child_stopping(name)
        assert sup.timeout() == 5.0
        sup.enforce_deadline()
        assert procs[0].poll() is None, "killed before its budget"
        clock.now += 5.0
        sup.enforce_deadline()
        assert procs[0].wait(30) == -signal.SIGKILL
        sup.reap()
        assert sup.slots[0].restart_at == clock.now + 1.0  # a failure: restarted after 1 s
    finally:
        inbox.close()
        for proc in procs:
            proc.kill()
            proc.wait(10)


def test_a_configuration_error_stops_everything_instead_of_a_restart() -> None:
    clock = Clock()
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(slot: Slot) -> subprocess.Popen[bytes]:
        code = "raise SystemExit(2)" if slot.queue == "SmsReport" else "import time; time.sleep(60)"
        spawned.append(python(code))
        return spawned[-1]

    sup = Supervisor([Slot("SmsReport", 1), Slot("SmsUp", 1)], spawn, FAST, stop_budget_s=5,
                     clock=clock)
    sup.start_all()
    spawned[0].wait(30)
    sup.reap()
    assert sup.stopping and sup.config_error == "SmsReport-1"
    assert spawned[1].wait(30) == -signal.SIGTERM  # the healthy one was asked to stop
    sup.reap()
    clock.now += 3600
    sup.restart_due()
    assert len(spawned) == 2, "a worker with a configuration error was restarted"
    assert sup.finished() and sup.exit_code() == 2


def test_run_exits_2_without_restarting_a_worker_whose_configuration_is_unusable(
        tmp_path: Path) -> None:
    # The file loads (run checks it), but no worker can build its handler: each exits 2.
    config = tmp_path / "c.toml"
    config.write_text('[alicom]\npreset = "sandbox"\nqueues = ["SmsReport"]\n'
                      '[log]\nformat = "json"\n[[handlers]]\nuse = "no_such_module:handler"\n',
                      encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_", "ALICOM_"))}
    done = subprocess.run([sys.executable, "-m", "consumer", "run", "--config", str(config),
                           "--processes", "2"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=90, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    run_events = [e for e in events if e.get("logger") == "alicom_receipts.supervisor"]
    started = [e for e in run_events if e["event"] == "child_started"]
    assert len(started) == 2, run_events  # two slots, and no restart of either
    assert any(e["event"] == "child_config_error" for e in run_events)
    worker_lines = [line for line in done.stderr.splitlines()
                    if line.startswith("alicom-receipts worker: ")]
    assert worker_lines and all("no_such_module" in line for line in worker_lines)
