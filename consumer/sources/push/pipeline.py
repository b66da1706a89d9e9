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

Every stage reuses the MNS worker's building blocks; nothing here decides an outcome.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar, cast

import redis
import structlog

from consumer.clients.redis_client import RedisClient
from consumer.errors import AlicomReceiptsError, DecodeError
from consumer.keys import dedup_key
from consumer.pipeline.backoff import Backoff, call_with_retry
from consumer.pipeline.deadletter import DeadLetter, RedisDeadLetterStore
from consumer.pipeline.decode import parse_json
from consumer.pipeline.dedup import ClaimState, DedupStore, transient_from_redis
from consumer.pipeline.dispatch import DISPATCHER_CRASHED, Dispatcher
from consumer.pipeline.outcome import Decision, RetryPolicy, Verdict, classify, precheck
from consumer.pipeline.stats import Stats
from consumer.receipts import Receipt, ReceiptMeta
from consumer.settings.push import PushSettings

log = structlog.get_logger("alicom_receipts.push_worker")
_T = TypeVar("_T")


@dataclass(eq=False)
class Entry:
    """One stream entry on its way through the pipeline."""

    id: str
    deliveries: int
    message_type: str
    body: str
    received_ms: int
    receipt: Receipt | None = None
    key: str | None = None
    claimed: bool = False
    decision: Decision | None = None
    handler: str = ""
    duration_s: float = 0.0


