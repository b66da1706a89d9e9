"""Stage 5, ack: carry out decisions, in batches, in the only safe order.

For a handled receipt the completion record is written first and the message deleted
second: if the process dies in between, the re-delivered message meets a COMPLETED record
and is deleted without running handlers again. Nothing is ever deleted without either a
completion record or a stored dead letter. Deletes go out up to 16 at a time and each
failed entry of the answer is accounted for.

The heartbeat lives here too: it extends the visibility (and the dedup lease) of every
message this process holds, waiting or running, so a slow handler is never raced by a
re-delivery. A wedged one cannot hold a message forever: the worker recycles once a handler
ran `max_in_flight_s` (consumer.sources.mns.worker.Worker.should_recycle), and the exit ends it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import structlog

from consumer.errors import AlicomReceiptsError, TransientError
from consumer.pipeline.backoff import call_with_retry
from consumer.pipeline.deadletter import DeadLetter, RedisDeadLetterStore
from consumer.pipeline.dedup import DedupStore
from consumer.pipeline.outcome import Decision, Verdict
from consumer.pipeline.stats import Stats
from consumer.sources.mns.inflight import InFlight, Window
from consumer.sources.mns.queue import QueueClient

log = structlog.get_logger("alicom_receipts.ack")
_T = TypeVar("_T")

#: Put on the acks queue to tell an acker thread to finish.
STOP = None


@dataclass(frozen=True, slots=True)
class Settled:
    """A decision for one in-flight message, with what the log line needs."""

    item: InFlight
    decision: Decision
    handler: str = ""
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class AckConfig:
    delete_batch_max: int = 16
    delete_flush_s: float = 0.05
    completed_ttl_s: float = 604800.0
    visibility_timeout_s: int = 60
    extend_before_s: float = 10.0
    max_in_flight_s: float = 600.0


class Acker:
    """Settles groups from the acks queue; one per thread, each with its own queue client."""

    def __init__(
        self,
        client: QueueClient,
        dedup: DedupStore,
        dead_letters: RedisDeadLetterStore,
        window: Window,
        stats: Stats,
        config: AckConfig,
        abort: threading.Event,
        message_type: str,
    ) -> None:
        self._client = client
        self._message_type = message_type
        self._dedup = dedup
        self._dead_letters = dead_letters
        self._window = window
        self._stats = stats
        self._config = config
        self._abort = abort  # set only for an immediate exit; retries stop waiting then

    def collect(self, acks: queue.Queue[list[Settled] | None]) -> list[Settled] | None:
        """At least a delete batch of decisions, or what came within `delete_flush_s`.

        The lists on the queue are whole batches (a received or a dispatched one), so the
        group usually fills with the first list and this waits for nothing.
        """
        first = acks.get()
        if first is STOP:
            return None
        group = list(first)
        deadline = time.monotonic() + self._config.delete_flush_s
        while len(group) < self._config.delete_batch_max:
            remaining = deadline - time.monotonic()
            try:
                nxt = acks.get(timeout=remaining) if remaining > 0 else acks.get_nowait()
            except queue.Empty:
                break
            if nxt is STOP:
                acks.put(STOP)  # let the thread finish after this group, and wake the others
                break
            group.extend(nxt)
        return group

    def settle(self, group: Sequence[Settled]) -> None:
        """Carries out one group's decisions; every item leaves the window at the end."""
        for s in group:
            with s.item.lock:
                s.item.settling = True
        by_verdict: dict[Verdict, list[Settled]] = defaultdict(list)
        for s in group:
            by_verdict[s.decision.verdict].append(s)
        try:
            to_delete = self._complete(by_verdict[Verdict.ACK])
            to_delete += self._dead_letter(by_verdict[Verdict.DEAD_LETTER])
            self._retry(by_verdict[Verdict.RETRY])
            self._delete(to_delete)
        except AlicomReceiptsError as exc:
            # Redis or MNS stayed away through every retry: nothing unrecorded was deleted.
            # The messages come back when their visibility ends and meet the records we did
            # write, so this loses nothing; it only costs a re-delivery.
            log.error(  # noqa: TRY400 - an outage, not a bug: the error text is enough
                "settle_failed", queue=self._client.queue_name, error=str(exc),
                messages=len(group))
        finally:
            for s in group:
                log_outcome(s)
                self._stats.outcome(s.decision.outcome, s.handler, s.duration_s, s.item.receipt)
            self._window.settle_many([s.item for s in group])

    def _complete(self, acked: list[Settled]) -> list[Settled]:
        """Writes completion records (one script call per claim owner); returns deletable."""
        ran: dict[str, list[Settled]] = defaultdict(list)
        deletable = [s for s in acked if not s.decision.ran_handlers]  # duplicates
        for s in acked:
            if s.decision.ran_handlers:
                ran[s.item.owner].append(s)
        for owner, items in ran.items():
            todo = [s for s in items if s.item.completed is None]  # the runner could not
            if todo:
                keys = [str(s.item.dedup_key) for s in todo]
                ok = self._redis("complete", partial(self._dedup.complete, keys, owner,
                                                     self._config.completed_ttl_s))
                for s, ours in zip(todo, ok, strict=True):
                    s.item.completed = ours
            owned = [s for s in items if s.item.completed]
            deletable += owned
            self._stats.incr("handled", len(owned))
            for s in items:
                if not s.item.completed:
                    # Another delivery holds the claim now; its owner will delete its copy.
                    self._stats.incr("lost_claims")
                    log.warning("claim_lost", queue=s.item.delivery.queue,
                                message_id=s.item.delivery.message_id, dedup_key=s.item.dedup_key)
        self._stats.incr("duplicates", len(acked) - sum(len(v) for v in ran.values()))
        return deletable

    def _dead_letter(self, dead: list[Settled]) -> list[Settled]:
        if not dead:
            return []
        now_ms = int(time.time() * 1000)
        letters = [_dead_letter_of(s, self._message_type, now_ms) for s in dead]
        self._redis("dead_letter", lambda: self._dead_letters.put_many(letters))
        self._release([s for s in dead if s.item.owner])
        self._stats.incr("dead_letters", len(dead))
        return list(dead)

    def _retry(self, retried: list[Settled]) -> None:
        if not retried:
            return
        self._release(retried)
        for s in retried:
            self._change_visibility(s.item, s.decision.delay_s)
        back = sum(1 for s in retried if s.decision.outcome == "handed_back")
        self._stats.incr("handed_back", back)
        self._stats.incr("retries", len(retried) - back)

    def _release(self, items: list[Settled]) -> None:
        by_owner: dict[str, list[str]] = defaultdict(list)
        for s in items:
            if s.item.dedup_key is not None:
                by_owner[s.item.owner].append(s.item.dedup_key)
        for owner, keys in by_owner.items():
            self._redis("release", partial(self._dedup.release, keys, owner))

    def _change_visibility(self, item: InFlight, delay_s: int) -> None:
        try:
            handle, next_visible = call_with_retry(
                "ChangeMessageVisibility",
                lambda: self._client.change_visibility(item.receipt_handle, delay_s),
                self._abort, attempts=3)
        except AlicomReceiptsError as exc:
            # The handle may be stale (already re-delivered): the message comes back anyway.
            log.warning("hand_back_failed", queue=item.delivery.queue,
                        message_id=item.delivery.message_id, error=str(exc))
            return
        item.receipt_handle, item.next_visible_ms = handle, next_visible

    def _delete(self, items: list[Settled]) -> None:
        """BatchDeleteMessage, at most `delete_batch_max` (MNS: 16) handles per request."""
        size = self._config.delete_batch_max
        for start in range(0, len(items), size):
            self._delete_batch(items[start:start + size])

    def _delete_batch(self, items: list[Settled]) -> None:
        handles = [s.item.receipt_handle for s in items]
        failures = call_with_retry("BatchDeleteMessage", lambda: self._client.delete(handles),
                                   self._abort, attempts=5)
        self._stats.incr("deleted", len(handles) - len(failures))
        if failures:
            self._stats.incr("delete_failures", len(failures))
            for f in failures:
                # A stale handle means MNS re-delivers the message; its completion record (or
                # dead letter) is already written, so that delivery is deleted as a duplicate.
                log.warning("delete_failed", queue=self._client.queue_name, code=f.code,
                            stale=f.handle_is_stale, error=f.message)

    def _redis(self, what: str, fn: Callable[[], _T]) -> _T:
        try:
            return call_with_retry(what, fn, self._abort, attempts=8, max_wait_s=5.0)
        except TransientError:
            self._stats.incr("redis_errors")
            raise


