"""The handler API (what users write) and the dispatcher that routes receipts to handlers.

Users write a function or a class; they never see MNS or Redis::

    from consumer import handler, RetryLater, PermanentFailure, SmsReport

    @handler(types=["SmsReport"])
    def on_report(receipt: SmsReport) -> None:
        if not receipt.success:
            notify(receipt.phone_number, receipt.err_code)

    class MyBatch:                      # options from the config go to __init__(**options)
        name = "my-batch"
        types = ("SmsReport",)

        def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
            result = BatchResult()      # every receipt not marked here succeeded
            for receipt, stored in zip(receipts, store_many(receipts)):
                if not stored:
                    result.retry(receipt, "store busy", delay_s=30)
            return result

        def close(self) -> None: ...    # optional: release resources at shutdown

Signals, from a single-receipt handler or a whole batch call: raise `RetryLater(reason,
delay_s)` to have the receipt delivered again later, `PermanentFailure(reason)` to dead-letter
it at once (it stays replayable). Any other exception is logged with its traceback and treated
as retryable.

Handlers run in worker threads and may be called concurrently: make them thread-safe.
Delivery is at least once: a handler may see a receipt again (a retry, a crash before the
acknowledgement), so make its effects idempotent or tolerate repeats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar, cast, overload, runtime_checkable

import structlog

from consumer.errors import ConfigError, PermanentFailure, RetryLater
from consumer.receipts import Receipt

log = structlog.get_logger(__name__)

OutcomeKind = Literal["ok", "retry", "permanent"]
Signal = RetryLater | PermanentFailure
R = TypeVar("R", bound=Receipt)

_SEVERITY: Mapping[str, int] = {"ok": 0, "retry": 1, "permanent": 2}
_REASON_MAX_CHARS = 300


@runtime_checkable
class Handler(Protocol):
    """Handles one receipt per call; returning normally means it was handled."""

    name: str

    def handle(self, receipt: Receipt) -> None:
        """Applies one receipt; raises RetryLater / PermanentFailure to signal a failure."""


@runtime_checkable
class BatchHandler(Protocol):
    """Handles all receipts of its types from one received batch in one call."""

    name: str

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """Applies the receipts; the result lists those that failed (the rest succeeded).

        Raising instead applies that signal (or "retry" for any other exception) to every
        receipt of the call. Returning None counts as "all succeeded".
        """


AnyHandler = Handler | BatchHandler


@dataclass
class BatchResult:
    """The receipts of a batch call that failed, each with its signal; all others succeeded.

    A receipt is matched by identity (`is`), so add the very objects the handler was given.
    """

    failed: list[tuple[Receipt, Signal]] = field(default_factory=list)

    def retry(self, receipt: Receipt, reason: str = "", delay_s: float | None = None) -> None:
        """Marks one receipt for a later redelivery (as if its handler raised RetryLater)."""
        self.failed.append((receipt, RetryLater(reason, delay_s)))

    def fail(self, receipt: Receipt, reason: str = "") -> None:
        """Marks one receipt as never handleable (as if its handler raised PermanentFailure)."""
        self.failed.append((receipt, PermanentFailure(reason)))

    def failure_for(self, receipt: Receipt) -> Signal | None:
        """The signal recorded for this receipt, or None when it succeeded."""
        for candidate, signal in self.failed:
            if candidate is receipt:
                return signal
        return None


@dataclass(frozen=True)
class HandlerOutcome:
    """What happened to one receipt in one handler (or, from `dispatch`, in the worst one).

    `reason` is "" for "ok"; `delay_s` is the handler's RetryLater delay, if it gave one;
    `duration_s` is the wall time of the handler call (a batch call's for each of its receipts).
    """

    kind: OutcomeKind
    handler: str
    reason: str
    delay_s: float | None
    duration_s: float


class FunctionHandler(Generic[R]):
    """A single-receipt handler made from a plain function (see `handler`)."""

    def __init__(self, func: Callable[[R], object], name: str,
                 types: tuple[str, ...] | None) -> None:
        self.__wrapped__ = func
        self.__doc__ = func.__doc__
        self.name = name
        self.types = types

    def handle(self, receipt: Receipt) -> None:
        """Calls the function; its return value is ignored."""
        self.__wrapped__(cast(R, receipt))

    def __call__(self, receipt: R) -> None:
        """The decorated function stays callable directly (handy in unit tests)."""
        self.__wrapped__(receipt)


@overload
def handler(func: Callable[[R], object], /) -> FunctionHandler[R]: ...
@overload
def handler(*, types: Iterable[str] | None = None,
            name: str | None = None) -> Callable[[Callable[[R], object]], FunctionHandler[R]]: ...
def handler(func: Callable[[R], object] | None = None, /, *, types: Iterable[str] | None = None,
            name: str | None = None,
            ) -> FunctionHandler[R] | Callable[[Callable[[R], object]], FunctionHandler[R]]:
    """Turns a function taking one receipt into a Handler; use bare or with options.

    `types` limits it to these message types ("SmsReport", "SmsUp", ...); None means the
    types given in the config, else all. "SmsReport" also brings `IntlSmsReport` (the
    international site's format shares the queue): check with isinstance. `name` (default:
    the function's name) labels its logs and metrics.
    """
    if isinstance(types, str):  # a lone "SmsReport" would otherwise iterate as characters
        types = (types,)
    declared = tuple(types) if types is not None else None

    def wrap(target: Callable[[R], object]) -> FunctionHandler[R]:
        label = name or str(getattr(target, "__name__", "handler"))
        return FunctionHandler(target, label, declared)

    return wrap if func is None else wrap(func)


def handler_name(obj: object) -> str:
    """The label of a handler in logs and metrics: its `name`, else its class name."""
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name else type(obj).__name__


def is_batch_handler(obj: object) -> bool:
    """True for an object with `handle_batch` (it wins over `handle` when both exist)."""
    return callable(getattr(obj, "handle_batch", None))


def worst(outcomes: Sequence[HandlerOutcome]) -> HandlerOutcome:
    """permanent > retry > ok; among equals the longest delay, then the slowest call."""
    return max(outcomes, key=lambda o: (_SEVERITY[o.kind], o.delay_s or 0.0, o.duration_s))


class GaugeLike(Protocol):
    """What the dispatcher needs of a metric gauge (prometheus_client.Gauge fits)."""

    def set(self, value: float) -> None: ...


@dataclass(eq=False)
class _Call:
    """One handler invocation: a single receipt, or the sub-batch of a batch handler."""

    handler: AnyHandler
    name: str
    receipts: Sequence[Receipt]
    indexes: list[int]
    started_at: float | None = None
    finished: bool = False
    abandoned: bool = False
    outcomes: list[HandlerOutcome] | None = None
    future: Future[None] | None = None


class Dispatcher:
    """Routes receipts by message type to their handlers on a bounded thread pool.

    Several handlers per type are allowed; all of them run for every receipt of that type
    (in parallel). A receipt counts as handled only if ALL its handlers succeeded, and a
    retried receipt re-runs EVERY handler of its type, including those that had succeeded:
    handlers must tolerate a repeat. `dispatch_each` reports per-handler outcomes for a caller
    that wants to decide otherwise.

    The deadline: a call running longer than `deadline_s` is given up on (outcome "retry",
    reason "deadline"). Python cannot kill a thread, so the call keeps running and keeps its
    worker until it returns; `stuck_threads` (and `stuck_gauge`) count such workers, and its
    eventual result is dropped (the receipt will be delivered again). Calls queued while every
    worker is stuck get "retry"/"no_free_worker" instead of waiting forever.
    """

    def __init__(self, routes: Mapping[str, Sequence[AnyHandler]], deadline_s: float,
                 max_workers: int = 8, stuck_gauge: GaugeLike | None = None) -> None:
        if not deadline_s > 0:
            raise ConfigError(f"handler deadline_s must be > 0, got {deadline_s!r}")
        if max_workers < 1:
            raise ConfigError(f"handler max_workers must be >= 1, got {max_workers!r}")
        self._routes = {kind: tuple(handlers) for kind, handlers in routes.items() if handlers}
        self._deadline_s = deadline_s
        self._max_workers = max_workers
        self._gauge = stuck_gauge
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="alicom-handler")
        self._cond = threading.Condition()
        self._stuck = 0
        self._closed = False

    @property
    def routes(self) -> Mapping[str, tuple[AnyHandler, ...]]:
        """Message type -> its handlers, as configured."""
        return self._routes

    @property
    def stuck_threads(self) -> int:
        """Workers still busy in a call that exceeded the deadline."""
        with self._cond:
            return self._stuck

    def dispatch(self, receipts: Sequence[Receipt]) -> list[HandlerOutcome]:
        """One outcome per receipt, in order: the worst across its handlers.

        A receipt whose type has no handler gets "permanent" with reason "no_handler" (a
        configuration problem: it is dead-lettered with that reason and can be replayed).
        Never raises for a handler's failure.
        """
        return [worst(outcomes) for outcomes in self.dispatch_each(receipts)]

    def dispatch_each(self, receipts: Sequence[Receipt]) -> list[list[HandlerOutcome]]:
        """Per receipt, in order: the outcome of each of its handlers (at least one)."""
        results: list[list[HandlerOutcome]] = [[] for _ in receipts]
        calls = self._plan(receipts, results)
        self._submit(calls)
        self._wait(calls)
        for call in calls:
            outcomes = call.outcomes or _all(call, "retry", "handler_crashed", 0.0)
            for index, outcome in zip(call.indexes, outcomes, strict=True):
                results[index].append(outcome)
        return results

    def close(self, wait: bool = False) -> None:
        """Stops the pool; queued calls are cancelled. Does not close the handlers."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # a dispatch waiting on cancelled calls must give them up
        if wait:
            self._executor.shutdown(wait=True)

    def _plan(self, receipts: Sequence[Receipt], results: list[list[HandlerOutcome]],
              ) -> list[_Call]:
        by_type: dict[str, list[int]] = {}
        for index, receipt in enumerate(receipts):
            by_type.setdefault(receipt.message_type, []).append(index)
        calls: list[_Call] = []
        for kind, indexes in by_type.items():
            handlers = self._routes.get(kind, ())
            if not handlers:
                for index in indexes:
                    results[index].append(HandlerOutcome("permanent", "", "no_handler", None, 0.0))
                continue
            for target in handlers:
                name = handler_name(target)
                if is_batch_handler(target):
                    batch = [receipts[i] for i in indexes]
                    calls.append(_Call(target, name, batch, list(indexes)))
                else:
                    calls.extend(_Call(target, name, [receipts[i]], [i]) for i in indexes)
        return calls

    def _submit(self, calls: list[_Call]) -> None:
        for call in calls:
            try:
                call.future = self._executor.submit(self._run, call)
            except RuntimeError:  # the pool was shut down: hand the receipt back, not lose it
                call.abandoned = True
                call.outcomes = _all(call, "retry", "dispatcher_closed", 0.0)

    def _run(self, call: _Call) -> None:
        with self._cond:
            if call.abandoned:
                return
            call.started_at = time.monotonic()
            self._cond.notify_all()
        outcomes: list[HandlerOutcome] | None = None
        try:
            outcomes = _invoke(call)
        finally:
            self._finish(call, outcomes)

    def _finish(self, call: _Call, outcomes: list[HandlerOutcome] | None) -> None:
        with self._cond:
            call.finished = True
            if call.abandoned:  # too late: its receipts were already reported as "retry"
                self._stuck -= 1
                self._publish_stuck()
                log.info("late_handler_finished", handler=call.name, receipts=len(call.receipts))
            else:
                call.outcomes = outcomes
            self._cond.notify_all()

    def _wait(self, calls: list[_Call]) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                queued: list[_Call] = []
                next_expiry: float | None = None
                for call in calls:
                    if call.finished or call.abandoned:
                        continue
                    if call.started_at is None:
                        queued.append(call)
                        continue
                    expiry = call.started_at + self._deadline_s
                    if now >= expiry:
                        self._abandon(call, "deadline", now)
                    else:
                        next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
                if next_expiry is None and not queued:
                    return
                if next_expiry is None and (self._stuck >= self._max_workers or self._closed):
                    for call in queued:  # nothing running can ever free a worker for them
                        self._abandon(call, "no_free_worker", now)
                    return
                self._cond.wait(None if next_expiry is None else next_expiry - now)

    def _abandon(self, call: _Call, reason: str, now: float) -> None:
        """Gives up waiting on a call (lock held); a running one keeps its worker busy."""
        call.abandoned = True
        if call.future is not None:
            call.future.cancel()
        elapsed = 0.0 if call.started_at is None else now - call.started_at
        call.outcomes = _all(call, "retry", reason, elapsed)
        if call.started_at is not None:
            self._stuck += 1
            self._publish_stuck()
            self._cond.notify_all()  # another dispatch may wait for a worker that is now gone
        log.warning("handler_abandoned", handler=call.name, reason=reason,
                    deadline_s=self._deadline_s, receipts=len(call.receipts),
                    message_ids=[r.meta.message_id for r in call.receipts],
                    stuck_threads=self._stuck)

    def _publish_stuck(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self._stuck)


def _all(call: _Call, kind: OutcomeKind, reason: str, duration_s: float) -> list[HandlerOutcome]:
    return [HandlerOutcome(kind, call.name, reason, None, duration_s) for _ in call.receipts]


def _invoke(call: _Call) -> list[HandlerOutcome]:
    """Runs one call and turns whatever happened into outcomes; never raises an Exception."""
    started = time.monotonic()
    result: object = None
    try:
        if is_batch_handler(call.handler):
            result = cast(BatchHandler, call.handler).handle_batch(call.receipts)
        else:
            cast(Handler, call.handler).handle(call.receipts[0])
    except Exception as exc:  # noqa: BLE001 - any handler error is an outcome, not a crash
        kind, reason, delay = _classify(exc, call)
        elapsed = time.monotonic() - started
        return [HandlerOutcome(kind, call.name, reason, delay, elapsed) for _ in call.receipts]
    elapsed = time.monotonic() - started
    if result is not None and not isinstance(result, BatchResult):
        log.error("bad_batch_result", handler=call.name, got=type(result).__name__)
        result = BatchResult([(r, RetryLater("bad_batch_result")) for r in call.receipts])
    outcomes: list[HandlerOutcome] = []
    for receipt in call.receipts:
        signal = result.failure_for(receipt) if result is not None else None
        kind, reason, delay = ("ok", "", None) if signal is None else _classify(signal, call)
        outcomes.append(HandlerOutcome(kind, call.name, reason, delay, elapsed))
    return outcomes


def _classify(exc: Exception, call: _Call) -> tuple[OutcomeKind, str, float | None]:
    if isinstance(exc, RetryLater):
        return "retry", exc.reason or "retry_later", exc.delay_s
    if isinstance(exc, PermanentFailure):
        return "permanent", exc.reason or "permanent_failure", None
    log.error("handler_raised", handler=call.name, exc_info=exc,
              message_types=sorted({r.message_type for r in call.receipts}),
              message_ids=[r.meta.message_id for r in call.receipts])
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever exc says
    return "retry", reason[:_REASON_MAX_CHARS], None