class PushWorker:
    """Drains one stream's consumer group; `run(consumer)` is one thread's loop.

    Thread-safe: the threads share the Redis client (a connection pool), the stores and the
    dispatcher. `stop` ends every loop after its current batch.
    """

    def __init__(  # noqa: PLR0913, PLR0917 - the collaborators, built once by push_worker
            self, client: RedisClient, push: PushSettings, dedup: DedupStore,
                 dead_letters: RedisDeadLetterStore, dispatcher: Dispatcher,
                 policy: RetryPolicy, completed_ttl_s: float, stats: Stats | None = None,
                 key_of: Callable[[Receipt], str] = dedup_key) -> None:
        self.push = push
        self._key_of = key_of
        self.stats = stats or Stats()
        self.stop = threading.Event()
        self._redis = client
        self._dedup = dedup
        self._dead_letters = dead_letters
        self._dispatcher = dispatcher
        self._policy = policy
        self._completed_ttl_s = completed_ttl_s
        self._reclaim_ms = int(push.reclaim_idle_s * 1000)
        self._lease_s = max(0.5, push.reclaim_idle_s - 0.5)
        self._group_ready = False

    # -- the loop -----------------------------------------------------------------------

    def run(self, consumer: str) -> None:
        """Reclaims, reads and settles batches until `stop`; Redis outages are backed off."""
        backoff = Backoff(max_s=10.0)
        next_reclaim = 0.0
        while not self.stop.is_set():
            try:
                entries: list[Entry] = []
                if time.monotonic() >= next_reclaim:
                    entries = self.reclaim(consumer)
                    next_reclaim = time.monotonic() + min(1.0, self.push.reclaim_idle_s / 4)
                if not entries:
                    entries = self.read(consumer)
                if entries:
                    self.process(entries, consumer)
                backoff.reset()
            except AlicomReceiptsError as exc:
                log.warning("push_worker_redis_failed", consumer=consumer, error=str(exc))
                self.stats.incr("redis_errors")
                backoff.sleep(self.stop)

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
        rows = [(i, f) for i, f in claimed if f is not None]
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

    def process(self, entries: list[Entry], consumer: str) -> None:
        """decode -> claim -> handle -> classify -> settle, for one batch."""
        self.stats.incr("received", len(entries))
        owner = secrets.token_hex(8)
        for entry in entries:
            self._prepare(entry)
        self._claim(entries, owner)
        self._run([e for e in entries if e.claimed and e.decision is None])
        try:
            self._settle(entries, owner, consumer)
        finally:
            for entry in entries:
                self._report(entry)

    def _prepare(self, entry: Entry) -> None:
        early = precheck(entry.deliveries, self._policy)
        if early is not None:
            entry.decision = early
            return
        meta = ReceiptMeta(source="push", message_id=entry.id, dequeue_count=entry.deliveries,
                           enqueue_time_ms=entry.received_ms)
        try:
            entry.receipt = parse_json(entry.message_type, entry.body, meta)
        except DecodeError as exc:
            self.stats.incr("decode_errors")
            entry.decision = classify(exc, entry.deliveries, self._policy)
            return
        entry.key = self._key_of(entry.receipt)

    def _claim(self, entries: list[Entry], owner: str) -> None:
        todo = [e for e in entries if e.decision is None]
        if not todo:
            return
        states = self._call("dedup claim", partial(
            self._dedup.claim, [str(e.key) for e in todo], owner, self._lease_s))
        for entry, state in zip(todo, states, strict=True):
            if state is ClaimState.CLAIMED:
                entry.claimed = True
            else:
                entry.decision = classify(state, entry.deliveries, self._policy)

    def _run(self, claimed: list[Entry]) -> None:
        if not claimed:
            return
        self.stats.add_in_flight(len(claimed))
        try:
            outcomes = self._dispatcher.dispatch([cast(Receipt, e.receipt) for e in claimed])
        except Exception:  # a dispatcher crash must not lose the batch: retry it
            log.exception("dispatch_crashed", receipts=len(claimed))
            outcomes = [DISPATCHER_CRASHED] * len(claimed)
        finally:
            self.stats.add_in_flight(-len(claimed))
        for entry, outcome in zip(claimed, outcomes, strict=True):
            entry.decision = classify(outcome, entry.deliveries, self._policy)
            entry.handler, entry.duration_s = outcome.handler, outcome.duration_s

    def _settle(self, entries: list[Entry], owner: str, consumer: str) -> None:
        """Dead letters stored and completions recorded before anything is acknowledged."""
        by: dict[Verdict, list[Entry]] = {v: [] for v in Verdict}
        for entry in entries:
            by[cast(Decision, entry.decision).verdict].append(entry)
        to_ack = self._dead_letter(by[Verdict.DEAD_LETTER], owner)
        to_ack += self._complete(by[Verdict.ACK], owner)
        self._retry(by[Verdict.RETRY], owner, consumer)
        if by[Verdict.LEAVE]:  # another live claim: the entry is re-taken after reclaim_idle_s
            self.stats.incr("in_progress_skipped", len(by[Verdict.LEAVE]))
        self._ack(to_ack)

    def _dead_letter(self, dead: list[Entry], owner: str) -> list[Entry]:
        if not dead:
            return []
        letters = [_dead_letter_of(e) for e in dead]
        self._retrying("dead-letter put", lambda: self._dead_letters.put_many(letters))
        self._release([e for e in dead if e.claimed], owner)
        self.stats.incr("dead_letters", len(dead))
        return dead

    def _complete(self, acked: list[Entry], owner: str) -> list[Entry]:
        ran = [e for e in acked if cast(Decision, e.decision).ran_handlers]
        deletable = [e for e in acked if not cast(Decision, e.decision).ran_handlers]
        self.stats.incr("duplicates", len(deletable))
        if ran:
            owned = self._retrying("dedup complete", partial(
                self._dedup.complete, [str(e.key) for e in ran], owner, self._completed_ttl_s))
            for entry, mine in zip(ran, owned, strict=True):
                if mine:
                    deletable.append(entry)
                else:  # another delivery holds the claim now; it acknowledges its copy
                    self.stats.incr("lost_claims")
                    log.warning("claim_lost", entry_id=entry.id, dedup_key=entry.key)
            self.stats.incr("handled", sum(owned))
        return deletable

    def _retry(self, retried: list[Entry], owner: str, consumer: str) -> None:
        if not retried:
            return
        self._release(retried, owner)
        s = self.push

        def reposition() -> None:
            # Idle set so that the entry reaches reclaim_idle_s when its backoff ends.
            with self._redis.pipeline(transaction=False) as pipe:
                for entry in retried:
                    delay_ms = min(cast(Decision, entry.decision).delay_s * 1000,
                                   self._reclaim_ms)
                    pipe.xclaim(s.stream, s.group, consumer, 0, [entry.id],
                                idle=self._reclaim_ms - delay_ms, justid=True)
                pipe.execute()

        self._retrying("XCLAIM IDLE", partial(self._redis_op, "XCLAIM", reposition))
        self.stats.incr("retries", len(retried))

    def _release(self, entries: list[Entry], owner: str) -> None:
        keys = [str(e.key) for e in entries if e.claimed]
        if keys:
            self._retrying("dedup release", partial(self._dedup.release, keys, owner))

    def _ack(self, entries: list[Entry]) -> None:
        if not entries:
            return
        ids = [e.id for e in entries]
        s = self.push

        def ack() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(s.stream, s.group, *ids)
                pipe.xdel(s.stream, *ids)
                pipe.execute()

        self._retrying("XACK", partial(self._redis_op, "XACK", ack))

    def _redis_op(self, what: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise transient_from_redis(exc, what, self._redis) from exc

    def _retrying(self, what: str, fn: Callable[[], _T]) -> _T:
        """A settle step, retried through a short outage; if Redis stays away the entries
        stay pending and come back after reclaim_idle_s (a dead letter may then be stored
        twice; a completion never is lost: XACK only ever follows it)."""
        return call_with_retry(what, fn, self.stop, attempts=6, max_wait_s=2.0)

    def _report(self, entry: Entry) -> None:
        decision = entry.decision
        if decision is None:  # the batch failed before a decision: it is reclaimed later
            return
        log.info("receipt_settled", source="push", entry_id=entry.id,
                 message_type=entry.message_type, dequeue_count=entry.deliveries,
                 dedup_key=entry.key, handler=entry.handler or None, outcome=decision.outcome,
                 reason=decision.reason or None, duration_ms=round(entry.duration_s * 1000, 2))
        self.stats.outcome(decision.outcome, entry.handler, entry.duration_s, entry.receipt)

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(entry_id: bytes | str, fields: dict[bytes, bytes], deliveries: int) -> Entry:
    def field(name: bytes) -> str:
        return fields.get(name, b"").decode("utf-8", "surrogateescape")

    received = field(b"r")
    return Entry(id=_text(entry_id), deliveries=deliveries, message_type=field(b"t"),
                 body=field(b"b"), received_ms=int(received) if received.isdigit() else 0)


def _dead_letter_of(entry: Entry) -> DeadLetter:
    decision = cast(Decision, entry.decision)
    return DeadLetter.create(
        queue="", message_type=entry.message_type, raw_body=entry.body,
        reason=decision.reason, detail=decision.detail, source="push",
        message_id=entry.id, dequeue_count=entry.deliveries,
        enqueue_time_ms=entry.received_ms)
