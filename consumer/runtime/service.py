"""A worker process's life: start, tell the service manager how it is doing, stop cleanly.

`serve` is what `alicom-receipts worker` runs after building the worker (plugins are loaded by
then). It installs the signal handlers (first SIGTERM/SIGINT drains, a second exits at once),
checks once a second whether the worker should recycle itself, and drains before returning
the exit status. A stop always ends (see `serve`): the caller leaves by `exit_now`, so no
handler thread can keep the process alive. Beside it a `Health` thread speaks the systemd
notify protocol
(`consumer.runtime.notify`; a no-op outside systemd):

- `READY=1` once the worker's first poll went through (token service and queue reachable,
  `Worker.ready`) AND Redis answered a read: an empty queue lets a poll succeed without
  touching Redis, so Redis is probed on its own;
- `STATUS=` whenever the line changes, at most once per `status_interval_s`;
- `STOPPING=1` on the first signal or when recycling;
- `WATCHDOG=1` every half watchdog interval, ONLY while the pipeline moves (see `Health`).
"""

from __future__ import annotations

import gc
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

import structlog

from consumer.errors import AlicomReceiptsError
from consumer.pipeline.backoff import BACKOFF_MAX_S
from consumer.runtime import logs
from consumer.runtime.notify import Notifier
from consumer.settings import ServiceSettings
from consumer.sources.mns.worker import Worker

log = structlog.get_logger("alicom_receipts.service")

#: The cap of the pollers' backoff (consumer.pipeline.backoff.Backoff's default).
POLL_BACKOFF_MAX_S = BACKOFF_MAX_S
#: Counters whose increase means a message left our hands: the pipeline moves even while
#: every poller waits for room in a full in-flight window (back-pressure is not a wedge).
SETTLE_COUNTERS = frozenset({"deleted", "retries", "handed_back", "in_progress_skipped",
                             "lost_claims", "delete_failures"})
TICK_S = 0.25
#: How long past the shutdown budget `serve` waits for a drain stuck in an MNS, Redis or
#: token call before it gives up on it (the caller then exits at once).
DRAIN_GRACE_S = 1.0
#: The backstop: SIGALRM (whose default action ends the process) this long past the budget,
#: for a process whose Python threads cannot run any more (a C call holding the GIL).
ALARM_GRACE_S = 4.0


Probe = Callable[[], object]


def redis_probe(worker: Worker) -> Probe:
    """A cheap Redis read (ZCOUNT of the dead letters) through the worker's own client."""
    return worker.p.dead_letters.count


