"""The handler API: what users write, and what the dispatcher reports back.

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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar, cast, overload, runtime_checkable

from consumer.errors import PermanentFailure, RetryLater
from consumer.receipts import Receipt

OutcomeKind = Literal["ok", "retry", "permanent"]
Signal = RetryLater | PermanentFailure
R = TypeVar("R", bound=Receipt)

_SEVERITY: Mapping[str, int] = {"ok": 0, "retry": 1, "permanent": 2}


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
    if len(outcomes) == 1:  # the usual case: one handler per type
        return outcomes[0]
    return max(outcomes, key=lambda o: (_SEVERITY[o.kind], o.delay_s or 0.0, o.duration_s))