class Heartbeat:
    """Extends visibility and dedup leases of slow messages; one thread, own queue client."""

    def __init__(self, client: QueueClient, dedup: DedupStore, window: Window, stats: Stats,
                 config: AckConfig) -> None:
        self._client = client
        self._dedup = dedup
        self._window = window
        self._stats = stats
        self._config = config

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        while not stop.wait(interval_s):
            self.beat()

    def beat(self) -> None:
        """One pass over the window; errors are logged and retried on the next pass."""
        now_ms = time.time() * 1000
        renewed: dict[str, list[str]] = defaultdict(list)
        for item in self._window.items():
            if self._extend(item, now_ms) and item.dedup_key is not None:
                renewed[item.owner].append(item.dedup_key)
        for owner, keys in renewed.items():
            try:
                self._dedup.extend(keys, owner, float(self._config.visibility_timeout_s))
            except TransientError as exc:
                log.warning("lease_extend_failed", error=str(exc))

    def _extend(self, item: InFlight, now_ms: float) -> bool:
        cfg = self._config
        with item.lock:
            if item.settling or item.next_visible_ms - now_ms > cfg.extend_before_s * 1000:
                return False
            try:
                handle, next_visible = self._client.change_visibility(
                    item.receipt_handle, cfg.visibility_timeout_s)
            except AlicomReceiptsError as exc:
                log.warning("visibility_extend_failed", queue=item.delivery.queue,
                            message_id=item.delivery.message_id, error=str(exc))
                return False
            item.receipt_handle, item.next_visible_ms = handle, next_visible
        self._stats.incr("visibility_extensions")
        return True


def _dead_letter_of(s: Settled, message_type: str, now_ms: int) -> DeadLetter:
    d = s.item.delivery
    # create() fixes the id now, so a put retried after a lost reply overwrites the same
    # entry instead of storing the letter twice.
    return DeadLetter.create(
        queue=d.queue, message_type=message_type, raw_body=d.body, reason=s.decision.reason,
        detail=s.decision.detail, source="mns", message_id=d.message_id,
        dequeue_count=d.dequeue_count, enqueue_time_ms=d.enqueue_time_ms,
        first_dequeue_time_ms=d.first_dequeue_time_ms, dead_at_ms=now_ms)


def log_outcome(s: Settled) -> None:
    """The one `receipt_settled` line of an MNS receipt."""
    d = s.item.delivery
    log.info("receipt_settled", queue=d.queue, message_id=d.message_id,
             dequeue_count=d.dequeue_count,
             dedup_key=s.item.dedup_key, handler=s.handler or None, outcome=s.decision.outcome,
             reason=s.decision.reason or None, duration_ms=round(s.duration_s * 1000, 2))
