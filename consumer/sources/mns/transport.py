"""The MNS transport of the lifecycle (consumer.pipeline.lifecycle): what "acknowledge" and
"hand back" mean for a queue message.

* acknowledge: BatchDeleteMessage, at most `delete_batch_max` (MNS: 16) handles per
  request, each failed entry of the answer accounted for;
* hand back: ChangeMessageVisibility to the decision's backoff;
* while a completion waits for Redis, the heartbeat (consumer.sources.mns.ack) keeps the
  message invisible, as it does for every message in the window;
* finish: the message leaves the in-flight window.

One transport per thread: each has its own SDK client (the SDK is not thread-safe).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import structlog

from consumer.errors import AlicomReceiptsError
from consumer.pipeline.backoff import call_with_retry
from consumer.pipeline.deadletter import DeadLetter, message_letter_id
from consumer.pipeline.decode import decode_body
from consumer.pipeline.outcome import Decision
from consumer.pipeline.stats import Stats
from consumer.receipts import Receipt, ReceiptMeta
from consumer.sources.mns.inflight import InFlight, Window
from consumer.sources.mns.queue import Delivery, QueueClient

log = structlog.get_logger("alicom_receipts.ack")


class MnsTransport:
    """`Transport[InFlight]` over one queue client."""

    source = "mns"

    def __init__(self, client: QueueClient, message_type: str, window: Window, stats: Stats,
                 abort: threading.Event, delete_batch_max: int = 16) -> None:
        self.client = client
        self._message_type = message_type
        self._window = window
        self._stats = stats
        self._abort = abort  # set only for an immediate exit; MNS retries stop waiting then
        self._delete_batch_max = delete_batch_max

    def decode(self, work: InFlight) -> Receipt:
        d = work.delivery
        return decode_body(self._message_type, d.body, d.body_md5, meta_of(d))

    def dead_letter(self, work: InFlight, decision: Decision, now_ms: int) -> DeadLetter:
        d = work.delivery
        return DeadLetter.create(
            queue=d.queue, message_type=self._message_type, raw_body=d.body,
            reason=decision.reason, detail=decision.detail, source="mns",
            message_id=d.message_id, dequeue_count=d.dequeue_count,
            enqueue_time_ms=d.enqueue_time_ms, first_dequeue_time_ms=d.first_dequeue_time_ms,
            dead_at_ms=now_ms,
            letter_id=message_letter_id("mns", d.queue, d.message_id, d.enqueue_time_ms))

    def acknowledge(self, items: Sequence[InFlight]) -> None:
        size = self._delete_batch_max
        for start in range(0, len(items), size):
            self._delete_batch(items[start:start + size])

    def _delete_batch(self, items: Sequence[InFlight]) -> None:
        handles = [_take_handle(item) for item in items]
        failures = call_with_retry("BatchDeleteMessage", lambda: self.client.delete(handles),
                                   self._abort, attempts=5)
        self._stats.incr("deleted", len(handles) - len(failures))
        if failures:
            self._stats.incr("delete_failures", len(failures))
            for f in failures:
                # A stale handle means MNS re-delivers the message; its completion record (or
                # dead letter, under the same id) is already written, so that delivery is
                # deleted as a duplicate (or its letter overwritten, not stored twice).
                log.warning("delete_failed", queue=self.client.queue_name, code=f.code,
                            stale=f.handle_is_stale, error=f.message)

    def hand_back(self, items: Sequence[InFlight]) -> None:
        for item in items:
            delay_s = item.decision.delay_s if item.decision is not None else 1
            self.change_visibility(item, delay_s)

    def change_visibility(self, item: InFlight, delay_s: int) -> None:
        """Visible again in `delay_s` (MNS takes 1-43200 s); a failure is logged only."""
        handle = _take_handle(item)
        try:
            handle, next_visible = call_with_retry(
                "ChangeMessageVisibility",
                lambda: self.client.change_visibility(handle, delay_s), self._abort, attempts=3)
        except AlicomReceiptsError as exc:
            # The handle may be stale (already re-delivered): the message comes back anyway.
            log.warning("hand_back_failed", queue=item.delivery.queue,
                        message_id=item.delivery.message_id, error=str(exc))
            return
        item.receipt_handle, item.next_visible_ms = handle, next_visible

    def finish(self, items: Sequence[InFlight]) -> None:
        self._window.settle_many(list(items))

    def log_fields(self, work: InFlight) -> dict[str, object]:
        d = work.delivery
        return {"queue": d.queue, "message_id": d.message_id}


def _take_handle(item: InFlight) -> str:
    """The current handle, and the heartbeat keeps off it from now on (a visibility change
    would make the handle this call is about to use stale)."""
    with item.lock:
        item.settling = True
        return item.receipt_handle


def meta_of(d: Delivery) -> ReceiptMeta:
    return ReceiptMeta(source="mns", queue=d.queue, message_id=d.message_id,
                       dequeue_count=d.dequeue_count, enqueue_time_ms=d.enqueue_time_ms,
                       first_dequeue_time_ms=d.first_dequeue_time_ms)
