"""What the lifecycle (consumer.pipeline.lifecycle) works on, and the seams it needs.

`Work` is one item in the lifecycle; `Transport` is what differs per source (MNS, the push
stream, reconcile, replay); `LifecycleParts` the collaborators every source shares;
`RedisRetry` the one Redis retry policy.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from consumer.handler_api import HandlerOutcome
from consumer.keys import dedup_key
from consumer.pipeline.backoff import call_with_retry
from consumer.pipeline.deadletter import DeadLetter
from consumer.pipeline.dedup import DedupStore
from consumer.pipeline.dispatch import Late
from consumer.pipeline.outcome import Decision, RetryPolicy
from consumer.pipeline.selection import Selection
from consumer.receipts import Receipt

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Work:
    """One message (MNS), stream entry (push), send (reconcile) or letter (replay) on its
    way through the lifecycle; each transport subclasses it with what its source needs.

    `deliveries` is this delivery's count (MNS DequeueCount, the stream's delivery count, 1
    for reconcile and replay). `completed`: None while no completion was written, True once
    the record is COMPLETED, False when another delivery's live claim refused it.
    `done`: the `handler_tag`s of the handlers that finished the receipt (on an earlier
    delivery, from the claim, then also on this one unless it is to be acknowledged, whose
    record is written COMPLETED whole); `only`: the handlers to run (a
    replay's), None for all; `outcomes`: each handler's outcome on this delivery.
    `suspect`: a re-delivery whose claim found no trace of an outcome: the process that held
    it may have died of it (consumer.pipeline.poison); it runs alone.
    `lease_until`: until when (monotonic) the claim is known to hold: set by the claim and by
    each lease renewal that Redis confirmed; a claim past it is confirmed again before the
    item runs (`Lifecycle.confirm`). Infinite for a source whose claims never wait.
    `running_since`: when (monotonic) `Lifecycle.run` dispatched its handlers; None before
    and once it is decided. While it is set, nothing re-checks the claim before the handler
    acts, so the MNS heartbeat renews its lease even when MNS refuses the visibility.
    """

    deliveries: int = 1
    receipt: Receipt | None = None
    key: str | None = None
    owner: str = ""
    claimed: bool = False
    decision: Decision | None = None
    handler: str = ""
    duration_s: float = 0.0
    completed: bool | None = None
    done: frozenset[str] = frozenset()
    only: Selection | None = None
    outcomes: tuple[HandlerOutcome, ...] = ()
    suspect: bool = False
    lease_until: float = math.inf
    running_since: float | None = None
    # The record's name before keys were hashed (consumer.keys): clear text, never shown.
    legacy: str | None = field(default=None, repr=False)


W = TypeVar("W", bound=Work)
W_contra = TypeVar("W_contra", bound=Work, contravariant=True)


class Transport(Protocol[W_contra]):
    """What differs per source. Every method may raise AlicomReceiptsError (after its own
    retries); `decode` raises DecodeError for a body that is no receipt."""

    source: str

    def decode(self, work: W_contra) -> Receipt: ...

    def dead_letter(self, work: W_contra, decision: Decision, now_ms: int) -> DeadLetter:
        """The letter to store; its id must be the same on every delivery of one message."""
        ...

    def acknowledge(self, items: Sequence[W_contra]) -> None:
        """Done for good: completion recorded (ACK) or dead letter stored (DEAD_LETTER)."""
        ...

    def hand_back(self, items: Sequence[W_contra]) -> None:
        """RETRY: deliver again after `decision.delay_s` (claims already released)."""
        ...

    def finish(self, items: Sequence[W_contra]) -> None:
        """They left the lifecycle (settled or left alone); never raises."""
        ...

    def log_fields(self, work: W_contra) -> dict[str, object]:
        """The source's fields of the `receipt_settled` line (queue, message id, ...)."""
        ...


class Dispatch(Protocol):
    """What the lifecycle needs of consumer.pipeline.dispatch.Dispatcher."""

    def dispatch_each(self, receipts: Sequence[Receipt],
                      completed: Sequence[Collection[str]] | None = None,
                      late: Late | None = None,
                      only: Sequence[Selection | None] | None = None,
                      ) -> list[list[HandlerOutcome]]: ...


class DeadLetterSink(Protocol):
    def put_many(self, letters: Sequence[DeadLetter]) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class RedisRetry:
    """The one Redis retry policy (tenacity, through `call_with_retry`): a bounded retry for
    a step that may give up, and a hold that retries until Redis answers or `stop` is set."""

    attempts: int = 6
    max_wait_s: float = 2.0
    hold_wait_s: float = 0.5  # short: a held completion must win the race when Redis returns

    def call(self, what: str, fn: Callable[[], T], stop: threading.Event) -> T:
        return call_with_retry(what, fn, stop, attempts=self.attempts,
                               max_wait_s=self.max_wait_s)

    def until_answered(self, what: str, fn: Callable[[], T], stop: threading.Event) -> T:
        return call_with_retry(what, fn, stop, attempts=None, max_wait_s=self.hold_wait_s,
                               quiet=True)


@dataclass(frozen=True, slots=True)
class LifecycleParts:
    """The collaborators, built once per process (consumer.runtime.app and the commands)."""

    dedup: DedupStore
    dead_letters: DeadLetterSink
    dispatcher: Dispatch
    policy: RetryPolicy
    completed_ttl_s: float
    key_of: Callable[[Receipt], str] = dedup_key
    redis_retry: RedisRetry = RedisRetry()
