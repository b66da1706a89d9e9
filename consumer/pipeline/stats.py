"""One stats object per worker process: every counter the daemon keeps lives here.

Threads only ever call `incr` and `add_in_flight`; readers take a `snapshot()`. A plain lock
is cheap next to one network round trip per batch, and keeps the counts exact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

import structlog

if TYPE_CHECKING:
    from consumer.receipts import Receipt

COUNTERS: Final = (
    "received",            # messages taken off the queue
    "empty_polls",         # receives that returned nothing
    "handled",             # handlers succeeded, message acknowledged
    "duplicates",          # already completed: acknowledged without running handlers
    "in_progress_skipped", # claimed by another live delivery: left alone
    "retries",             # handed back with a backoff for a later delivery
    "dead_letters",        # stored in the dead-letter store, then deleted
    "decode_errors",       # bodies that could not become a receipt (also dead-lettered)
    "deleted",             # messages deleted from MNS
    "delete_failures",     # delete entries MNS refused
    "lost_claims",         # completion refused: the claim had moved to another delivery
    "visibility_extensions",
    "handed_back",         # returned at shutdown or when the pipeline could not take them
    # A handler ran (or may have run) but its completion was not recorded: still running
    # when the process exited, or Redis refused the record. Logged as the event
    # `completion_unrecorded` too; the receipt runs again when MNS re-delivers it.
    "completion_unrecorded",
    "token_refreshes",
    "poll_errors",
    "redis_errors",
)

_log = structlog.get_logger("alicom_receipts.stats")

Listener = Callable[[str, int], None]


class OutcomeListener(Protocol):
    """Told about every settled receipt (metrics, delivery statistics); must not raise."""

    def on_outcome(self, outcome: str, handler: str, duration_s: float,
                   receipt: Receipt | None) -> None: ...


class EventListener(Protocol):
    """Told about labelled events (`Stats.event`): a poll error's kind, a token's expiry."""

    def on_event(self, name: str, value: float, labels: Mapping[str, str]) -> None: ...


class Stats:
    """Thread-safe counters plus the in-flight gauge; `listeners` mirror them (e.g. metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._in_flight = 0
        self._listeners: list[Listener] = []
        self._outcome_listeners: list[OutcomeListener] = []
        self._event_listeners: list[EventListener] = []

    def subscribe(self, listener: Listener) -> None:
        """`listener(name, amount)` is called after every increment, outside the lock."""
        self._listeners.append(listener)

    def subscribe_outcomes(self, listener: OutcomeListener) -> None:
        self._outcome_listeners.append(listener)

    def subscribe_events(self, listener: EventListener) -> None:
        self._event_listeners.append(listener)

    def event(self, name: str, value: float = 1.0, **labels: str) -> None:
        """A labelled event for observers (metrics): "poll_error" (kind), "token_refreshed"
        (value: the new token's expiry, epoch s), "token_fetch_failed", "push_reclaimed"
        (value: entries). Counts nothing itself."""
        for listener in self._event_listeners:
            try:
                listener.on_event(name, value, labels)
            except Exception:  # noqa: BLE001 - an observer's crash is logged, never fatal
                _log.exception("event_listener_crashed", listener=repr(listener))

    def outcome(self, outcome: str, handler: str, duration_s: float,
                receipt: Receipt | None) -> None:
        """One receipt settled with `outcome` ("handled", "duplicate", "retry", ...)."""
        for listener in self._outcome_listeners:
            try:
                listener.on_outcome(outcome, handler, duration_s, receipt)
            except Exception:  # noqa: BLE001 - an observer's crash is logged, never fatal
                _log.exception("outcome_listener_crashed", listener=repr(listener))

    def incr(self, name: str, amount: int = 1) -> None:
        if amount == 0:
            return
        with self._lock:
            self._counts[name] += amount
        for listener in self._listeners:
            listener(name, amount)

    def add_in_flight(self, amount: int) -> None:
        with self._lock:
            self._in_flight += amount

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "in_flight": self._in_flight}
