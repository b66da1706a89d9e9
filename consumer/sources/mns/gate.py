"""How many of a worker's pollers, and of its ackers, work at once: what the round trip needs.

A poller spends each turn waiting for MNS (the round trip of a receive) and then working on
the batch (decode, claim, hand-off). To keep that work going without a gap, about
`round_trip / work + 1` pollers must be in a turn at the same time (Little's law). With MNS
20 ms away that is every thread there is; on a VPC endpoint or the local sandbox a round
trip takes about as long as the work, and two or three suffice. More than that buys
nothing: the extra threads only queue for the interpreter lock, and each handoff of the
lock is a context switch that costs CPU the receipts then lack (measured with
`bench/worker_bench.py` and the worker's context switches per receipt).

`Gate` admits that many threads of one kind; the others park on their own event, costing
nothing. Only turns that did a round trip with messages update the estimate: an empty long
poll measures how long the queue stayed empty, not the network. The ackers' gate follows the
pollers' (`lead`): an acker deletes each received batch over the same round trip, with less
work around it, so as many ackers as pollers, and one to spare, keep up.
"""

from __future__ import annotations

import math
import threading

_WEIGHT = 0.2  # of the newest turn in the running means


class Gate:
    """Lets threads 0 .. `limit` - 1 of a kind work and parks the others; `limit` adapts
    between `floor` and `threads` to the measured round trip and work per turn, and stays
    at `threads` when not `adaptive`.

    Each thread parks on its own event, so a change of the limit wakes exactly the threads
    it lets in; a shared count of turns would wake parked threads at every turn only to
    send them back to sleep.
    """

    def __init__(self, threads: int, adaptive: bool = True, floor: int = 2) -> None:
        self.threads = threads
        self.adaptive = adaptive
        self._floor = min(floor, threads)
        # Start low: a thread that waits for the lock inflates the round trip it measures,
        # so starting high could hold the limit high; a real distance raises it in a turn.
        self._limit = self._floor if adaptive else threads
        self._turns = [threading.Event() for _ in range(threads)]
        for event in self._turns[:self._limit]:
            event.set()
        self._round_trip_s: float | None = None
        self._work_s: float | None = None
        self._lock = threading.Lock()
        self._followers: list[tuple[Gate, int]] = []

    @property
    def limit(self) -> int:
        """How many threads may be in a turn at once right now."""
        return self._limit

    def wait_turn(self, index: int, stop: threading.Event, poll_s: float = 0.5) -> bool:
        """Returns once thread `index` (0-based) may take a turn; False if `stop` was set first."""
        while index >= self._limit:
            if stop.is_set():
                return False
            self._turns[index].wait(poll_s)
        return True

    def record(self, round_trip_s: float, work_s: float) -> None:
        """A turn that moved messages: its round trip and the work around it."""
        if not self.adaptive:
            return
        with self._lock:
            rt, work = self._round_trip_s, self._work_s
            rt = round_trip_s if rt is None else rt + _WEIGHT * (round_trip_s - rt)
            work = work_s if work is None else work + _WEIGHT * (work_s - work)
            self._round_trip_s, self._work_s = rt, work
            # A tenth of a thread of tolerance: a mean that settles a hair above a whole
            # number must not cost a whole extra thread.
            needed = math.ceil(rt / max(work, 1e-6) + 1 - 0.1)
            self._set_limit(needed)

    def lead(self, follower: Gate, spare: int = 0) -> None:
        """From now on `follower` admits as many threads as this gate, plus `spare`: for a
        kind of thread whose turns match this one's, one for one (a delete per receive)."""
        with self._lock:
            self._followers.append((follower, spare))
            if follower.adaptive:
                follower._set_limit(self._limit + spare)

    def _set_limit(self, wanted: int) -> None:
        limit = max(self._floor, min(self.threads, wanted))
        if limit == self._limit:
            return
        self._limit = limit
        for index, event in enumerate(self._turns):
            if index < limit:
                event.set()
            else:
                event.clear()
        for follower, spare in self._followers:
            if follower.adaptive:
                follower._set_limit(limit + spare)
