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
                 stats: Stats, config: AckConfig) -> None:
        self._idle: queue.SimpleQueue[QueueClient] = queue.SimpleQueue()
        for client in clients:
            self._idle.put(client)
        self._calls = ThreadPoolExecutor(len(clients), thread_name_prefix="heartbeat-call")
        self._dedup = dedup
        self._window = window
        self._stats = stats
        self._config = config
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
        due = sorted((item for item in self._window.items() if item.next_visible_ms <= due_ms),
                     key=lambda item: item.next_visible_ms)
        renewed: dict[str, list[InFlight]] = defaultdict(list)
        extended, failed, first_error = 0, 0, ""
        for item, result in zip(due, self._calls.map(self._extend, due, [now_ms] * len(due)),
                                strict=True):
            if isinstance(result, str):
                failed += 1
                first_error = first_error or result
            elif result:
                extended += 1
                if item.claimed and item.completed is None and item.key is not None:
                    renewed[item.owner].append(item)
        self._stats.incr("visibility_extensions", extended)
        self._visibility.report(extended, failed, first_error)
        self._renew_leases(renewed)

    def _renew_leases(self, renewed: dict[str, list[InFlight]]) -> None:
        """Renews the claims of the items whose visibility was just extended; each renewal
        Redis confirmed moves the item's `lease_until`. One that failed or was refused (the
        record lapsed, another delivery may hold it now) leaves it where it was, so the item
        confirms its claim before it runs (`Lifecycle.confirm`)."""
        ok, failed, error = 0, 0, ""
        lease_s = float(self._config.visibility_timeout_s)
        for owner, items in renewed.items():
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
