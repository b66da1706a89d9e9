"""The four sources of the lifecycle, each behind its real transport, for the contract tests.

Each `Source` makes items the way its source would (an MNS delivery, a stream entry read by
the push worker, a tracked send, a stored dead letter), and tells what its transport did
with them: acknowledged, handed back, or neither. Redis is real; MNS is a recording queue
client (the worker's end-to-end tests run the real MNS transport against the sandbox).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import redis

from consumer.keys import dedup_key
from consumer.pipeline.deadletter import DeadLetter
from consumer.pipeline.deadletter_store import DeadLetterSettings, RedisDeadLetterStore
from consumer.pipeline.decode import parse_object
from consumer.pipeline.dedup import DedupSettings, DedupStore, RedisDedupStore
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.lifecycle import Lifecycle, LifecycleParts, RedisRetry, Transport, Work
from consumer.pipeline.outcome import RetryPolicy
from consumer.pipeline.stats import Stats
from consumer.receipts import ReceiptMeta
from consumer.reports.tracking import SendTracker, TrackedSend
from consumer.settings.push import PushSettings
from consumer.sources.mns.inflight import InFlight, Window
from consumer.sources.mns.queue import DeleteFailure, Delivery
from consumer.sources.mns.transport import MnsTransport
from consumer.sources.push.pipeline import PushTransport, PushWorker
from consumer.sources.reconcile.run import Found, ReconcileTransport
from consumer.sources.replay.transport import Replayed, ReplayTransport

QUEUE = "Alicom-Queue-1-SmsReport"
POLICY = RetryPolicy(retry_base_s=5.0, retry_max_s=60.0, max_dequeue_count=5)


def report(biz_id: str) -> dict[str, Any]:
    """An SmsReport body whose business identity is SmsReport:<biz_id>:13800000000."""
    return {"phone_number": "13800000000", "send_time": "2017-01-01 00:00:00",
            "report_time": "2017-01-01 00:00:01", "success": True, "err_code": "DELIVERED",
            "err_msg": "ok", "sms_size": "1", "biz_id": biz_id, "out_id": "o-" + biz_id}


def key_of(biz_id: str) -> str:
    """The dedup key of `report(biz_id)` (a keyed hash, see consumer.keys)."""
    return dedup_key(parse_object("SmsReport", report(biz_id), ReceiptMeta(source="mns")))


def lifecycle_on(store: DedupStore, client: redis.Redis, dispatcher: Dispatcher) -> Lifecycle:
    """A lifecycle over `store` (a dedup store, or a wrapper of one), dead letters on
    `client`, with a short Redis retry."""
    parts = LifecycleParts(store, RedisDeadLetterStore(client, DeadLetterSettings()),
                           dispatcher, POLICY, 3600.0,
                           redis_retry=RedisRetry(attempts=2, max_wait_s=0.05))
    return Lifecycle(parts, Stats(), threading.Event())


class Source(Protocol):
    name: str

    def transport(self, lifecycle: Lifecycle) -> Transport[Any]: ...

    def item(self, biz_id: str, deliveries: int = 1, broken: bool = False) -> Work: ...

    def acked(self, item: Work) -> bool: ...

    def handed_back(self, item: Work) -> bool: ...


class RecordingQueue:
    """The MNS QueueClient the transport talks to; records deletes and visibility changes."""

    queue_name = QUEUE

    def __init__(self) -> None:
        self.deleted: list[str] = []
        self.visibility: dict[str, int] = {}
        self.lock = threading.Lock()

    def receive(self, max_messages: int, wait_seconds: int) -> list[Delivery]:
        return []

    def delete(self, receipt_handles: Sequence[str]) -> list[DeleteFailure]:
        with self.lock:
            self.deleted += receipt_handles
        return []

    def change_visibility(self, receipt_handle: str, visibility_timeout_s: int,
                          ) -> tuple[str, int]:
        with self.lock:
            self.visibility[receipt_handle] = visibility_timeout_s
        return receipt_handle + "+", int(time.time() * 1000) + visibility_timeout_s * 1000

    def close(self) -> None:
        pass


class MnsSource:
    name = "mns"

    def __init__(self) -> None:
        self.queue = RecordingQueue()
        self.window = Window(256)
        self._serial = 0

    def transport(self, lifecycle: Lifecycle) -> Transport[Any]:
        return MnsTransport(self.queue, "SmsReport", self.window, lifecycle.stats,
                            lifecycle.stop)

    def item(self, biz_id: str, deliveries: int = 1, broken: bool = False) -> Work:
        self._serial += 1
        text = "not base64 {" if broken else base64.b64encode(
            json.dumps(report(biz_id)).encode()).decode()
        now_ms = int(time.time() * 1000)
        delivery = Delivery(QUEUE, "M%d-%s" % (self._serial, biz_id), "h-%d" % self._serial,
                            text, hashlib.md5(text.encode()).hexdigest().upper(), deliveries,
                            now_ms, now_ms, now_ms + 30_000)
        item = InFlight.of(delivery)
        self.window.track([item])
        return item

    def acked(self, item: Work) -> bool:
        assert isinstance(item, InFlight)
        return item.delivery.receipt_handle in self.queue.deleted

    def handed_back(self, item: Work) -> bool:
        assert isinstance(item, InFlight)
        return item.delivery.receipt_handle in self.queue.visibility


class PushSource:
    name = "push"

    def __init__(self, client: redis.Redis, worker: PushWorker) -> None:
        self.client = client
        self.worker = worker
        self.push = worker.push

    def transport(self, lifecycle: Lifecycle) -> Transport[Any]:
        return PushTransport(self.worker, "c-0")

    def item(self, biz_id: str, deliveries: int = 1, broken: bool = False) -> Work:
        body = "{not json" if broken else json.dumps(report(biz_id))
        self.client.xadd(self.push.stream, {"t": "SmsReport", "b": body,
                                            "r": str(int(time.time() * 1000))})
        [entry] = self.worker.read("c-0")
        entry.deliveries = deliveries
        return entry

    def _pending(self, item: Work) -> list[dict[str, Any]]:
        entry_id = item.id  # type: ignore[attr-defined]
        return list(self.client.xpending_range(self.push.stream, self.push.group, entry_id,
                                               entry_id, 1))

    def acked(self, item: Work) -> bool:
        return not self._pending(item) and not self.client.xrange(
            self.push.stream, item.id, item.id)  # type: ignore[attr-defined]

    def handed_back(self, item: Work) -> bool:
        # Still pending, its idle time set so it is due when the backoff ends.
        pending = self._pending(item)
        reclaim_ms = self.push.reclaim_idle_s * 1000
        return bool(pending) and pending[0]["time_since_delivered"] >= reclaim_ms - 10_000


class ReconcileSource:
    name = "reconcile"

    def __init__(self, client: redis.Redis) -> None:
        self.tracker = SendTracker(client)
        self.client = client

    def transport(self, lifecycle: Lifecycle) -> Transport[Any]:
        return ReconcileTransport(self.tracker, self.client, lifecycle)

    def item(self, biz_id: str, deliveries: int = 1, broken: bool = False) -> Work:
        send = TrackedSend(biz_id, "13800000000", time.time() - 3600, "o-" + biz_id)
        self.tracker.record_many([send])
        obj = report(biz_id)
        if broken:
            del obj["biz_id"]
        return Found(send=send, obj=obj, deliveries=deliveries)

    def _tracked(self, item: Work) -> bool:
        send = item.send  # type: ignore[attr-defined]
        return any(s.biz_id == send.biz_id for s in self.tracker.pending(0, 1000))

    def acked(self, item: Work) -> bool:
        return not self._tracked(item)

    def handed_back(self, item: Work) -> bool:
        return self._tracked(item)


class ReplaySource:
    name = "replay"

    def __init__(self, store: RedisDeadLetterStore) -> None:
        self.store = store

    def transport(self, lifecycle: Lifecycle) -> Transport[Any]:
        return ReplayTransport(self.store, lifecycle)

    def item(self, biz_id: str, deliveries: int = 1, broken: bool = False) -> Work:
        body = "{not json" if broken else json.dumps(report(biz_id))
        letter = DeadLetter.create(queue="", message_type="SmsReport", raw_body=body,
                                   reason="permanent_failure", detail="earlier", source="push",
                                   message_id="e-" + biz_id)
        self.store.put(letter)
        return Replayed(letter=letter, deliveries=deliveries)

    def acked(self, item: Work) -> bool:
        """Settled for good: removed (applied), or rewritten in place (dead again)."""
        stored = self.store.get(item.letter.id)  # type: ignore[attr-defined]
        return stored is None or stored.detail != "earlier"

    def handed_back(self, item: Work) -> bool:
        return not self.acked(item)


def build_sources(client: redis.Redis, dispatcher: Dispatcher) -> list[Source]:
    push = PushSettings(reclaim_idle_s=60.0, block_s=0.05, batch_size=1)
    worker = PushWorker(client, push, RedisDedupStore(client, DedupSettings()),
                        RedisDeadLetterStore(client, DeadLetterSettings()), dispatcher,
                        POLICY, 3600.0, Stats())
    worker.ensure_group()
    return [MnsSource(), PushSource(client, worker), ReconcileSource(client),
            ReplaySource(RedisDeadLetterStore(client, DeadLetterSettings()))]
