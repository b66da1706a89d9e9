"""`alicom-receipts run`: this host's worker processes, for hosts without systemd.

    alicom-receipts run [--config FILE] [--processes N] [--queue TYPE ...]

Starts N `python -m consumer worker --queue T [--config F]` processes (same interpreter) per
queue type (`settings.queues`, or the `--queue` flags; N from `[run] processes_per_queue`
or `--processes`), and keeps them running:

- a worker that exits 0 recycled itself (max_receipts / max_rss_mb): restarted at once;
- one that exits 2 (EXIT_CONFIG: its configuration is unusable, a restart cannot help) is
  not restarted: `run` stops the others as on SIGTERM and exits 2 itself;
- one that exits non-zero or is killed is restarted after an exponential backoff
  (`restart_initial_s` doubling up to `restart_max_s`); a process that ran for
  `stable_after_s` counts as healthy again, so its next failure starts from the bottom;
- the first SIGTERM/SIGINT is passed on to every worker (each drains within its
  `worker.shutdown_budget_s`); `run` waits for them up to that budget plus `stop_margin_s`,
  then SIGKILLs what is left. A second signal is passed on too: a worker leaves at once on
  its second signal. Exit status 0 when every worker drained and exited 0, 2 after a
  worker's configuration error, else 1;
- a worker that begins to stop by itself (a recycle; it says STOPPING=1 on its own notify
  socket) is held to the same budget plus margin: past it, it is SIGKILLed and restarted.

The loop sleeps in select() on a self-pipe fed by `signal.set_wakeup_fd` (SIGCHLD, SIGTERM,
SIGINT) and the workers' notify sockets (consumer.runtime.wakeups), with a timeout only when
a restart or a stop deadline is due: no polling.
Workers run in their own process group (a terminal's Ctrl-C reaches `run` only, which
forwards one SIGTERM) and, on Linux, get SIGTERM if `run` itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from consumer.clients.retry import exponential_delay
from consumer.errors import EXIT_CONFIG
from consumer.runtime.wakeups import NotifyInbox, SignalPipe
from consumer.settings import (
    RunSettings,
)

log = structlog.get_logger("alicom_receipts.supervisor")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


# -- one worker slot ---------------------------------------------------------------------------

@dataclass
class Slot:
    """One place for a worker process (a queue type and an index), refilled on every exit."""

    queue: str
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0          # monotonic time of the current (or last) start
    failures: int = 0                # consecutive unexpected exits
    restart_at: float | None = None  # monotonic time a pending restart is due
    restarts: int = 0
    stop_by: float | None = None     # it began to stop by itself: killed if still alive then

    @property
    def name(self) -> str:
        return "%s-%d" % (self.queue, self.index)


def restart_delay(failures: int, run: RunSettings) -> float:
    """Seconds before the restart after `failures` consecutive failures (0 for none)."""
    if failures <= 0:
        return 0.0
    return exponential_delay(failures, run.restart_initial_s, run.restart_max_s)


def after_exit(slot: Slot, code: int, ran_s: float, run: RunSettings) -> float:
    """Counts an exit with status `code` after `ran_s` seconds; returns the restart delay.

    A run of `stable_after_s` or more clears earlier failures first; 0 is a recycle (no
    failure, restart at once); anything else (non-zero, or killed: negative) is a failure.
    """
    if ran_s >= run.stable_after_s:
        slot.failures = 0
    if code == 0:
        return 0.0
    slot.failures += 1
    return restart_delay(slot.failures, run)


def describe_exit(code: int) -> dict[str, object]:
    """Log fields for a Popen return code: the status, or the signal that killed it."""
    if code < 0:
        try:
            return {"code": code, "signal": signal.Signals(-code).name}
        except ValueError:
            return {"code": code, "signal": -code}
    return {"code": code}


# -- the supervisor ----------------------------------------------------------------------------

Spawn = Callable[[Slot], subprocess.Popen[bytes]]
Clock = Callable[[], float]


@dataclass
class Supervisor:
    """The slots' state machine; `supervise()` drives it. Every method is one step and
    returns at once, so tests can drive it with real processes and no signals."""

    slots: list[Slot]
    spawn: Spawn
    run: RunSettings
    stop_budget_s: float
    clock: Clock = time.monotonic
    stop_signals: int = 0
    stop_deadline: float | None = None
    killed: list[str] = field(default_factory=list)
    stop_codes: dict[str, int] = field(default_factory=dict)  # exits seen while stopping
    config_error: str | None = None  # the worker that exited EXIT_CONFIG, if one did

    @property
    def stopping(self) -> bool:
        return self.stop_signals > 0

    def start_all(self) -> None:
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: Slot) -> None:
        slot.restart_at = None
        slot.started_at = self.clock()
        try:
            slot.proc = self.spawn(slot)
        except OSError as exc:  # fork or exec refused (no memory, too many processes)
            slot.failures += 1
            delay = restart_delay(slot.failures, self.run)
            slot.restart_at = slot.started_at + delay
            log.error("child_start_failed", child=slot.name, error=str(exc),  # noqa: TRY400 - the OS error says it all
                      restart_in_s=delay, failures=slot.failures)
            return
        log.info("child_started", child=slot.name, message_type=slot.queue, index=slot.index,
                 child_pid=slot.proc.pid, restarts=slot.restarts)

    def reap(self) -> None:
        """Collects every worker that has exited, and schedules its restart unless stopping."""
        for slot in self.slots:
            if slot.proc is None:
                continue
            code = slot.proc.poll()
            if code is not None:
                self._exited(slot, slot.proc.pid, code)

    def _exited(self, slot: Slot, pid: int, code: int) -> None:
        now = self.clock()
        slot.proc = None
        slot.stop_by = None
        ran_s = round(now - slot.started_at, 3)
        if self.stopping:
            self.stop_codes[slot.name] = code
            log.info("child_stopped", child=slot.name, child_pid=pid, ran_s=ran_s,
                     **describe_exit(code))
            return
        if code == EXIT_CONFIG:
            self._give_up(slot, pid, ran_s)
            return
        delay = after_exit(slot, code, ran_s, self.run)
        slot.restart_at = now + delay
        emit = log.info if code == 0 else log.warning
        emit("child_exited", child=slot.name, child_pid=pid, ran_s=ran_s, restart_in_s=delay,
             failures=slot.failures, **describe_exit(code))

    def _give_up(self, slot: Slot, pid: int, ran_s: float) -> None:
        """A worker found its configuration unusable: every restart would too. Stop all."""
        self.config_error = slot.name
        log.error("child_config_error", child=slot.name, child_pid=pid, ran_s=ran_s,
                  code=EXIT_CONFIG, action="stopping every worker; fix the configuration")
        self.request_stop(signal.SIGTERM)

    def restart_due(self) -> None:
        """Starts every worker whose restart time has come (none once stopping)."""
        if self.stopping:
            return
        now = self.clock()
        for slot in self.slots:
            if slot.proc is None and slot.restart_at is not None and slot.restart_at <= now:
                slot.restarts += 1
                self._start(slot)

    def request_stop(self, signum: int) -> None:
        """First call: pass SIGTERM on, cancel pending restarts, start the stop deadline.
        Later calls: pass SIGTERM on again (a worker leaves at once on its second one)."""
        self.stop_signals += 1
        running = [s for s in self.slots if s.proc is not None]
        if self.stop_signals == 1:
            self.stop_deadline = self.clock() + self.stop_budget_s
            for slot in self.slots:
                slot.restart_at = None
            log.info("stopping", signal=signal.Signals(signum).name, running=len(running),
                     wait_s=self.stop_budget_s)
        else:
            log.warning("stopping_now", signal=signal.Signals(signum).name,
                        running=len(running))
        for slot in running:
            _send(slot, signal.SIGTERM)

    def child_stopping(self, name: str) -> None:
        """A worker said it began to stop: it has its stop budget from now."""
        for slot in self.slots:
            if slot.name == name and slot.proc is not None and slot.stop_by is None:
                slot.stop_by = self.clock() + self.stop_budget_s
                log.info("child_stopping", child=slot.name, child_pid=slot.proc.pid,
                         wait_s=self.stop_budget_s)

    def enforce_deadline(self) -> None:
        """SIGKILLs every worker still running past its own stop deadline (one that began to
        stop by itself) or `run`'s (once `run` was asked to stop)."""
        now = self.clock()
        for slot in self.slots:
            if slot.proc is not None and slot.stop_by is not None and now >= slot.stop_by:
                log.error("stop_timeout_kill", child=slot.name, child_pid=slot.proc.pid)
                slot.stop_by = float("inf")  # once
                _send(slot, signal.SIGKILL)
        if self.stop_deadline is None or now < self.stop_deadline:
            return
        for slot in self.slots:
            if slot.proc is not None and slot.name not in self.killed:
                log.error("stop_timeout_kill", child=slot.name, child_pid=slot.proc.pid)
                self.killed.append(slot.name)
                _send(slot, signal.SIGKILL)

    def finished(self) -> bool:
        return self.stopping and all(s.proc is None for s in self.slots)

    def timeout(self) -> float | None:
        """Seconds until the next due restart or the stop deadline; None: wait for a signal."""
        due = [t for s in self.slots for t in (s.restart_at, s.stop_by)
               if t is not None and t != float("inf")]
        if self.stop_deadline is not None and not self.killed:
            due.append(self.stop_deadline)
        return max(0.0, min(due) - self.clock()) if due else None

    def exit_code(self) -> int:
        """2 after a worker's configuration error; else 0 when every worker running at the
        stop exited cleanly, else 1.

        Clean is 0, or death by the SIGTERM passed on: a worker that had not yet installed
        its handlers (just restarted) dies of it, but it had received nothing either.
        """
        if self.config_error is not None:
            return EXIT_CONFIG
        clean = (0, -signal.SIGTERM)
        return 0 if all(c in clean for c in self.stop_codes.values()) and not self.killed else 1


