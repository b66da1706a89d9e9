"""Poison isolation: a receipt whose handler kills the process (os._exit, a segfault, the OOM
killer) must not take the receipts that were in flight beside it down again and again.

Who is a suspect. A delivery whose count is above 1 and whose claim found no trace of an
outcome (the dedup record was absent or an orphan's, not a release mark "P:" nor a
completion; see consumer.pipeline.dedup) came back because the process that held it died,
or never got as far as its claim. After a crash that is every receipt the dead process held;
on the normal path (first deliveries, retries, hand backs) nobody is. Telling them apart
costs nothing more than the claim the batch makes anyway.

What happens to a suspect. It runs alone (`Isolation.alone`): no other batch dispatches and
no other handler runs in the process meanwhile (running ones are given up to the handler
deadline to finish; one already stuck is not waited for), so if the process dies now, this
receipt did it. In the gate its claim is confirmed first (`Lifecycle.confirm`: the wait
may outlast its lease and its visibility, and a later delivery of it may hold the record
now; then that one runs it, this copy does not). Before the run,
`CrashLedger.begin` counts it in Redis (`<dedup record>:crashes`); when the run returns the
count goes. A suspect found with CRASH_LIMIT lone runs that never returned is dead-lettered
with reason `crashed_worker` without running again (replayable like any dead letter). Its
batch-mates of the first crash each run alone once, finish and are applied once; only the
receipts whose handlers had returned in the instant before that first crash, completion not
yet recorded, can repeat (the documented window). Two lone deaths, not one, so that a single
kill from outside (an operator's kill -9) never condemns a good receipt.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TypeVar, cast

import redis
import structlog

from consumer.clients.redis_client import RedisClient, transient_from_redis
from consumer.errors import TransientError
from consumer.pipeline.lifecycle import Lifecycle
from consumer.pipeline.outcome import Decision, Verdict
from consumer.pipeline.work import Work

log = structlog.get_logger("alicom_receipts.poison")
W = TypeVar("W", bound=Work)

CRASHED_WORKER = "crashed_worker"
#: Lone runs that never returned before a receipt is dead-lettered as `crashed_worker`.
CRASH_LIMIT = 2
#: How long a count is kept: past MNS's longest visibility, so the next delivery sees it.
CRASH_MEMORY_S = 13 * 3600


def crashed_worker(crashes: int) -> Decision:
    """The decision for a receipt that killed the process `crashes` times running alone."""
    return Decision(Verdict.DEAD_LETTER, "dead_letter", CRASHED_WORKER,
                    "the process died %d times while this receipt ran alone" % crashes)


class CrashLedger:
    """Per receipt, how many of its lone runs never returned (Redis, one key each)."""

    def __init__(self, client: RedisClient, record_key: Callable[[str], str]) -> None:
        self._client = client
        self._record_key = record_key  # the dedup record's Redis key of a dedup key

    def _key(self, key: str) -> str:
        return self._record_key(key) + ":crashes"

    def count(self, key: str) -> int:
        try:
            value = self._client.get(self._key(key))
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "crash count", self._client) from exc
        return int(value or 0)

    def begin(self, key: str) -> None:
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.incr(self._key(key))
                pipe.expire(self._key(key), CRASH_MEMORY_S)
                pipe.execute()
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "crash count", self._client) from exc

    def end(self, key: str) -> None:
        try:
            self._client.delete(self._key(key))
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "crash count", self._client) from exc

    def safely(self, what: str, fn: Callable[[], object]) -> None:
        """Runs a ledger step; Redis away is logged, never fatal: the receipt still runs
        alone, and max_dequeue_count still ends a loop the ledger could not count."""
        try:
            fn()
        except TransientError as exc:
            log.warning("crash_ledger_failed", step=what, error=str(exc))


class Isolation:
    """A gate between normal batches (`shared`, many at once) and a suspect (`alone`).

    `alone` waits until no batch is dispatching, keeps new ones out while it holds the gate
    (a waiting `alone` goes first), then waits up to `wait_s` for the handlers still running
    (`running()`, a stuck one's included) to finish.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._alone = False
        self._waiting = 0
        self._blocked = 0

    @property
    def waiting(self) -> int:
        """How many `alone` callers wait for the gate (they go before any new batch)."""
        with self._cond:
            return self._waiting

    @property
    def blocked(self) -> int:
        """How many `shared` callers wait for a suspect (holding the gate or waiting for it)."""
        with self._cond:
            return self._blocked

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._alone or self._waiting:
                self._blocked += 1
                self._cond.wait()
                self._blocked -= 1
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self, running: Callable[[], int], wait_s: float) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._alone or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._alone = True
        try:
            give_up = time.monotonic() + wait_s
            while running() and time.monotonic() < give_up:
                time.sleep(0.02)
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


class PoisonGuard:
    """Runs batches through the lifecycle with suspects alone (see the module docstring).

    Without a ledger (no Redis for it, e.g. a test world) every receipt runs as usual.
    """

    def __init__(self, ledger: CrashLedger | None, running: Callable[[], int],
                 wait_s: float, lease_s: float) -> None:
        self.ledger = ledger
        self.gate = Isolation()
        self._running = running
        self._wait_s = wait_s
        self._lease_s = lease_s  # of a claim confirmed again (`Lifecycle.confirm`)

    def run(self, lifecycle: Lifecycle, batch: Sequence[W],
            settle: Callable[[list[W]], None]) -> None:
        """Runs `batch`; every decided item (now, or late for a stuck handler) goes to
        `settle`. An item runs only once its claim is confirmed in the gate (its wait for the
        gate may have outlasted its lease, see `Lifecycle.confirm`)."""
        normal = [w for w in batch if not (w.suspect and self.ledger)]
        if normal:
            with self.gate.shared():
                to_run, left = lifecycle.confirm(normal, self._lease_s)
                done = lifecycle.run(to_run, late=settle)
            if done or left:
                settle(left + done)
        for work in batch:
            if work.suspect and self.ledger:
                self._alone(lifecycle, work, settle)

    def _alone(self, lifecycle: Lifecycle, work: W, settle: Callable[[list[W]], None]) -> None:
        ledger, key = cast(CrashLedger, self.ledger), str(work.key)
        try:
            crashes = ledger.count(key)
        except TransientError:
            crashes = 0
        if crashes >= CRASH_LIMIT:
            work.decision = crashed_worker(crashes)
            log.error("crashed_worker", dedup_key=key, crashes=crashes,
                      deliveries=work.deliveries, note="dead-lettered without running again")
            settle([work])
            return

        def late(items: list[W]) -> None:
            ledger.safely("end", partial(ledger.end, key))
            settle(items)

        with self.gate.alone(self._running, self._wait_s):
            _, left = lifecycle.confirm([work], self._lease_s)
            if left:
                settle(left)  # another delivery holds it now, or Redis could not say
                return
            log.warning("suspect_runs_alone", dedup_key=key, deliveries=work.deliveries,
                        lone_deaths=crashes)
            ledger.safely("begin", partial(ledger.begin, key))
            done = lifecycle.run([work], late=late)
        if done:
            ledger.safely("end", partial(ledger.end, key))
            settle(done)