class _RedisWatch:
    """Runs the probe on its own thread, so a slow Redis never delays a watchdog ping."""

    def __init__(self, probe: Probe, settings: ServiceSettings, stop: threading.Event) -> None:
        self._probe = probe
        self._settings = settings
        self._stop = stop
        self.ok = threading.Event()
        self.error: str | None = "not checked yet"
        self._thread = threading.Thread(target=self._run, name="redis-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._probe()
            except (AlicomReceiptsError, OSError) as exc:
                self.error = str(exc)[:200]
                self.ok.clear()
            else:
                self.error = None
                self.ok.set()
            self._stop.wait(self._settings.probe_interval_s if self.ok.is_set() else TICK_S * 2)


class Health:
    """Tells systemd about one worker: READY once, STATUS on change, WATCHDOG while it moves.

    The pipeline "moves" when, within the stall allowance, a poller finished a turn
    (`Worker.last_progress`: a receive that returned, messages or not, or a failed one after
    its backoff) or a message was settled. A dependency outage keeps the pollers turning
    (each failure is counted, then backed off at most POLL_BACKOFF_MAX_S), so the pings go on
    and STATUS says what is wrong; a receive loop stuck in a call that never returns stops
    them. While draining the pings go on: the drain is bounded by its own budget and systemd's
    TimeoutStopSec.
    """

    def __init__(self, worker: Worker, notifier: Notifier, settings: ServiceSettings,
                 probe: Probe, clock: Callable[[], float] = time.monotonic) -> None:
        self.worker = worker
        self.notifier = notifier
        self.settings = settings
        self.clock = clock
        self._stop = threading.Event()
        self.redis = _RedisWatch(probe, settings, self._stop)
        self.ready_sent = False
        self.last_failure_at = float("-inf")  # a poller entered its backoff
        self.last_settle_at = float("-inf")
        self._status: str | None = None
        self._status_at = float("-inf")
        self._next_ping = float("-inf")
        self._withholding = False
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        worker.stats.subscribe(self._on_count)

    @property
    def stall_s(self) -> float | None:
        """The allowed stall, None when there is no watchdog to feed."""
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return None
        return self.settings.watchdog_stall_s or interval

    def _on_count(self, name: str, _amount: int) -> None:
        if name == "poll_errors":
            self.last_failure_at = self.clock()
        elif name in SETTLE_COUNTERS:
            self.last_settle_at = self.clock()

    def start(self) -> None:
        self.redis.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(TICK_S)

    def tick(self) -> None:
        """One look at the worker: READY, STATUS and WATCHDOG as they are due."""
        now = self.clock()
        if not self.ready_sent and self.worker.ready.is_set() and self.redis.ok.is_set():
            self.ready_sent = True
            self._status, self._status_at = self.status_line(), now
            self.notifier.ready(self._status)
            log.info("ready", status=self._status)
        self._update_status(now)
        self._feed_watchdog(now)

    def status_line(self) -> str:
        w = self.worker
        if self.redis.error is not None and not w.stop_receiving.is_set() \
                and (self.ready_sent or w.ready.is_set()):
            return "waiting: Redis: %s" % self.redis.error
        return w.status()

    def _update_status(self, now: float) -> None:
        line = self.status_line()
        if line != self._status and now - self._status_at >= self.settings.status_interval_s:
            self._status, self._status_at = line, now
            self.notifier.status(line)

    def moving(self, now: float, stall_s: float | None = None) -> bool:
        """True while the pipeline is not wedged (see the class docstring); `stall_s`
        overrides the allowance (the HTTP liveness check has one without systemd)."""
        stall = self.stall_s if stall_s is None else stall_s
        if stall is None or self.worker.stop_receiving.is_set():
            return True
        last = max(self.worker.last_progress, self.last_settle_at)
        if self.last_failure_at > self.worker.last_progress:
            last = max(last, self.last_failure_at + POLL_BACKOFF_MAX_S)
        return now - last < stall

    def _feed_watchdog(self, now: float) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None or now < self._next_ping:
            return
        if self.moving(now):
            if self._withholding:
                log.info("watchdog_resumed")
                self._withholding = False
            self.notifier.watchdog()
            self._next_ping = now + interval / 2
        elif not self._withholding:
            self._withholding = True
            log.error("watchdog_withheld", stalled_s=round(now - self.worker.last_progress, 1),
                      note="no poll turn finished and nothing settled: the receive loop is "
                           "wedged; systemd restarts the worker after WatchdogSec")


def serve(worker: Worker, settings: ServiceSettings | None = None, *,
          notifier: Notifier | None = None, probe: Probe | None = None,
          on_health: Callable[[Health], None] | None = None) -> int:
    """Starts the worker, waits for a signal or a recycle reason, drains, returns 0.

    The stop: receiving stops, what has not started is handed back, running handlers get
    until `worker.shutdown_budget_s`; a drain stuck in a call to MNS, Redis or the token
    service is given up DRAIN_GRACE_S later. Messages whose handlers still run are logged
    `completion_unrecorded` and stay invisible: the caller must then leave with `exit_now`
    (the exit ends their threads; MNS re-delivers them after their visibility). SIGALRM
    ends the process ALARM_GRACE_S past the budget whatever happens. A recycle stops the
    same way. `notifier` defaults to the one systemd's environment describes (a no-op
    without it); `probe` (a Redis read that raises when Redis is away) to `redis_probe`.
    `on_health` is given the `Health` before the worker starts (the HTTP probes' hook,
    `consumer.runtime.health`).
    A second SIGTERM/SIGINT exits at once (status 1).
    """
    settings = settings or ServiceSettings()
    notifier = notifier or Notifier.from_env(os.environ)
    _stop_on_signals(worker)
    health = Health(worker, notifier, settings, probe or redis_probe(worker))
    if on_health is not None:
        on_health(health)
    # Everything built so far (modules, SDK clients, settings) lives as long as the process:
    # frozen, the collector stops walking it on every full collection of receipt garbage.
    gc.freeze()
    worker.start()
    health.start()
    while not worker.stop_receiving.wait(1.0):
        reason = worker.should_recycle()
        if reason is not None:
            worker.recycle(reason)
    notifier.stopping(worker.status())
    _drain_within_budget(worker)
    report_unrecorded(worker)
    health.stop()
    notifier.status("stopped")
    notifier.close()
    return 0


def _stop_on_signals(worker: Worker) -> None:
    """SIGTERM and SIGINT ask `worker` to stop; a second one exits at once (status 1)."""
    signalled: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signalled:
            log.warning("second_signal_exit_now", signal=signum)
            exit_now(1)
        signalled.append(signum)
        log.info("stopping", signal=signum)
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _drain_within_budget(worker: Worker) -> None:
    """Drains `worker` in a thread for its shutdown budget, and gives up DRAIN_GRACE_S later
    (a call that never returns); SIGALRM, armed now, ends the process ALARM_GRACE_S past the
    budget whatever happens."""
    budget_s = worker.config.shutdown_budget_s
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(math.ceil(budget_s + ALARM_GRACE_S))
    drainer = threading.Thread(target=_drain, args=(worker, time.monotonic() + budget_s),
                               name="drain", daemon=True)
    drainer.start()
    drainer.join(budget_s + DRAIN_GRACE_S)
    if drainer.is_alive():
        log.error("drain_overran", budget_s=budget_s, in_flight=len(worker.window),
                  note="a call to MNS, Redis or the token service did not return: exiting "
                       "anyway; what is not settled comes back after its visibility")


def _drain(worker: Worker, deadline: float) -> None:
    try:
        worker.drain(deadline)
    except AlicomReceiptsError as exc:
        log.error("drain_failed", error=str(exc))  # noqa: TRY400 - an outage, not a bug
    except Exception:
        log.exception("drain_crashed")


def report_unrecorded(worker: Worker) -> int:
    """Logs `completion_unrecorded` (and counts it) for every message whose handler still
    runs: the exit ends it, and MNS re-delivers the message after its visibility. Returns
    how many there were."""
    running = {id(r): (name, s) for r, name, s in worker.p.dispatcher.running()}
    count = 0
    for item in worker.window.items():
        name, running_s = running.get(id(item.receipt), ("", -1.0))
        if running_s >= 0:
            count += 1
            log.error("completion_unrecorded", queue=item.delivery.queue,
                      message_id=item.delivery.message_id, dedup_key=item.key,
                      handler=name, running_s=round(running_s, 1),
                      reason="handler_running_at_exit")
    worker.stats.incr("completion_unrecorded", count)
    return count


def exit_now(code: int) -> NoReturn:
    """Flushes the logs and ends the process at once: no atexit hook, no join of a handler
    thread that may never return."""
    logs.flush()
    os._exit(code)
