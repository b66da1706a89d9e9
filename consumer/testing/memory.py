"""The testing kit's in-process stand-ins for Redis and a queue, behind the lifecycle's seams.

`MemoryDedupStore` keeps the dedup records of `consumer.pipeline.dedup` in a dict (same
states, same answers, leases by the monotonic clock); `KitTransport` is the queue: it hands
a retried or left receipt back for another delivery and keeps what settled. Everything else
a receipt goes through is the daemon's own: `consumer.pipeline.lifecycle.Lifecycle`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from consumer.pipeline.deadletter import DeadLetter
from consumer.pipeline.dedup import Claim, ClaimState, Completion
from consumer.pipeline.outcome import Decision, Verdict
from consumer.pipeline.work import Work
from consumer.receipts import Receipt


@dataclass
class _Record:
    """One key's record: "claimed" (owner, lease), "partial" (released with the handlers
    that finished: `done`) or "completed"."""

    state: Literal["claimed", "partial", "completed"]
    owner: str = ""
    lease_until: float = 0.0
    done: frozenset[str] = frozenset()


class MemoryDedupStore:
    """`DedupStore` in a dict. Retention is not modelled: a record lives for the whole test."""

    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def claim(self, keys: Sequence[str], owner: str, lease_s: float,
              legacy: Sequence[str] = ()) -> list[ClaimState]:
        return [c.state for c in self.claim_each(keys, owner, lease_s, legacy)]

    def claim_each(self, keys: Sequence[str], owner: str, lease_s: float,
                   legacy: Sequence[str] = ()) -> list[Claim]:
        out: list[Claim] = []
        seen: set[str] = set()
        now = time.monotonic()
        with self._lock:
            for key in keys:
                record = self._records.get(key)
                live = record is not None and record.state == "claimed" and \
                    record.owner != owner and record.lease_until > now
                if key in seen or live:
                    out.append(Claim(ClaimState.IN_PROGRESS))
                elif record is not None and record.state == "completed":
                    out.append(Claim(ClaimState.COMPLETED))
                else:
                    done = record.done if record is not None else frozenset()
                    self._records[key] = _Record("claimed", owner, now + lease_s, done)
                    out.append(Claim(ClaimState.CLAIMED, done))
                seen.add(key)
        return out

    def complete(self, keys: Sequence[str], owner: str, ttl_s: float) -> list[Completion]:
        out: list[Completion] = []
        with self._lock:
            for key in keys:
                record = self._records.get(key)
                if record is not None and record.state == "completed":
                    out.append(Completion.ALREADY_COMPLETED)
                elif record is None or record.state == "partial" or record.owner == owner \
                        or record.lease_until <= time.monotonic():  # no live claim of another
                    self._records[key] = _Record("completed")
                    out.append(Completion.RECORDED)
                else:
                    out.append(Completion.LOST)
        return out

    def release(self, keys: Sequence[str], owner: str,
                done: Sequence[Collection[str]] | None = None,
                ttl_s: float | None = None) -> list[bool]:
        out: list[bool] = []
        with self._lock:
            for index, key in enumerate(keys):
                record = self._records.get(key)
                ours = record is not None and record.state == "claimed" \
                    and record.owner == owner
                if ours:
                    finished = frozenset(done[index]) if done is not None else frozenset()
                    self._records[key] = _Record("partial", done=finished)
                out.append(ours)
        return out

    def extend(self, keys: Sequence[str], owner: str, lease_s: float) -> list[bool]:
        with self._lock:
            return [self._extend_one(key, owner, lease_s) for key in keys]

    def _extend_one(self, key: str, owner: str, lease_s: float) -> bool:
        record, now = self._records.get(key), time.monotonic()
        # Absent in Redis: never claimed, or a plain claim whose lease (its expiry) lapsed.
        if record is None or (record.state == "claimed" and not record.done
                              and record.lease_until <= now):
            self._records[key] = _Record("claimed", owner, now + lease_s)
            return True
        if record.state != "claimed" or record.owner != owner:
            return False
        record.lease_until = now + lease_s
        return True

    def ping(self) -> None:
        """Always answers."""


class MemoryDeadLetters:
    """The dead letters stored, by id (a letter stored again replaces itself)."""

    def __init__(self) -> None:
        self.letters: dict[str, DeadLetter] = {}

    def put_many(self, letters: Sequence[DeadLetter]) -> list[str]:
        for letter in letters:
            self.letters[letter.id] = letter
        return [letter.id for letter in letters]


@dataclass(slots=True, eq=False, kw_only=True)
class KitWork(Work):
    """One delivery of one of the receipts given to `HandlerTest.deliver`."""

    index: int
    given: Receipt
    delays_s: tuple[int, ...] = ()


@dataclass
class KitTransport:
    """`Transport[KitWork]`: acknowledged and dead-lettered deliveries are kept in `settled`;
    a retried or left one is delivered again (its count raised, the backoff recorded)."""

    source: str = "mns"
    settled: dict[int, KitWork] = field(default_factory=dict)
    again: list[KitWork] = field(default_factory=list)

    def decode(self, work: KitWork) -> Receipt:
        return replace(work.given, meta=replace(work.given.meta, dequeue_count=work.deliveries))

    def dead_letter(self, work: KitWork, decision: Decision, now_ms: int) -> DeadLetter:
        return DeadLetter.create(
            queue=work.given.meta.queue, message_type=work.given.message_type,
            raw_body=str(dict(work.given.raw)), reason=decision.reason, detail=decision.detail,
            source=self.source, message_id=work.given.meta.message_id,
            dequeue_count=work.deliveries, dead_at_ms=now_ms,
            letter_id=f"{work.index:06d}-{work.given.meta.message_id}")

    def acknowledge(self, items: Sequence[KitWork]) -> None:
        for work in items:
            self.settled[work.index] = work

    def hand_back(self, items: Sequence[KitWork]) -> None:
        for work in items:
            delay = work.decision.delay_s if work.decision is not None else 0
            self.again.append(KitWork(deliveries=work.deliveries + 1, index=work.index,
                                      given=work.given, delays_s=(*work.delays_s, delay)))

    def finish(self, items: Sequence[KitWork]) -> None:
        for work in items:  # left alone (another copy holds the claim): delivered again
            if work.decision is not None and work.decision.verdict is Verdict.LEAVE:
                self.again.append(KitWork(deliveries=work.deliveries + 1, index=work.index,
                                          given=work.given, delays_s=work.delays_s))

    def log_fields(self, work: KitWork) -> dict[str, object]:
        return {"message_id": work.given.meta.message_id}
