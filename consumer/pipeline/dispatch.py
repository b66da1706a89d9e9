"""The dispatcher: routes receipts by class to their handlers on a bounded pool.

The handler API itself (what users write) lives in `consumer.handler_api`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
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
from consumer.pipeline.invoke import invoke_batch, invoke_one
from consumer.pipeline.outcome import RetryPolicy
from consumer.receipts import Receipt

log = structlog.get_logger(__name__)

#: The reason of a handler's "ok" for a receipt it had finished on an earlier delivery.
COMPLETED_BEFORE = "completed_before"
#: The outcome of every receipt of a batch whose dispatch itself raised: retried later.
DISPATCHER_CRASHED = HandlerOutcome("retry", "dispatcher", "dispatcher crashed", None, 0.0)
_EWMA_WEIGHT = 0.2  # of the newest duration in a handler's running mean


class GaugeLike(Protocol):
    """What the dispatcher needs of a metric gauge (prometheus_client.Gauge fits)."""

    def set(self, value: float) -> None: ...


@dataclass(eq=False)
class _Call:
    """One pool task: invocations of one handler, run one after another on one thread.

    Each unit is one invocation, given as positions in the dispatched batch: the whole
    sub-batch of a batch handler (one unit), or one receipt each for a single-receipt handler
    (one unit or a run of them). `started_at` is when the running unit started (None: not
    yet); `done` counts finished units; `results` holds (position, outcome) pairs. Every field
    is read and written under the dispatcher's lock.
    """

    handler: AnyHandler
    name: str
    units: list[list[int]]
    receipts: Sequence[Receipt]  # the whole dispatched batch
    deadline_s: float
    batch: bool = False  # a batch handler's call (its single unit is not timed for grouping)
    done: int = 0
    started_at: float | None = None
    finished: bool = False
    abandoned: bool = False
    results: list[tuple[int, HandlerOutcome]] = field(default_factory=list)
    future: Future[None] | None = None

    def unit_receipts(self, unit: list[int]) -> list[Receipt]:
        return [self.receipts[i] for i in unit]


class Dispatcher:
    """Routes receipts by class (`type(receipt).__name__`: SmsReport and IntlSmsReport are
    two routes) to their handlers on a bounded thread pool.

    Several handlers per class are allowed; all of them run for every receipt of that class
    (in parallel). `dispatch` reports the worst outcome per receipt, `dispatch_each` each
    handler's. A handler's own policy (`RoutedHandler.policy`) overrides the global one:
    its deadline, and for a retry its backoff (when it gave no delay) and `max_attempts`
    (a retry on that delivery or later becomes "permanent", reason "max_attempts").

    Grouping: a pool task per receipt costs more than a fast handler itself (a future, two
    thread wake-ups), so receipts for a single-receipt handler are grouped into runs that take
    about `chunk_target_s` by the handler's running mean duration: a handler of a few
    microseconds gets the whole batch in one task, one of tens of milliseconds (a webhook)
    one task per receipt, as many in parallel as the pool allows. A handler not yet measured
    gets one task per receipt.

    The deadline: an invocation running longer than its deadline is given up on (outcome
    "retry", reason "deadline"); the receipts after it in its run are handed to a new task.
    Python cannot kill a thread, so the call keeps running and keeps its worker until it
    returns; `stuck_threads` (and `stuck_gauge`) count such workers, and its eventual result
    is dropped (the receipt will be delivered again). Tasks queued while every worker is stuck
    get "retry"/"no_free_worker" instead of waiting forever.
    """

    def __init__(self, routes: Mapping[str, Sequence[AnyHandler | RoutedHandler]],
                 deadline_s: float, max_workers: int = 8, stuck_gauge: GaugeLike | None = None,
                 chunk_target_s: float = 0.002, retry: RetryPolicy | None = None) -> None:
        if not deadline_s > 0:
            raise ConfigError(f"handler deadline_s must be > 0, got {deadline_s!r}")
        if max_workers < 1:
            raise ConfigError(f"handler max_workers must be >= 1, got {max_workers!r}")
        retry = retry or RetryPolicy()
        self._global = HandlerPolicy(deadline_s, None, retry.retry_base_s, retry.retry_max_s)
        self._routes = {kind: tuple(routed(h) for h in handlers)
                        for kind, handlers in routes.items() if handlers}
        self._policies = {bound.name: bound.policy
                          for handlers in self._routes.values() for bound in handlers}
        self._deadline_s = deadline_s
        self._max_workers = max_workers
        self._gauge = stuck_gauge
        self._chunk_target_s = chunk_target_s
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="alicom-handler")
        self._cond = threading.Condition()
        self._stuck = 0
        self._closed = False
        self._mean_s: dict[str, float] = {}  # per single-receipt handler name, under the lock

    @property
    def routes(self) -> Mapping[str, tuple[RoutedHandler, ...]]:
        """Receipt class name -> its handlers, as configured."""
        return self._routes

    @property
    def stuck_threads(self) -> int:
        """Workers still busy in a call that exceeded the deadline."""
        with self._cond:
            return self._stuck

    def dispatch(self, receipts: Sequence[Receipt]) -> list[HandlerOutcome]:
        """One outcome per receipt, in order: the worst across its handlers.

        A receipt whose class has no handler gets "permanent" with reason "no_handler" (a
        configuration problem: it is dead-lettered with that reason and can be replayed).
        Never raises for a handler's failure.
        """
        return [worst(outcomes) for outcomes in self.dispatch_each(receipts)]

    def dispatch_each(self, receipts: Sequence[Receipt],
                      completed: Sequence[Collection[str]] | None = None,
                      ) -> list[list[HandlerOutcome]]:
        """Per receipt, in order: the outcome of each of its handlers (at least one).

        `completed[i]` names handlers that already finished receipt i (a redelivery): they
        are not run again and report "ok" with reason COMPLETED_BEFORE and no duration.
        """
        results: list[list[HandlerOutcome]] = [[] for _ in receipts]
        calls = self._plan(receipts, results, completed)
        with self._cond:
            self._submit(calls)
            self._wait(calls)
        for call in calls:
            covered: set[int] = set()
            for index, outcome in call.results:
                results[index].append(self._with_policy(outcome, receipts[index]))
                covered.add(index)
            for unit in call.units:  # a worker that died of a BaseException reported nothing
                for index in unit:
                    if index not in covered:
                        results[index].append(HandlerOutcome(
                            "retry", call.name, "handler_crashed", None, 0.0))
        return results

    def _with_policy(self, outcome: HandlerOutcome, receipt: Receipt) -> HandlerOutcome:
        """A retry under its handler's own policy: past `max_attempts` it is permanent, and
        without a delay of its own it gets the handler's backoff for this delivery."""
        policy = self._policies.get(outcome.handler)
        if outcome.kind != "retry" or policy is None:
            return outcome
        attempt = max(receipt.meta.dequeue_count, 1)
        if policy.max_attempts is not None and attempt >= policy.max_attempts:
            return dataclasses.replace(
                outcome, kind="permanent", delay_s=None,
                reason=f"max_attempts {policy.max_attempts} reached: {outcome.reason}")
        if outcome.delay_s is None and (policy.retry_base_s or policy.retry_max_s):
            full = policy.over(self._global)
            backoff = RetryPolicy(full.retry_base_s or 0.0, full.retry_max_s or 0.0)
            return dataclasses.replace(outcome, delay_s=float(backoff.delay_s(attempt)))
        return outcome

    def close(self, wait: bool = False) -> None:
        """Stops the pool; queued calls are cancelled. Does not close the handlers."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # a dispatch waiting on cancelled calls must give them up
        if wait:
            self._executor.shutdown(wait=True)

    # -- planning and running -----------------------------------------------------------

    def _plan(self, receipts: Sequence[Receipt], results: list[list[HandlerOutcome]],
              completed: Sequence[Collection[str]] | None) -> list[_Call]:
        by_class: dict[str, list[int]] = {}
        for index, receipt in enumerate(receipts):
            by_class.setdefault(type(receipt).__name__, []).append(index)
        calls: list[_Call] = []
        for cls_name, indexes in by_class.items():
            handlers = self._routes.get(cls_name, ())
            if not handlers:
                for index in indexes:
                    results[index].append(HandlerOutcome("permanent", "", "no_handler", None, 0.0))
                continue
            for bound in handlers:
                todo = indexes if completed is None else self._not_completed(
                    bound.name, indexes, completed, results)
                if todo:
                    calls.extend(self._calls_of(bound, todo, receipts))
        return calls

    def _calls_of(self, bound: RoutedHandler, indexes: list[int],
                  receipts: Sequence[Receipt]) -> list[_Call]:
        """The pool tasks of one handler for these receipts (see the class docstring)."""
        deadline_s = bound.policy.deadline_s or self._deadline_s
        if bound.batch:
            return [_Call(bound.target, bound.name, [list(indexes)], receipts, deadline_s,
                          batch=True)]
        size = self._run_length(bound.name, len(indexes))
        return [_Call(bound.target, bound.name, [[i] for i in indexes[start:start + size]],
                      receipts, deadline_s)
                for start in range(0, len(indexes), size)]

    @staticmethod
    def _not_completed(name: str, indexes: list[int], completed: Sequence[Collection[str]],
                       results: list[list[HandlerOutcome]]) -> list[int]:
        """The receipts among `indexes` this handler has not finished; the others report
        COMPLETED_BEFORE."""
        todo: list[int] = []
        for index in indexes:
            if name in completed[index]:
                results[index].append(HandlerOutcome("ok", name, COMPLETED_BEFORE, None, 0.0))
            else:
                todo.append(index)
        return todo

    def _run_length(self, name: str, count: int) -> int:
        """How many receipts of `count` one task of this single-receipt handler takes."""
        with self._cond:
            mean_s = self._mean_s.get(name)
        if mean_s is None:
            return 1
        return max(1, min(count, int(self._chunk_target_s / max(mean_s, 1e-7))))

    def _submit(self, calls: list[_Call]) -> None:
        """Queues calls on the pool (lock held)."""
        for call in calls:
            try:
                call.future = self._executor.submit(self._run, call)
            except RuntimeError:  # the pool was shut down: hand the receipt back, not lose it
                call.abandoned = True
                call.results = [(i, HandlerOutcome("retry", call.name, "dispatcher_closed",
                                                   None, 0.0))
                                for unit in call.units for i in unit]

    def _start(self, call: _Call) -> bool:
        """Marks the call's first unit started; False when it was given up on while queued.

        Nobody is woken for this: a waiter looks at queued calls at least every `deadline_s`
        (see `_wait`), and a call that starts now cannot expire before then. One thread
        wake-up less per call.
        """
        with self._cond:
            if call.abandoned:
                return False
            call.started_at = time.monotonic()
            return True

    def _run(self, call: _Call) -> None:
        if not self._start(call):
            return
        try:
            for unit in list(call.units):
                outcomes = (invoke_batch(call.handler, call.name, call.unit_receipts(unit))
                            if call.batch else
                            [invoke_one(call.handler, call.name, call.receipts[unit[0]])])
                with self._cond:
                    if call.abandoned:
                        break
                    self._record(call, unit, outcomes)
        finally:
            with self._cond:
                if call.abandoned:  # given up on while a unit ran: its worker is free again
                    self._late(call)
                elif not call.finished:  # a BaseException left the handler
                    call.finished = True
                    self._cond.notify_all()

    def _record(self, call: _Call, unit: list[int], outcomes: list[HandlerOutcome]) -> None:
        """One unit finished in time (lock held): keep its outcomes, start the next one."""
        call.results.extend(zip(unit, outcomes, strict=True))
        call.done += 1
        if call.done == len(call.units):
            call.finished = True
            self._cond.notify_all()
        else:
            call.started_at = time.monotonic()
        if not call.batch:
            mean = self._mean_s.get(call.name)
            took = outcomes[0].duration_s
            self._mean_s[call.name] = took if mean is None else (
                mean + _EWMA_WEIGHT * (took - mean))

    def _late(self, call: _Call) -> None:
        """A call given up on has returned (lock held): its worker is free again."""
        self._stuck -= 1
        self._publish_stuck()
        self._cond.notify_all()
        log.info("late_handler_finished", handler=call.name,
                 receipts=len(call.units[call.done]))

    # -- waiting ------------------------------------------------------------------------

    def _wait(self, calls: list[_Call]) -> None:
        """Until every call finished or was given up on (lock held); `calls` may grow."""
        while True:
            now = time.monotonic()
            queued: list[_Call] = []
            next_expiry: float | None = None
            for call in calls:  # grows while iterating: an abandoned run's tail is appended
                if call.finished or call.abandoned:
                    continue
                if call.started_at is None:
                    queued.append(call)
                    continue
                expiry = call.started_at + call.deadline_s
                if now >= expiry:
                    self._abandon(call, "deadline", now, calls)
                else:
                    next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
            if next_expiry is None and (self._stuck >= self._max_workers or self._closed):
                for call in queued:  # nothing running can ever free a worker for them
                    self._abandon(call, "no_free_worker", now, calls)
                return
            if queued:  # one may start unannounced: look again by its earliest expiry
                later = now + min(call.deadline_s for call in queued)
                next_expiry = later if next_expiry is None else min(next_expiry, later)
            if next_expiry is None:  # nothing queued, nothing running
                return
            self._cond.wait(next_expiry - now)

    def _abandon(self, call: _Call, reason: str, now: float, calls: list[_Call]) -> None:
        """Gives up waiting on a call (lock held); a running one keeps its worker busy, and
        the units after the running one go to a new call appended to `calls`."""
        call.abandoned = True
        if call.future is not None:
            call.future.cancel()
        pending = call.units[call.done:]
        if call.started_at is None:
            given_up, elapsed = pending, 0.0
        else:
            given_up, elapsed = pending[:1], now - call.started_at
            call.units = call.units[:call.done + 1]
            self._stuck += 1
            self._publish_stuck()
            self._cond.notify_all()  # another dispatch may wait for a worker that is now gone
            if len(pending) > 1:
                tail = _Call(call.handler, call.name, pending[1:], call.receipts,
                             call.deadline_s, call.batch)
                calls.append(tail)
                self._submit([tail])
        call.results += [(i, HandlerOutcome("retry", call.name, reason, None, elapsed))
                         for unit in given_up for i in unit]
        log.warning("handler_abandoned", handler=call.name, reason=reason,
                    deadline_s=call.deadline_s, receipts=sum(len(u) for u in given_up),
                    message_ids=[call.receipts[i].meta.message_id
                                 for unit in given_up for i in unit],
                    stuck_threads=self._stuck)

    def _publish_stuck(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self._stuck)
