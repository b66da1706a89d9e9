"""The in-flight window: every message this process holds, from receive to acknowledgement.

The window bounds memory and keeps pollers busy without over-receiving: a poller takes room
for a batch before it receives, and each message gives its room back when it is settled
(deleted, handed back or left alone). The heartbeat walks the same registry to extend the
visibility of slow messages, so an item's receipt handle is read and changed under its lock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from consumer.pipeline.lifecycle import Work
from consumer.sources.mns.queue import Delivery

_ids = itertools.count(1)


@dataclass(slots=True, eq=False, kw_only=True)
class InFlight(Work):
    """One received message on its way through the lifecycle (consumer.pipeline.lifecycle).

    The receipt handle changes with every visibility extension; it is read and written under
    `lock`. `settling`: an MNS call of the acker (delete, hand back) uses the handle now, so
    the heartbeat keeps off it. `lease_lost`: the heartbeat found its claim taken while its
    handler ran (logged once; see consumer.sources.mns.ack).
    """

    delivery: Delivery
    receipt_handle: str
    next_visible_ms: int
    received_at: float = field(default_factory=time.monotonic)
    settling: bool = False
    lease_lost: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, delivery: Delivery) -> InFlight:
        return cls(deliveries=delivery.dequeue_count, delivery=delivery,
                   receipt_handle=delivery.receipt_handle,
                   next_visible_ms=delivery.next_visible_time_ms)


class Window:
    """A counting bound on in-flight messages plus the registry of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._cond = threading.Condition()
        self._reserved = 0
        self._items: dict[int, InFlight] = {}

    def reserve(self, n: int, stop: threading.Event, poll_s: float = 0.2) -> bool:
        """Waits for room for `n` messages; False if `stop` was set first."""
        with self._cond:
            while self._reserved + n > self.capacity:
                if stop.is_set():
                    return False
                self._cond.wait(poll_s)
            self._reserved += n
            return True

    def unreserve(self, n: int) -> None:
        """Gives back room reserved for messages that never arrived."""
        if n <= 0:
            return
        with self._cond:
            self._reserved -= n
            self._cond.notify_all()

    def track(self, items: list[InFlight]) -> None:
        with self._cond:
            for item in items:
                self._items[item.id] = item

    def settle(self, item: InFlight) -> None:
        """The message left our hands (deleted, handed back, or left to MNS)."""
        with self._cond:
            if self._items.pop(item.id, None) is not None:
                self._reserved -= 1
                self._cond.notify_all()

    def settle_many(self, items: list[InFlight]) -> None:
        """`settle` for a whole group under one lock acquisition."""
        if not items:
            return
        with self._cond:
            for item in items:
                if self._items.pop(item.id, None) is not None:
                    self._reserved -= 1
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> Iterator[InFlight]:
        with self._cond:
            snapshot = list(self._items.values())
        return iter(snapshot)

    def wait_empty(self, deadline: float) -> bool:
        """Waits until nothing is in flight or `deadline` (monotonic) passes."""
        with self._cond:
            while self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
            return True
