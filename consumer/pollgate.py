"""How many of a worker's pollers receive at once: as many as the round trip needs.

A poller spends each turn waiting for MNS (the round trip) and then working on the batch
(decode, claim, hand-off). To keep that work going without a gap, about
`round_trip / work + 1` pollers must be receiving at the same time (Little's law). With
MNS 20 ms away that is every poller there is; on a VPC endpoint or the local sandbox a
round trip takes about as long as the work, and two or three suffice. More than that buys
nothing: the extra threads only queue for the interpreter lock, and each handoff of the
lock costs CPU that the receipts then lack (measured with `bench/worker_bench.py`).

`PollGate` admits that many pollers; the others wait on a condition, costing nothing.
Only turns that received messages update the estimate: an empty long poll measures how
long the queue stayed empty, not the network.
"""

from __future__ import annotations

import math
import threading

_WEIGHT = 0.2  # of the newest turn in the running means


class PollGate:
    """Lets pollers 0 .. `limit` - 1 receive and parks the others; `limit` adapts between
    `floor` and `pollers` to the measured round trip and work per turn, and stays at
    `pollers` when not `adaptive`.

    Each poller parks on its own event, so a change of the limit wakes exactly the pollers
    it lets in; a shared count of turns would wake parked pollers at every turn only to
    send them back to sleep.
    """

    def __init__(self, pollers: int, adaptive: bool = True, floor: int = 2) -> None:
        self.pollers = pollers
        self.adaptive = adaptive
        self._floor = min(floor, pollers)
        # Start low: a poller that waits for the lock inflates the round trip it measures,
        # so starting high could hold the limit high; a real distance raises it in a turn.
        self._limit = self._floor if adaptive else pollers
        self._turns = [threading.Event() for _ in range(pollers)]
        for event in self._turns[:self._limit]:
            event.set()
        self._round_trip_s: float | None = None
        self._work_s: float | None = None
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """How many pollers may be receiving at once right now."""
        return self._limit

    def wait_turn(self, index: int, stop: threading.Event, poll_s: float = 0.5) -> bool:
        """Returns once poller `index` (0-based) may receive; False if `stop` was set first."""
        while index >= self._limit:
            if stop.is_set():
                return False
            self._turns[index].wait(poll_s)
        return True

    def record(self, round_trip_s: float, work_s: float) -> None:
        """A turn that received messages: its round trip and the work on its batch."""
        if not self.adaptive:
            return
        with self._lock:
            rt, work = self._round_trip_s, self._work_s
            rt = round_trip_s if rt is None else rt + _WEIGHT * (round_trip_s - rt)
            work = work_s if work is None else work + _WEIGHT * (work_s - work)
            self._round_trip_s, self._work_s = rt, work
            # A tenth of a poller of tolerance: a mean that settles a hair above a whole
            # number must not cost a whole extra poller.
            needed = math.ceil(rt / max(work, 1e-6) + 1 - 0.1)
            wanted = max(self._floor, min(self.pollers, needed))
            if wanted != self._limit:
                self._limit = wanted
                for index, event in enumerate(self._turns):
                    if index < wanted:
                        event.set()
                    else:
                        event.clear()
