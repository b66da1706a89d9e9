"""Stage 5, ack, of the MNS worker: grouping decided messages for the ackers, and the
heartbeat.

The ackers settle groups through the one lifecycle (consumer.pipeline.lifecycle, its
`settle` states the order: nothing is deleted without its completion record or its stored
dead letter) over the MNS transport (consumer.sources.mns.transport). `collect` gathers a
group of about one delete batch.

The heartbeat extends the visibility (and the dedup lease) of every message this process
holds, waiting, running or finished, so a slow handler is never raced by a re-delivery and a
completion that waits for Redis is never raced by a second run. A wedged handler cannot hold
a message forever: the worker recycles once a handler ran `max_in_flight_s`
(consumer.sources.mns.worker.Worker.should_recycle), and the exit ends it. Its failures are
logged once per state change, with counts.

The dedup lease of a message whose handler runs is renewed whether or not MNS extended its
visibility (a refusal, MNS unreachable), and retried every pass while Redis does not answer,
for `running_hold_s` from `Work.running_since`: when `Lifecycle.run` handed its batch to the
dispatcher, not when its handler call started, so time the call waits for a free handler
thread counts (a call that starts past the hold has its lease renewed only with the
visibility MNS extends). A record that lapsed meanwhile, with nobody claiming it since, is
taken back as soon as Redis answers. A waiting copy confirms its claim before it runs
(`Lifecycle.confirm`); a running one cannot, so a lapse there let the next delivery claim
the record and run the handler beside it. Holding the lease is safe for the
receipt: that delivery finds the claim held and leaves its message; this copy records the
completion (its delete, with a receipt handle the re-delivery made stale, fails), and the
delivery after that is acknowledged as a duplicate; a handler that fails releases the claim
as usual and the message comes back. Neither path loses the receipt, and if the process dies
the lease ends one visibility timeout later. The hold is bounded so that a process cut off
from MNS does not keep receipts from the others: past `running_hold_s` (the worker gives the
time after which the dispatcher takes a call for hung) the lease goes with the visibility
again. A renewal Redis refuses for a running copy (another delivery holds the record, or
completed it) is logged once as `claim_lost_while_running`; its completion then writes
nothing over the other claim (`Completion.LOST`: not acknowledged, that delivery settles the
message).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from consumer.errors import AlicomReceiptsError, TransientError
from consumer.pipeline.backoff import Trouble
from consumer.pipeline.dedup import DedupStore
from consumer.pipeline.stats import Stats
from consumer.sources.mns.inflight import InFlight, Window
from consumer.sources.mns.queue import QueueClient

log = structlog.get_logger("alicom_receipts.ack")

#: Put on the acks queue to tell an acker thread to finish.
STOP = None


@dataclass(frozen=True, slots=True)
class AckConfig:
    delete_batch_max: int = 16
    delete_flush_s: float = 0.05
    completed_ttl_s: float = 604800.0
    visibility_timeout_s: int = 60
    extend_before_s: float = 10.0
    max_in_flight_s: float = 600.0


def collect(acks: queue.Queue[list[InFlight] | None], config: AckConfig,
            ) -> list[InFlight] | None:
    """At least a delete batch of decided messages, or what came within `delete_flush_s`;
    None on STOP.

    The lists on the queue are whole batches (a received or a dispatched one), so the
    group usually fills with the first list and this waits for nothing.
    """
    first = acks.get()
    if first is STOP:
        return None
    group = list(first)
    deadline = time.monotonic() + config.delete_flush_s
    while len(group) < config.delete_batch_max:
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


class Heartbeat:
    """Extends visibility and dedup leases of every message in our hands (see the module
    docstring); one thread, making its calls through `clients`, one call per client at once.

    MNS has no batch ChangeMessageVisibility: a call per message. One at a time, a pass over
    a full window (hundreds held through a Redis outage, tens of ms per call) can outlast
    `extend_before_s`, and a message whose visibility lapses is delivered again and run a
    second time once its claim lease has lapsed too. So the due messages go most urgent
    first, `len(clients)` calls at a time (the SDK's client holds one connection: one each).
    """

    def __init__(self, clients: Sequence[QueueClient], dedup: DedupStore, window: Window,
                 stats: Stats, config: AckConfig, *, running_hold_s: float) -> None:
        self._idle: queue.SimpleQueue[QueueClient] = queue.SimpleQueue()
        for client in clients:
            self._idle.put(client)
        self._calls = ThreadPoolExecutor(len(clients), thread_name_prefix="heartbeat-call")
        self._dedup = dedup
        self._window = window
        self._stats = stats
        self._config = config
        self._running_hold_s = running_hold_s  # see the module docstring
        self._visibility = Trouble("visibility_extend")
        self._lease = Trouble("lease_extend")

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        try:
            while not stop.wait(interval_s):
                self.beat()
        finally:
            self._calls.shutdown(wait=False, cancel_futures=True)  # a hung call ends with us

    def beat(self) -> None:
        """One pass over the window; errors are logged per state change, retried next pass."""
        now_ms = time.time() * 1000
        due_ms = now_ms + self._config.extend_before_s * 1000
        held = list(self._window.items())
        due = sorted((item for item in held if item.next_visible_ms <= due_ms),
                     key=lambda item: item.next_visible_ms)
        results = list(self._calls.map(self._extend, due, [now_ms] * len(due)))
        extended = sum(1 for result in results if result is True)
        errors = [result for result in results if isinstance(result, str)]
        self._stats.incr("visibility_extensions", extended)
        self._visibility.report(extended, len(errors), errors[0] if errors else "")
        # With the visibility it was just given, or on its own while the handler runs.
        renew = {item.id: item for item, result in zip(due, results, strict=True)
                 if result is True and _unrecorded_claim(item)}
        now = time.monotonic()
        renew.update((item.id, item) for item in held if self._running_lease_due(item, now))
        by_owner: dict[str, list[InFlight]] = defaultdict(list)
        for item in renew.values():
            by_owner[item.owner].append(item)
        self._renew_leases(by_owner)

    def _running_lease_due(self, item: InFlight, now: float) -> bool:
        """The handler runs (within the hold), and its lease ends within `extend_before_s`:
        not renewed with a visibility extension, or its renewal failed."""
        started = item.running_since
        return (started is not None and now - started < self._running_hold_s
                and not item.lease_lost and _unrecorded_claim(item)
                and item.lease_until - now < self._config.extend_before_s)

    def _renew_leases(self, renew: dict[str, list[InFlight]]) -> None:
        """Renews the claims of `renew` (per owner); each renewal Redis confirmed moves the
        item's `lease_until` (a record that lapsed with nobody claiming it since is taken
        back: `DedupStore.extend`). One that failed or was refused (another delivery holds
        the record now, or it was completed or released) leaves it where it was, so a
        waiting item confirms its claim before it runs (`Lifecycle.confirm`), and a running
        one is retried next pass (failed) or logged once (refused)."""
        ok, failed, error = 0, 0, ""
        lease_s = float(self._config.visibility_timeout_s)
        for owner, items in renew.items():
            began = time.monotonic()
            try:
                renewals = self._dedup.extend([str(i.key) for i in items], owner, lease_s)
            except TransientError as exc:
                failed += len(items)
                error = error or str(exc)
                continue
            ok += len(items)
            for item, renewal in zip(items, renewals, strict=True):
                if renewal:
                    item.lease_until = began + lease_s
                elif item.running_since is not None and not item.lease_lost:
                    # Still running (a decided item clears it before its completion or
                    # release is written): the record is another delivery's, or completed.
                    item.lease_lost = True
                    log.warning("claim_lost_while_running", dedup_key=item.key,
                                queue=item.delivery.queue,
                                message_id=item.delivery.message_id,
                                note="another delivery took the record; this copy's "
                                "completion will not overwrite its claim")
        self._lease.report(ok, failed, error)

    def _extend(self, item: InFlight, now_ms: float) -> bool | str:
        """True: extended; False: not due (or the acker uses the handle); a string: the
        error."""
        cfg = self._config
        with item.lock:
            if item.settling or item.next_visible_ms - now_ms > cfg.extend_before_s * 1000:
                return False
            client = self._idle.get()
            try:
                handle, next_visible = client.change_visibility(
                    item.receipt_handle, cfg.visibility_timeout_s)
            except AlicomReceiptsError as exc:
                return str(exc) or type(exc).__name__
            finally:
                self._idle.put(client)
            item.receipt_handle, item.next_visible_ms = handle, next_visible
        return True


def _unrecorded_claim(item: InFlight) -> bool:
    """Claimed by this delivery and its completion not recorded yet."""
    return item.claimed and item.completed is None and item.key is not None
