"""The dispatcher: routes receipts by class to their handlers on a bounded pool.

The handler API itself (what users write) lives in `consumer.handler_api`; one call and its
outcomes in `consumer.pipeline.invoke`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import structlog

from consumer.errors import ConfigError
from consumer.handler_api import (
    AnyHandler,
    HandlerOutcome,
    HandlerPolicy,
    RoutedHandler,
    routed,
    worst,
)
from consumer.pipeline.dispatch_plan import Batch, Call, Late, Unit, Usual, plan
from consumer.pipeline.invoke import invoke_batch, invoke_one, under_policy
from consumer.pipeline.outcome import RetryPolicy
from consumer.pipeline.selection import Selection
from consumer.receipts import Receipt

log = structlog.get_logger(__name__)

#: The outcome of every receipt of a batch whose dispatch itself raised: retried later.
DISPATCHER_CRASHED = HandlerOutcome("retry", "dispatcher", "dispatcher crashed", None, 0.0)
#: The reason of a receipt whose handler never started because the dispatcher was closed
#: (the process stops): hand it back as it came, it was not tried.
NOT_STARTED = "not_started"
#: The reason `dispatch(..., late=...)` gives a receipt whose handler is still running past
#: the deadline: its real outcome comes later, through `late`.
STUCK = "stuck"
#: A stuck call counts towards `wedged()` once it has run this many of its deadlines: past
#: one it is only late (a slow downstream, a starved machine), and recycling then would hand
#: back the queued receipts and restart the process while the call was about to return
#: (the drain waits for it anyway); a whole further deadline later it is taken for hung.
WEDGED_AFTER_DEADLINES = 2.0

__all__ = ["DISPATCHER_CRASHED", "NOT_STARTED", "STUCK", "WEDGED_AFTER_DEADLINES", "Dispatcher",
           "GaugeLike", "Late", "LateOne"]

#: `late(index, outcome)` of `dispatch`: the worst of them (`Late`: each handler's).
LateOne = Callable[[int, HandlerOutcome], None]


class GaugeLike(Protocol):
    """What the dispatcher needs of a metric gauge (prometheus_client.Gauge fits)."""

    def set(self, value: float) -> None: ...


class Dispatcher:
    """Routes receipts by class (`type(receipt).__name__`: SmsReport and IntlSmsReport are
    two routes) to their handlers on a bounded thread pool.

    Several handlers per class are allowed; all of them run for every receipt of that class
    (in parallel), except those `dispatch_each(completed=, only=)` leaves out (finished on an
    earlier delivery; not selected by a replay). `dispatch` reports the worst outcome per
    receipt, `dispatch_each` each handler's. A handler's own policy (`RoutedHandler.policy`)
    overrides the global one: its deadline, and for a retry its backoff (when it gave no
    delay) and `max_attempts` (a retry on that delivery or later becomes "permanent", reason
    "max_attempts").

    Grouping: a pool task costs more than a fast handler call itself (a future, two thread
    wake-ups), so calls whose usual duration is known (the shortest of a handler's recent
    calls: `dispatch_plan.Usual`) are packed into tasks of about `chunk_target_s`: a
    single-receipt handler's receipts into runs, and the calls of several fast handlers of a
    batch into one task (`consumer.pipeline.dispatch_plan`). A handler not yet measured gets
    one task per call (per receipt for a single-receipt one).

    The deadline: Python cannot kill a thread, so a call running longer than its deadline is
    never given up on (its receipt would run twice at once if it were handed back); it counts
    as stuck (`stuck_threads`, `stuck_gauge`, a `handler_stuck` warning), the receipts after
    it in its run go to another task, and its result is kept when it comes. `dispatch` without
    `late` waits for it; with `late` it returns STUCK for that receipt and calls
    `late(index, outcome)` once it finished. Only the process exiting ends a stuck call: the
    worker recycles once `wedged()` (calls that ran WEDGED_AFTER_DEADLINES of their deadline
    hold `stuck_share` of the pool).

    `close()` starts nothing more: queued calls end with reason NOT_STARTED at once, running
    ones are waited for as before.
    """

    def __init__(self, routes: Mapping[str, Sequence[AnyHandler | RoutedHandler]],
                 deadline_s: float, max_workers: int = 8, stuck_gauge: GaugeLike | None = None,
                 chunk_target_s: float = 0.002, retry: RetryPolicy | None = None,
                 stuck_share: float = 0.5) -> None:
        if not deadline_s > 0:
            raise ConfigError(f"handler deadline_s must be > 0, got {deadline_s!r}")
        if max_workers < 1:
            raise ConfigError(f"handler max_workers must be >= 1, got {max_workers!r}")
        if not 0 < stuck_share <= 1:
            raise ConfigError(f"handler stuck_share must be > 0 and <= 1, got {stuck_share!r}")
        retry = retry or RetryPolicy()
        self._global = HandlerPolicy(deadline_s, None, retry.retry_base_s, retry.retry_max_s)
        self._routes = {kind: tuple(routed(h) for h in handlers)
                        for kind, handlers in routes.items() if handlers}
        self._policies = {bound.name: bound.policy
                          for handlers in self._routes.values() for bound in handlers}
        self._deadline_s = deadline_s
        self._max_workers = max_workers
        self._wedged_at = max(1, int(stuck_share * max_workers + 0.999999))
        self._gauge = stuck_gauge
        self._chunk_target_s = chunk_target_s
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="alicom-handler")
        # One lock; each `dispatch` waits on a condition of its own over it (`Batch.waiter`):
        # a call that finishes wakes its own waiter, not every dispatch of every runner.
        self._lock = threading.RLock()
        self._waiting: set[Batch] = set()  # batches whose dispatch waits (for `close`)
        self._stuck = 0
        self._closed = False
        self._active: set[Call] = set()  # started, not finished
        self._usual: dict[str, Usual] = {}  # per handler name, per invocation; under the lock

    @property
    def routes(self) -> Mapping[str, tuple[RoutedHandler, ...]]:
        """Receipt class name -> its handlers, as configured."""
        return self._routes

    @property
    def longest_deadline_s(self) -> float:
        """The longest deadline of any handler (its own policy's, else the global one)."""
        return max([self._deadline_s, *(p.deadline_s or 0.0 for p in self._policies.values())])

    @property
    def stuck_threads(self) -> int:
        """Workers still busy in a call that exceeded the deadline."""
        with self._lock:
            return self._stuck

    def wedged(self, now: float | None = None) -> bool:
        """True once the calls that ran WEDGED_AFTER_DEADLINES of their deadline (at `now`,
        monotonic; default: now) hold the configured share of the pool. A call only late,
        stuck since less than another deadline, does not count: it may yet return."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._stuck < self._wedged_at:
                return False
            hung = sum(1 for call in self._active
                       if call.stuck and call.started_at is not None
                       and now - call.started_at >= WEDGED_AFTER_DEADLINES * call.deadline_s)
            return hung >= self._wedged_at

    def running(self) -> list[tuple[Receipt, str, float]]:
        """(receipt, handler, seconds it has been running) of every call running now."""
        now = time.monotonic()
        with self._lock:
            return [(call.batch.receipts[i], unit.name, now - call.started_at)
                    for call in self._active
                    if call.started_at is not None and (unit := call.running()) is not None
                    for i in unit.indexes]

    def dispatch(self, receipts: Sequence[Receipt], late: LateOne | None = None,
                 ) -> list[HandlerOutcome]:
        """One outcome per receipt, in order: the worst across its handlers.

        A receipt whose class has no handler gets "permanent" with reason "no_handler" (a
        configuration problem: it is dead-lettered with that reason and can be replayed).
        Never raises for a handler's failure. See the class docstring for `late`.
        """
        each: Late | None = None if late is None else (
            lambda index, outcomes: late(index, worst(outcomes)))
        return [worst(outcomes) for outcomes in self.dispatch_each(receipts, late=each)]

    def dispatch_each(self, receipts: Sequence[Receipt],
                      completed: Sequence[Collection[str]] | None = None,
                      late: Late | None = None,
                      only: Sequence[Selection | None] | None = None,
                      ) -> list[list[HandlerOutcome]]:
        """Per receipt, in order: the outcome of each of its handlers (at least one).

        `completed[i]` holds the `handler_tag`s of handlers that already finished receipt i
        (a redelivery; `Claim.done`): they are not run again and report "ok" with reason
        COMPLETED_BEFORE and no duration. `only[i]`, when not None, selects the handlers to run
        for receipt i (a dead-letter replay, see `Selection`).
        """
        waiter = threading.Condition(self._lock)
        batch = Batch(receipts, late, [[] for _ in receipts], [0] * len(receipts),
                      waiter=waiter)
        with self._lock:
            usual = {name: u.value for name, u in self._usual.items()}
        calls = plan(batch, self._routes, usual, self._deadline_s, self._chunk_target_s,
                     completed, only)
        with self._lock:
            self._submit(calls)
            self._waiting.add(batch)
            try:
                self._wait(calls, waiter)
            finally:
                self._waiting.discard(batch)
            batch.returned = True
            out: list[list[HandlerOutcome]] = []
            for index, outcomes in enumerate(batch.results):
                if batch.owed[index]:
                    batch.deferred.add(index)
                    stuck = [unit.name for c in calls if c.stuck and (unit := c.running())
                             is not None and index in unit.indexes]
                    out.append([HandlerOutcome("retry", ",".join(stuck), STUCK, None, 0.0)])
                else:  # complete: nothing appends to it any more
                    out.append(outcomes)
            return out

    def close(self, wait: bool = False) -> None:
        """Starts nothing more: queued calls end NOT_STARTED. Does not close the handlers."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._closed = True
            for batch in self._waiting:  # a dispatch waiting on queued calls gives them up
                _wake(batch)
        if wait:
            self._executor.shutdown(wait=True)

    # -- running -----------------------------------------------------------

    def _submit(self, calls: list[Call]) -> None:
        """Queues calls on the pool (lock held); after `close` they end NOT_STARTED."""
        for call in calls:
            try:
                call.future = self._executor.submit(self._run, call)
            except RuntimeError:  # the pool was shut down: hand the receipts back
                self._not_started(call)

    def _start(self, call: Call) -> bool:
        """Marks the call's first unit started; False when the dispatcher closed first.

        Nobody is woken for this: a waiter looks at queued calls at least every deadline
        (see `_wait`), and a call that starts now cannot expire before then.
        """
        with self._lock:
            if self._closed or call.finished:
                self._not_started(call)
                return False
            call.started_at = time.monotonic()
            self._active.add(call)
            return True

    def _run(self, call: Call) -> None:
        if not self._start(call):
            return
        with self._lock:
            unit = call.running()
        while unit is not None:
            receipts = [call.batch.receipts[i] for i in unit.indexes]
            outcomes = (invoke_batch(unit.target, unit.name, receipts) if unit.is_batch
                        else [invoke_one(unit.target, unit.name, receipts[0])])
            with self._lock:  # one lock per unit: record this one, take the next
                late = self._record(call, unit, outcomes)
                unit = call.running()
            callback = call.batch.late
            for index, outcomes in late:  # outside the lock: the caller may do I/O
                if callback is not None:  # always set when a receipt was deferred
                    callback(index, outcomes)

    def _record(self, call: Call, unit: Unit, outcomes: list[HandlerOutcome],
                ) -> list[tuple[int, list[HandlerOutcome]]]:
        """One unit finished (lock held): keep its outcomes, start the next unit. Returns the
        deferred receipts now complete, for `late`."""
        batch = call.batch
        due: list[tuple[int, list[HandlerOutcome]]] = []
        results, owed, deferred = batch.results, batch.owed, batch.deferred  # per receipt
        for index, outcome in zip(unit.indexes, outcomes, strict=True):
            results[index].append(outcome if outcome.kind != "retry" else under_policy(
                outcome, batch.receipts[index].meta.dequeue_count,
                self._policies.get(outcome.handler), self._global))
            owed[index] -= 1
            if deferred and owed[index] == 0 and index in deferred:
                due.append((index, list(results[index])))
        call.done += 1
        if call.stuck:
            self._stuck -= 1
            self._publish_stuck()
            call.stuck = False
            log.warning("late_handler_finished", handler=unit.name, receipts=len(unit.indexes),
                        kind=outcomes[0].kind, duration_s=round(outcomes[0].duration_s, 3))
        if call.done >= len(call.units):
            call.finished = True
            self._active.discard(call)
            _wake(batch)
        else:
            # The waiter (`_wait`) looks again by the deadline it computed from the finished
            # unit's start. The next unit's own deadline usually comes later (the same
            # handler's next run: at worst the waiter looks too soon) and needs no wake-up,
            # which would be a thread switch per receipt; one that comes sooner (a shorter
            # deadline of another handler packed into the task) does.
            looked_for = (call.started_at or 0.0) + unit.deadline_s
            call.started_at = time.monotonic()
            if call.started_at + call.deadline_s < looked_for:
                _wake(batch)
        usual = self._usual.get(unit.name)
        took = outcomes[0].duration_s  # of the whole invocation, batch or single
        if usual is None:
            self._usual[unit.name] = Usual(took)
        else:
            usual.add(took)
        return due

    def _not_started(self, call: Call) -> None:
        """The call's units that never ran end NOT_STARTED (lock held)."""
        if call.finished:
            return
        for unit in call.units[call.done:]:
            for index in unit.indexes:
                call.batch.results[index].append(
                    HandlerOutcome("retry", unit.name, NOT_STARTED, None, 0.0))
                call.batch.owed[index] -= 1
        call.done = len(call.units)
        call.finished = True
        _wake(call.batch)

    # -- waiting ------------------------------------------------------------------------

    def _wait(self, calls: list[Call], waiter: threading.Condition) -> None:
        """Until every call finished, or (with `late`) finished or stuck (lock held), on
        their batch's `waiter`. `calls` may grow: a stuck run's tail is appended."""
        defer = calls[0].batch.late is not None if calls else False
        while True:
            now = time.monotonic()
            pending = False
            next_look: float | None = None
            for call in calls:  # grows while iterating
                if call.finished:
                    continue
                if call.started_at is None:
                    if self._closed:
                        self._not_started(call)
                        continue
                    pending = True
                    next_look = _earliest(next_look, now + call.deadline_s)
                    continue
                if not call.stuck and now >= call.started_at + call.deadline_s:
                    self._mark_stuck(call, now, calls)
                if not call.stuck:
                    pending = True
                    next_look = _earliest(next_look, call.started_at + call.deadline_s)
                elif not defer:
                    pending = True
            if not pending:
                return
            waiter.wait(None if next_look is None else max(0.0, next_look - now))

    def _mark_stuck(self, call: Call, now: float, calls: list[Call]) -> None:
        """The running unit passed the deadline (lock held): count its thread as stuck and
        give the units after it to a new call, so they do not wait behind it."""
        call.stuck = True
        self._stuck += 1
        self._publish_stuck()
        pending = call.units[call.done + 1:]
        call.units = call.units[:call.done + 1]
        if pending:
            tail = Call(pending, call.batch)
            calls.append(tail)
            self._submit([tail])
        unit = call.units[call.done]
        log.warning("handler_stuck", handler=unit.name, deadline_s=unit.deadline_s,
                    running_s=round(now - (call.started_at or now), 3),
                    receipts=len(unit.indexes),
                    message_ids=[call.batch.receipts[i].meta.message_id for i in unit.indexes],
                    stuck_threads=self._stuck, pool=self._max_workers,
                    note="still running: its receipt is held until it returns or the "
                         "process exits")

    def _publish_stuck(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self._stuck)


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def _wake(batch: Batch) -> None:
    """Wakes the dispatch waiting for `batch`, if it still waits (lock held)."""
    if batch.waiter is not None:
        batch.waiter.notify()