def _send(slot: Slot, signum: int) -> None:
    if slot.proc is not None:
        with contextlib.suppress(ProcessLookupError):  # exited since the last reap
            slot.proc.send_signal(signum)


# -- signals and the loop ----------------------------------------------------------------------

def supervise(sup: Supervisor, signals: SignalPipe, inbox: NotifyInbox | None = None) -> int:
    """Runs `sup` until it was asked to stop and every worker has exited; its exit status."""
    sup.start_all()
    while not sup.finished():
        seen, ready = signals.wait(sup.timeout(), inbox.fds() if inbox else ())
        for name in inbox.stopping(ready) if inbox else ():
            sup.child_stopping(name)
        for signum in seen:
            if signum in (signal.SIGTERM, signal.SIGINT):
                sup.request_stop(signum)
        sup.reap()
        sup.enforce_deadline()
        sup.restart_due()
    code = sup.exit_code()
    log.info("run_stopped", code=code)
    return code


# -- starting workers --------------------------------------------------------------------------

def worker_command(queue: str, config: str | None) -> list[str]:
    """The command of one worker: this interpreter, `-m consumer worker`."""
    cmd = [sys.executable, "-m", "consumer", "worker", "--queue", queue]
    return [*cmd, "--config", config] if config else cmd


def _death_signal_setup() -> Callable[[], None]:
    """A preexec function: own process group, and SIGTERM when the parent dies (Linux).

    libc is looked up before the fork; the child only makes two system calls.
    """
    parent = os.getpid()
    prctl = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl: nobody to serve
                os.kill(os.getpid(), signal.SIGTERM)
    return setup


def process_spawner(config: str | None, env: dict[str, str] | None = None,
                    inbox: NotifyInbox | None = None) -> Spawn:
    """Starts workers as child processes sharing this process's stdout and stderr; with an
    inbox, each is told its slot's notify socket."""
    def spawn(slot: Slot) -> subprocess.Popen[bytes]:
        child_env = env if inbox is None else {**(env or os.environ),
                                               **inbox.env_for(slot.name)}
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
            worker_command(slot.queue, config), env=child_env,
            preexec_fn=_death_signal_setup())  # noqa: PLW1509 - `run` is single-threaded
    return spawn


def plan_slots(queues: Sequence[str], processes: int) -> list[Slot]:
    """`processes` slots per queue type, indexed from 1 (SmsReport-1, SmsReport-2, ...)."""
    return [Slot(q, i) for q in queues for i in range(1, processes + 1)]
