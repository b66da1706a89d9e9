"""The handler API: what users write, and what the dispatcher reports back.

Users write a function or a class; they never see MNS or Redis::

    from consumer import handler, RetryLater, PermanentFailure, SmsReport

    @handler                            # gets SmsReport only: the annotation says so
    def on_report(receipt: SmsReport) -> None:
        if not receipt.success:
            notify(receipt.phone_number, receipt.err_code)

    @handler(deadline_s=5, max_attempts=3)      # both kinds of delivery report
    def on_any_report(receipt: SmsReport | IntlSmsReport) -> None: ...

    class MyBatch:                      # options from the config go to __init__(**options)
        name = "my-batch"
        types = ("SmsReport",)

        def handle_batch(self, receipts: Sequence[SmsReport]) -> BatchResult:
            result = BatchResult()      # every receipt not marked here succeeded
            for receipt, stored in zip(receipts, store_many(receipts)):
                if not stored:
                    result.retry(receipt, "store busy", delay_s=30)
            return result

        def close(self) -> None: ...    # optional: release resources at shutdown

Routing is by receipt class. `types` names classes ("SmsReport", "IntlSmsReport", "SmsUp",
...; `SmsReport` and the international site's `IntlSmsReport` share one queue but are two
classes: list both, or annotate `SmsReport | IntlSmsReport`, to take both). Without `types`
the receipt parameter's annotation decides (`Receipt` or none: every class). Declared types
the annotation does not accept are refused at start-up and by `alicom-receipts check`.

What a handler raises decides the receipt's fate (the only exceptions `consumer` exports
for handlers are the two signals):

| raised                          | outcome                                                 |
|---------------------------------|---------------------------------------------------------|
| nothing (returns)               | handled: never run again for this receipt               |
| `RetryLater(reason, delay_s)`   | delivered again later (after `delay_s`, else backoff)   |
| `PermanentFailure(reason)`      | dead-lettered at once (replayable)                      |
| any other exception             | logged with its traceback, then as `RetryLater`         |

A retry past the handler's `max_attempts` deliveries is dead-lettered (reason
"max_attempts"). `deadline_s`, `max_attempts` and the retry backoff (`retry_base_s`,
`retry_max_s`) can be set per handler in `@handler(...)`, as class attributes or in the
config's `[[handlers]]` table (which wins); unset, the global `worker.handler_deadline_s`,
`ack.max_dequeue_count`, `ack.retry_base_s` / `ack.retry_max_s` apply.

Completion is per handler: when several handlers take a receipt and one fails, those that
finished it are not run again on its redelivery, retry or replay.

Handlers run in worker threads and may be called concurrently: make them thread-safe.
Delivery is at least once: a handler may see a receipt again (a crash before its completion
was recorded), so make its effects idempotent or tolerate repeats (or use an exactly-once
sink: the built-in `redis-stream` and `postgres` handlers).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar, cast, overload, runtime_checkable

from consumer.errors import PermanentFailure, RetryLater
from consumer.handler_types import normalise_types, receipt_classes
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


#: The documented upper bounds of a handler's own times (as worker.handler_deadline_s and
#: ack.retry_max_s: a day, and MNS's longest visibility).
_POLICY_HIGHS = {"deadline_s": 86400, "retry_base_s": 43200, "retry_max_s": 43200}


@dataclass(frozen=True)
class HandlerPolicy:
    """One handler's limits; None means "the global setting".

    `deadline_s`: a call running longer counts as stuck (its receipt stays held; its result
    is kept when it comes; see consumer.pipeline.dispatch).
    `max_attempts`: a retry on this delivery number or later is dead-lettered instead.
    `retry_base_s` / `retry_max_s`: the backoff of a retry without its own `delay_s`,
    base * 2^(attempt-1) capped at max (the global ones apply to whichever is unset).
    """

    deadline_s: float | None = None
    max_attempts: int | None = None
    retry_base_s: float | None = None
    retry_max_s: float | None = None

    def problems(self, where: str) -> list[str]:
        """One line per out-of-range value, each naming `where` and the field."""
        out = [f"{where}.{name} must be > 0 and <= {high}, got {value!r}"
               for name, high in _POLICY_HIGHS.items()
               if (value := getattr(self, name)) is not None
               and (isinstance(value, bool) or not isinstance(value, int | float)
                    or not 0 < value <= high)]  # NaN fails the comparison, inf the bound
        attempts = self.max_attempts
        if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)
                                     or not 1 <= attempts <= 1000):
            out.append(f"{where}.max_attempts must be an integer 1-1000, got {attempts!r}")
        base, top = self.retry_base_s, self.retry_max_s
        if not out and base is not None and top is not None and top < base:
            out.append(f"{where}.retry_max_s ({top!r}) must be >= retry_base_s ({base!r})")
        return out

    def over(self, base: HandlerPolicy) -> HandlerPolicy:
        """This policy with its unset fields taken from `base`."""
        return dataclasses.replace(base, **{
            f.name: value for f in dataclasses.fields(self)
            if (value := getattr(self, f.name)) is not None})


class FunctionHandler(Generic[R]):
    """A single-receipt handler made from a plain function (see `handler`)."""

    def __init__(self, func: Callable[[R], object], name: str,
                 types: tuple[str, ...] | None, policy: HandlerPolicy | None = None) -> None:
        self.__wrapped__ = func
        self.__doc__ = func.__doc__
        self.name = name
        self.types = types
        self.policy = policy or HandlerPolicy()

    def handle(self, receipt: Receipt) -> None:
        """Calls the function; its return value is ignored."""
        self.__wrapped__(cast(R, receipt))

    def __call__(self, receipt: R) -> None:
        """The decorated function stays callable directly (handy in unit tests)."""
        self.__wrapped__(receipt)


TypesArg = Iterable[str | type[Receipt]] | str | type[Receipt] | None


@overload
def handler(func: Callable[[R], object], /) -> FunctionHandler[R]: ...
@overload
def handler(*, types: TypesArg = None, name: str | None = None,
            deadline_s: float | None = None, max_attempts: int | None = None,
            retry_base_s: float | None = None, retry_max_s: float | None = None,
            ) -> Callable[[Callable[[R], object]], FunctionHandler[R]]: ...
def handler(func: Callable[[R], object] | None = None, /, *, types: TypesArg = None,
            name: str | None = None, deadline_s: float | None = None,
            max_attempts: int | None = None, retry_base_s: float | None = None,
            retry_max_s: float | None = None,
            ) -> FunctionHandler[R] | Callable[[Callable[[R], object]], FunctionHandler[R]]:
    """Turns a function taking one receipt into a Handler; use bare or with options.

    `types` (class names or classes) limits it to these receipt classes; without it the
    parameter's annotation decides. Types the annotation does not accept raise
    HandlerTypeError here, naming both. `name` (default: the function's name) labels its
    logs and metrics. `deadline_s`, `max_attempts`, `retry_base_s`, `retry_max_s`: see
    `HandlerPolicy` (None: the global setting).
    """
    declared = normalise_types(types, "handler types")
    policy = HandlerPolicy(deadline_s, max_attempts, retry_base_s, retry_max_s)

    def wrap(target: Callable[[R], object]) -> FunctionHandler[R]:
        label = name or str(getattr(target, "__name__", "handler"))
        problems = policy.problems(f"@handler {label}")
        if problems:
            raise ValueError("; ".join(problems))
        made = FunctionHandler(target, label, declared, policy)
        receipt_classes(made, declared, label)  # refuse a mismatch where it is written
        return made

    return wrap if func is None else wrap(func)


def handler_name(obj: object) -> str:
    """The label of a handler in logs and metrics: its `name`, else its class name."""
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name else type(obj).__name__


@functools.lru_cache(maxsize=1024)  # called per handler per receipt; names are few
def handler_tag(name: str) -> str:
    """A handler's short, stable id in dedup records: 6 hex characters of its name's hash
    (a record names the handlers that finished a receipt; names can be long)."""
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=3).hexdigest()


def is_batch_handler(obj: object) -> bool:
    """True for an object with `handle_batch` (it wins over `handle` when both exist)."""
    return callable(getattr(obj, "handle_batch", None))


def own_policy(obj: object) -> HandlerPolicy:
    """What a handler says about its own limits: `@handler(...)`'s, or class attributes
    `deadline_s`, `max_attempts`, `retry_base_s`, `retry_max_s` (absent: unset)."""
    policy = getattr(obj, "policy", None)
    if isinstance(policy, HandlerPolicy):
        return policy
    return HandlerPolicy(**{f.name: getattr(obj, f.name, None)
                            for f in dataclasses.fields(HandlerPolicy)})


@dataclass(frozen=True, eq=False)
class RoutedHandler:
    """A handler as the dispatcher runs it: its label, its own policy, batch or single.

    `target` is the user's object (closed through `close`); the policy's unset fields fall
    back to the dispatcher's global ones.
    """

    target: AnyHandler
    name: str
    policy: HandlerPolicy = field(default_factory=HandlerPolicy)

    @property
    def batch(self) -> bool:
        return is_batch_handler(self.target)

    def close(self) -> None:
        close = getattr(self.target, "close", None)
        if callable(close):
            close()


def routed(obj: AnyHandler | RoutedHandler) -> RoutedHandler:
    """`obj` as a RoutedHandler, named and with its own policy when it is a bare handler."""
    if isinstance(obj, RoutedHandler):
        return obj
    return RoutedHandler(obj, handler_name(obj), own_policy(obj))


def worst(outcomes: Sequence[HandlerOutcome]) -> HandlerOutcome:
    """permanent > retry > ok; among equals the longest delay, then the slowest call."""
    if len(outcomes) == 1:  # the usual case: one handler per type
        return outcomes[0]
    slowest = outcomes[0]
    for o in outcomes:  # the usual case of several: all ok, the slowest wins (a plain loop:
        if o.kind != "ok":  # all() and max() with a key cost twice as much per receipt)
            return max(outcomes, key=lambda o: (_SEVERITY[o.kind], o.delay_s or 0.0,
                                                o.duration_s))
        if o.duration_s > slowest.duration_s:
            slowest = o
    return slowest
