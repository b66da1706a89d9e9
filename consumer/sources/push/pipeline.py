"""The push pipeline: drains the push stream through decode, dedup, handlers and dead letters.

Used by `alicom-receipts push-worker` (consumer.sources.push.worker, the command and its threads).

The push server (consumer.sources.push.server) appends each pushed receipt to a Redis stream;
this worker
reads it as a consumer group (XREADGROUP, batches) on `consumers` threads and gives every
entry the treatment an MNS message gets, with the same parts:

    decode   parse_json (consumer.pipeline.decode); a bad entry is dead-lettered with its raw JSON
             and the reason (source "push")
    dedup    one claim script call per batch (the platform pushes a body again after a
             timeout or a 5xx: the dedup key recognises the receipts)
    handle   the Dispatcher, then `classify` (consumer.pipeline.outcome) decides
    settle   dead letter stored first, claims released; completion recorded, then XACK
             (+ XDEL, so the stream only holds what is not settled); a retry stays pending

Retries without a visibility timeout: an entry stays in the group's pending list, and the
consumer sets its idle time (XCLAIM ... IDLE ... JUSTID, which does not count a delivery)
so that it reaches `reclaim_idle_s` exactly when its backoff ends; XAUTOCLAIM with that
min idle time then re-takes it, and XPENDING's delivery count is the dequeue count that
`max_dequeue_count` is checked against. The same XAUTOCLAIM re-takes the entries of a
consumer that died. Backoffs are therefore capped at `reclaim_idle_s`, and it must exceed
the handler deadline (the claim lease is just under it).

A Redis outage: an entry whose handlers returned is held until its completion is recorded
(consumer.pipeline.lifecycle). It stays pending to this consumer meanwhile; when Redis
returns, its idle time is past `reclaim_idle_s`, so it must not be re-taken before the
holder recorded it: this process's threads skip the entries of the batches it works on,
the lease renewal (`renew_leases`) resets their idle time on its first pass, and every
consumer re-takes nothing until Redis has answered it for `reclaim_grace_s` (the holder
retries every half second, so it records first).

Every stage is the one lifecycle's over `PushTransport`; nothing here decides an outcome.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import redis
import structlog

from consumer.clients.redis_client import RedisClient, transient_from_redis
from consumer.errors import AlicomReceiptsError
from consumer.keys import dedup_key
from consumer.pipeline.backoff import Backoff, Trouble
from consumer.pipeline.deadletter import DeadLetter, message_letter_id
from consumer.pipeline.deadletter_store import RedisDeadLetterStore
from consumer.pipeline.decode import parse_json
from consumer.pipeline.dedup import DedupStore
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.lifecycle import Lifecycle, LifecycleParts, Work
from consumer.pipeline.outcome import Decision, RetryPolicy
from consumer.pipeline.stats import Stats
from consumer.receipts import Receipt, ReceiptMeta
from consumer.settings.push import PushSettings

log = structlog.get_logger("alicom_receipts.push_worker")
_T = TypeVar("_T")


@dataclass(slots=True, eq=False, kw_only=True)
class Entry(Work):
    """One stream entry on its way through the lifecycle."""

    id: str
    message_type: str
    body: str
    received_ms: int


class PushWorker:
    """Drains one stream's consumer group; `run(consumer)` is one thread's loop.

    Thread-safe: the threads share the Redis client (a connection pool), the stores and the
    dispatcher. `stop` ends every loop after its current batch; `abort` (the shutdown budget
    ran out) ends every retry and held completion.
    """

    def __init__(  # noqa: PLR0913, PLR0917 - the collaborators, built once by push_worker
            self, client: RedisClient, push: PushSettings, dedup: DedupStore,
            dead_letters: RedisDeadLetterStore, dispatcher: Dispatcher,
            policy: RetryPolicy, completed_ttl_s: float, stats: Stats | None = None,
            key_of: Callable[[Receipt], str] = dedup_key,
            reclaim_grace_s: float = 3.0) -> None:
        self.push = push
        self.stats = stats or Stats()
        self.stop = threading.Event()
        # For the HTTP health checks (consumer.runtime.health.loop_checks): when a consumer
        # thread last finished a loop turn, and why Redis is failing (None: it answers).
        self.last_turn = time.monotonic()
        self.redis_error: str | None = "starting: no read has gone through yet"
        self.abort = threading.Event()
        self.lifecycle = Lifecycle(
            LifecycleParts(dedup, dead_letters, dispatcher, policy, completed_ttl_s, key_of),
            self.stats, self.abort)
        self._redis = client
        self._reclaim_ms = int(push.reclaim_idle_s * 1000)
        self._lease_s = max(0.5, push.reclaim_idle_s - 0.5)
        self._grace_s = reclaim_grace_s
        self._group_ready = False
        self._held_lock = threading.Lock()
        # Per consumer thread: the claim owner and the entries of the batch it works on now.
        self._leased: dict[str, tuple[str, list[Entry]]] = {}

    @property
    def redis(self) -> RedisClient:
        """The client this worker reads the stream with (for gauges of Redis itself)."""
        return self._redis

    # -- the loop -----------------------------------------------------------------------

    def run(self, consumer: str) -> None:
        """Reclaims, reads and settles batches until `stop`; Redis outages are backed off."""
        backoff = Backoff(max_s=10.0)
        transport = PushTransport(self, consumer)
        next_reclaim = time.monotonic() + self._grace_s  # a fresh start may follow an outage
        while not self.stop.is_set():
            try:
                entries: list[Entry] = []
                if time.monotonic() >= next_reclaim:
                    entries = self.reclaim(consumer)
                    next_reclaim = time.monotonic() + min(1.0, self.push.reclaim_idle_s / 4)
                if not entries:
                    entries = self.read(consumer)
                if entries:
                    self.process(entries, transport)
                else:
                    self.stats.incr("empty_polls")  # a read went through: receive progress
                backoff.reset()
                self.redis_error = None
            except AlicomReceiptsError as exc:
                log.warning("push_worker_redis_failed", consumer=consumer, error=str(exc))
                self.stats.incr("redis_errors")
                self.redis_error = str(exc)[:200]
                next_reclaim = time.monotonic() + self._grace_s  # see the module docstring
                backoff.sleep(self.stop)
            self.last_turn = time.monotonic()

    def ensure_group(self) -> None:
        """Creates the group (and the stream) reading from the start, unless it exists."""
        try:
            self._redis.xgroup_create(self.push.stream, self.push.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise transient_from_redis(exc, "XGROUP CREATE", self._redis) from exc
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "XGROUP CREATE", self._redis) from exc
        self._group_ready = True

    def read(self, consumer: str) -> list[Entry]:
        """New entries for this consumer (delivery count 1), blocking up to `block_s`."""
        s = self.push
        reply = self._call("XREADGROUP", lambda: self._redis.xreadgroup(
            s.group, consumer, {s.stream: ">"}, count=s.batch_size,
            block=max(1, int(s.block_s * 1000))))
        streams = cast("list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]", reply or [])
        rows = [row for _stream, stream_rows in streams for row in stream_rows]
        return [_entry(entry_id, fields, 1) for entry_id, fields in rows]

    def pending(self) -> int:
        """Entries of the group delivered and not yet acknowledged (XPENDING's summary)."""
        summary = self._redis.xpending(self.push.stream, self.push.group)
        return int(summary["pending"])

    def reclaim(self, consumer: str) -> list[Entry]:
        """Entries idle for `reclaim_idle_s` (retries now due, or a dead consumer's)."""
        s = self.push
        reply = self._call("XAUTOCLAIM", lambda: self._redis.xautoclaim(
            s.stream, s.group, consumer, self._reclaim_ms, "0-0", count=s.batch_size))
        # [next cursor, [(id, fields)...], [ids deleted meanwhile]]; those leave the PEL.
        claimed = cast("list[tuple[bytes, dict[bytes, bytes] | None]]", reply[1])
        # An entry of a batch this process still works on (its idle time may be past
        # reclaim_idle_s just after a Redis outage) stays with the thread that holds it.
        with self._held_lock:
            in_hand = {e.id for _owner, entries in self._leased.values() for e in entries}
        rows = [(i, f) for i, f in claimed if f is not None and _text(i) not in in_hand]
        if not rows:
            return []
        self.stats.event("push_reclaimed", len(rows))
        counts = self._call("XPENDING", partial(self._delivery_counts, consumer,
                                                [i for i, _ in rows]))
        return [_entry(i, f, counts.get(_text(i), 1)) for i, f in rows]

    def _delivery_counts(self, consumer: str, ids: Sequence[bytes]) -> dict[str, int]:
        with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(self.push.stream, self.push.group, entry_id, entry_id, 1,
                                    consumername=consumer)
            replies = pipe.execute()
        return {_text(p["message_id"]): int(p["times_delivered"])
                for reply in replies for p in reply}

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        """One Redis call; a missing group (Redis restarted empty) is created on the way."""
        if not self._group_ready:
            self.ensure_group()
        try:
            return fn()
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._group_ready = False
            raise transient_from_redis(exc, what, self._redis) from exc
        except redis.RedisError as exc:
            raise transient_from_redis(exc, what, self._redis) from exc

    # -- one batch ----------------------------------------------------------------------

    def process(self, entries: list[Entry], transport: PushTransport) -> None:
        """The lifecycle for one batch; raises TransientError when the claim failed (the
        entries stay pending and are re-taken after reclaim_idle_s). While it runs, the
        batch is leased (`renew_leases`): no other consumer re-takes an entry of it."""
        self.stats.incr("received", len(entries))
        owner = secrets.token_hex(8)
        with self._held_lock:
            self._leased[transport.consumer] = (owner, entries)
        try:
            self.lifecycle.process(entries, transport, owner, self._lease_s)
        finally:
            with self._held_lock:
                self._leased.pop(transport.consumer, None)

    def keep_leases(self) -> None:
        """`renew_leases` every third of `reclaim_idle_s` until `abort` (its own thread)."""
        trouble = Trouble("push_lease_renew")  # one line per state change, not per pass
        while not self.abort.wait(self.push.reclaim_idle_s / 3):
            try:
                renewed = self.renew_leases()
            except AlicomReceiptsError as exc:
                trouble.report(0, 1, str(exc))
            else:
                trouble.report(renewed, 0, "")

    def renew_leases(self) -> int:
        """Like the MNS heartbeat: every entry of a batch being worked on, waiting or
        running, has its idle time reset (XCLAIM ... JUSTID: no delivery is counted) and its
        dedup claim extended, so XAUTOCLAIM in another process never re-takes it meanwhile.
        Returns how many entries were renewed."""
        with self._held_lock:
            leased = [(consumer, owner, list(entries))
                      for consumer, (owner, entries) in self._leased.items()]
        s, renewed = self.push, 0
        for consumer, owner, entries in leased:
            # Undecided (waiting or running), or finished with the completion not recorded.
            ids: list[Any] = [e.id for e in entries if e.decision is None
                              or (e.decision.ran_handlers and not e.completed)]
            if not ids:
                continue
            self._call("XCLAIM JUSTID", partial(self._redis.xclaim, s.stream, s.group,
                                                consumer, 0, ids, justid=True))
            keys = [str(e.key) for e in entries if e.claimed and e.key is not None]
            if keys:
                self.lifecycle.parts.dedup.extend(keys, owner, self._lease_s)
            renewed += len(ids)
        return renewed

    def redis_op(self, what: str, fn: Callable[[], _T]) -> _T:
        """One Redis call, retried by the one policy, errors wrapped."""
        def call() -> _T:
            try:
                return fn()
            except redis.RedisError as exc:
                raise transient_from_redis(exc, what, self._redis) from exc

        return self.lifecycle.parts.redis_retry.call(what, call, self.abort)

    @property
    def redis_client(self) -> RedisClient:
        return self._redis

    def forget(self, consumer: str) -> bool:
        """Removes a stopped consumer from the group if nothing is pending on it."""
        s = self.push
        try:
            if self._redis.xpending_range(s.stream, s.group, "-", "+", 1,
                                          consumername=consumer):
                return False
            self._redis.xgroup_delconsumer(s.stream, s.group, consumer)
        except redis.RedisError:
            return False
        return True


class PushTransport:
    """`Transport[Entry]` of one consumer of the group: acknowledge is XACK + XDEL (one
    transaction), hand back is XCLAIM with the idle time that makes the entry due when its
    backoff ends. While a completion waits for Redis, the batch's lease keeps the entry
    (PushWorker.renew_leases)."""

    source = "push"

    @property
    def consumer(self) -> str:
        return self._consumer

    def __init__(self, worker: PushWorker, consumer: str) -> None:
        self._worker = worker
        self._consumer = consumer
        self._push = worker.push

    def decode(self, work: Entry) -> Receipt:
        meta = ReceiptMeta(source="push", message_id=work.id, dequeue_count=work.deliveries,
                           enqueue_time_ms=work.received_ms)
        return parse_json(work.message_type, work.body, meta)

    def dead_letter(self, work: Entry, decision: Decision, now_ms: int) -> DeadLetter:
        return DeadLetter.create(
            queue="", message_type=work.message_type, raw_body=work.body,
            reason=decision.reason, detail=decision.detail, source="push",
            message_id=work.id, dequeue_count=work.deliveries,
            enqueue_time_ms=work.received_ms, dead_at_ms=now_ms,
            letter_id=message_letter_id("push", self._push.stream, work.id, work.received_ms))

    def acknowledge(self, items: Sequence[Entry]) -> None:
        ids = [e.id for e in items]
        s = self._push

        def ack() -> None:
            with self._worker.redis_client.pipeline(transaction=True) as pipe:
                pipe.xack(s.stream, s.group, *ids)
                pipe.xdel(s.stream, *ids)
                pipe.execute()

        self._worker.redis_op("XACK", ack)

    def hand_back(self, items: Sequence[Entry]) -> None:
        s, reclaim_ms = self._push, int(self._push.reclaim_idle_s * 1000)

        def reposition() -> None:
            # Idle set so that the entry reaches reclaim_idle_s when its backoff ends.
            with self._worker.redis_client.pipeline(transaction=False) as pipe:
                for entry in items:
                    delay_ms = min(cast(Decision, entry.decision).delay_s * 1000, reclaim_ms)
                    pipe.xclaim(s.stream, s.group, self._consumer, 0, [entry.id],
                                idle=reclaim_ms - delay_ms, justid=True)
                pipe.execute()

        self._worker.redis_op("XCLAIM IDLE", reposition)

    def finish(self, items: Sequence[Entry]) -> None:
        pass  # a settled entry left the stream; an unsettled one stays pending

    def log_fields(self, work: Entry) -> dict[str, object]:
        return {"entry_id": work.id, "message_type": work.message_type}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(entry_id: bytes | str, fields: dict[bytes, bytes], deliveries: int) -> Entry:
    def field(name: bytes) -> str:
        return fields.get(name, b"").decode("utf-8", "surrogateescape")

    received = field(b"r")
    return Entry(id=_text(entry_id), deliveries=deliveries, message_type=field(b"t"),
                 body=field(b"b"), received_ms=int(received) if received.isdigit() else 0)
