"""The lifecycle's contract, one table, run over all four transports against a real Redis.

Each row puts one item through `Lifecycle.process` (the call the push worker, reconcile and
replay make; the MNS worker runs the same stages on its threads) over the source's real
transport, and checks what reached the handler, what the source was told (acknowledged,
handed back, neither), the dedup record, the dead letters and the outcome. The Redis server
is this module's own, with AOF, so a row can stop it and start it again.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import structlog

from alicom_sandbox.redis_server import RedisServer, running_redis
from consumer.clients.redis_scripts import Replication, replication
from consumer.errors import PermanentFailure, RetryLater, TransientError
from consumer.handler_api import HandlerOutcome
from consumer.keys import dedup_key
from consumer.pipeline.deadletter_store import DeadLetterSettings, RedisDeadLetterStore
from consumer.pipeline.dedup import Completion, DedupSettings, RedisDedupStore
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.lifecycle import (
    Lifecycle,
    LifecycleParts,
    RedisRetry,
    Transport,
    Work,
)
from consumer.pipeline.outcome import Decision
from consumer.pipeline.settled_line import _handler_fields
from consumer.pipeline.stats import Stats
from consumer.receipts import Receipt
from consumer.sources.mns.inflight import InFlight
from consumer.sources.replay.transport import replay
from tests.lifecycle_sources import POLICY, Source, build_sources, key_of

SOURCES = ["mns", "push", "reconcile", "replay"]
RETRY = RedisRetry(attempts=3, max_wait_s=0.2, hold_wait_s=0.1)


@pytest.fixture(scope="module")
def durable() -> Iterator[RedisServer]:
    with running_redis(persistent=True) as server:
        yield server


@pytest.fixture
def client(durable: RedisServer) -> Iterator[redis.Redis]:
    c = durable.client()
    c.flushall()
    yield c
    c.close()


class Scripted:
    """The handler: counts runs per dedup key and does what `plan` says for a key."""

    name = "scripted"

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.plan: dict[str, str | Callable[[], None]] = {}

    def handle(self, receipt: Receipt) -> None:
        key = dedup_key(receipt)
        self.runs[key] += 1
        action = self.plan.get(key, "ok")
        if action == "retry":
            raise RetryLater("not now", delay_s=7)
        if action == "permanent":
            raise PermanentFailure("bad data")
        if callable(action):
            action()


class Crashing:
    """A dispatcher whose dispatch itself raises (not a handler: the dispatcher crashed)."""

    def dispatch(self, receipts: Sequence[Receipt], late: Any = None) -> list[HandlerOutcome]:
        raise RuntimeError("dispatcher bug")


class LostReply:
    """A dedup store whose first completion is applied on the server but whose reply is
    lost (a timeout after Redis executed it)."""

    def __init__(self, inner: RedisDedupStore) -> None:
        self.inner = inner
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def complete(self, keys: Sequence[str], owner: str, ttl_s: float) -> list[Completion]:
        results = self.inner.complete(keys, owner, ttl_s)
        if not self.lost:
            self.lost += 1
            raise TransientError("redis complete failed: TimeoutError: Timeout reading")
        return results


@dataclass
class Recorded:
    """The source's transport, with every call recorded, and the dedup record of each
    acknowledged item read at the moment it was acknowledged."""

    inner: Transport[Any]
    client: redis.Redis
    acked: list[Work] = field(default_factory=list)
    handed_back: list[Work] = field(default_factory=list)
    record_at_ack: dict[int, bytes | None] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.inner.source

    def decode(self, work: Work) -> Receipt:
        return self.inner.decode(work)

    def dead_letter(self, work: Work, decision: Decision, now_ms: int) -> Any:
        return self.inner.dead_letter(work, decision, now_ms)

    def acknowledge(self, items: Sequence[Work]) -> None:
        for work in items:
            self.record_at_ack[id(work)] = self.client.get("alicom:dedup:%s" % work.key)
        self.inner.acknowledge(items)
        self.acked += items

    def hand_back(self, items: Sequence[Work]) -> None:
        self.inner.hand_back(items)
        self.handed_back += items

    def finish(self, items: Sequence[Work]) -> None:
        self.inner.finish(items)

    def log_fields(self, work: Work) -> dict[str, object]:
        return self.inner.log_fields(work)


@dataclass
class World:
    source: Source
    lifecycle: Lifecycle
    transport: Recorded
    handler: Scripted
    client: redis.Redis
    server: RedisServer

    @property
    def stats(self) -> Stats:
        return self.lifecycle.stats

    def process(self, item: Work) -> None:
        self.lifecycle.process([item], self.transport, secrets.token_hex(8), 30.0)

    def record(self, biz: str) -> bytes | None:
        value: bytes | None = self.client.get("alicom:dedup:" + key_of(biz))
        return value

    def letters(self) -> list[Any]:
        return RedisDeadLetterStore(self.client, DeadLetterSettings()).list(50, 0)


def world(source_name: str, client: redis.Redis, server: RedisServer, *,
          crashing: bool = False, lost_reply: bool = False,
          wait: Replication | None = None) -> World:
    handler = Scripted()
    dispatcher = Dispatcher({"SmsReport": [handler]}, deadline_s=20.0)
    source = {s.name: s for s in build_sources(client, dispatcher)}[source_name]
    dedup: Any = RedisDedupStore(client, DedupSettings())
    if lost_reply:
        dedup = LostReply(dedup)
    lifecycle = Lifecycle(LifecycleParts(
        dedup, RedisDeadLetterStore(client, DeadLetterSettings(), wait),
        Crashing() if crashing else dispatcher, POLICY, 3600.0, redis_retry=RETRY),
        Stats(), threading.Event())
    return World(source, lifecycle, Recorded(source.transport(lifecycle), client), handler,
                 client, server)


# -- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One case: how the item is set up, and what must have happened to it."""

    runs: int
    acked: bool
    handed_back: bool
    record: bytes | str | None  # the dedup record afterwards; "I:" = someone else's claim
    outcome: str
    letter_reason: str | None = None
    deliveries: int = 1
    broken: bool = False
    before: Callable[[World, str], None] = lambda w, b: None
    options: dict[str, bool] = field(default_factory=dict)


def _completed(w: World, biz: str) -> None:
    w.client.set("alicom:dedup:" + key_of(biz), "1", px=60_000)


def _claimed_elsewhere(w: World, biz: str) -> None:
    w.client.set("alicom:dedup:" + key_of(biz), "I:another-delivery", px=60_000)


def _plan(action: str) -> Callable[[World, str], None]:
    def before(w: World, biz: str) -> None:
        w.handler.plan[key_of(biz)] = action
    return before


def _stolen_while_running(w: World, biz: str) -> None:
    # The lease ended while the handler ran and another delivery claimed the receipt.
    w.handler.plan[key_of(biz)] = lambda: _claimed_elsewhere(w, biz)


def _redis_down_while_settling(w: World, biz: str) -> None:
    def stop_then_restart() -> None:
        w.server.stop()  # the handler returns into an outage: nothing can be recorded
        threading.Timer(1.0, w.server.start_again).start()
    w.handler.plan[key_of(biz)] = stop_then_restart


ROWS: dict[str, Row] = {
    "decode error -> dead letter": Row(0, True, False, None, "dead_letter", "*", broken=True),
    "duplicate -> ack": Row(0, True, False, b"1", "duplicate", before=_completed),
    "in progress -> leave": Row(0, False, False, "I:", "in_progress", before=_claimed_elsewhere),
    "ok -> recorded before ack": Row(1, True, False, b"1", "handled"),
    # A release leaves the bare mark "P:" (acts as absent; tells a retry from a crash).
    "retry -> release and retry": Row(1, False, True, b"P:", "retry", before=_plan("retry")),
    "permanent -> dead letter": Row(1, True, False, b"P:", "dead_letter", "permanent_failure",
                                    before=_plan("permanent")),
    "past max deliveries -> dead letter without running": Row(
        0, True, False, None, "dead_letter", "max_dequeue_count", deliveries=6),
    "dispatcher crash -> retry": Row(0, False, True, b"P:", "retry",
                                     options={"crashing": True}),
    "lost claim -> no ack": Row(1, False, False, "I:", "handled",
                                before=_stolen_while_running),
    "completion reply lost -> retried, counts as completed": Row(
        1, True, False, b"1", "handled", options={"lost_reply": True}),
    "redis down during settle -> held, recorded, then acked": Row(
        1, True, False, b"1", "handled", before=_redis_down_while_settling),
}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", list(ROWS))
def test_the_lifecycle_contract(source: str, case: str, client: redis.Redis,
                                durable: RedisServer) -> None:
    row = ROWS[case]
    w = world(source, client, durable, **row.options)
    biz = "biz-" + secrets.token_hex(4)
    row.before(w, biz)
    item = w.source.item(biz, deliveries=row.deliveries, broken=row.broken)
    with structlog.testing.capture_logs() as logs:
        w.process(item)

    assert w.handler.runs[key_of(biz)] == row.runs
    assert (item in w.transport.acked) is row.acked
    assert w.source.acked(item) is row.acked  # the source's own state says so too
    assert (item in w.transport.handed_back) is row.handed_back
    record = w.record(biz)
    if row.record == "I:":
        assert record == b"I:another-delivery"  # someone else's claim, untouched
    else:
        assert record == row.record
    if row.outcome == "handled" and row.acked:  # never acknowledged without its record
        assert w.transport.record_at_ack[id(item)] == b"1"
    settled = [e for e in logs if e["event"] == "receipt_settled"]
    assert [(e["outcome"], e["source"]) for e in settled] == [(row.outcome, source)]
    letters = w.letters()
    if row.letter_reason is None:
        # replay's own letter is the item itself: it is there unless acknowledged
        assert len(letters) == (1 if source == "replay" and not row.acked else 0)
    else:
        [letter] = letters  # stored once (replay: its letter updated in place)
        assert row.letter_reason in {"*", letter.reason}
        assert w.stats.snapshot()["dead_letters"] == 1
    if case.startswith("lost claim"):
        assert w.stats.snapshot()["lost_claims"] == 1
    if case.startswith(("completion reply lost", "redis down")):
        assert w.stats.snapshot()["lost_claims"] == 0
        assert w.stats.snapshot()["handled"] == 1


@pytest.mark.parametrize("source", SOURCES)
def test_after_redis_returns_a_held_receipt_is_not_run_again(
        source: str, client: redis.Redis, durable: RedisServer) -> None:
    w = world(source, client, durable)
    biz = "biz-" + secrets.token_hex(4)
    _redis_down_while_settling(w, biz)
    first = w.source.item(biz)
    w.process(first)
    w.handler.plan.clear()
    again = w.source.item(biz, deliveries=2)  # the same receipt delivered once more
    w.process(again)
    assert w.handler.runs[key_of(biz)] == 1
    assert again in w.transport.acked and w.source.acked(again)
    assert again.decision is not None and again.decision.outcome == "duplicate"


@pytest.mark.parametrize("source", SOURCES)
def test_a_completion_given_up_at_shutdown_is_logged_and_counted_never_acked(
        source: str, client: redis.Redis, durable: RedisServer) -> None:
    w = world(source, client, durable)
    biz = "biz-" + secrets.token_hex(4)

    def outage_then_shutdown() -> None:
        durable.stop()
        threading.Timer(0.5, w.lifecycle.stop.set).start()  # the shutdown budget ran out

    w.handler.plan[key_of(biz)] = outage_then_shutdown
    item = w.source.item(biz)
    try:
        with structlog.testing.capture_logs() as logs:
            w.process(item)
    finally:
        durable.start_again()
    unrecorded = [e for e in logs if e["event"] == "completion_unrecorded"]
    assert [(e["dedup_key"], e["handler"]) for e in unrecorded] == [(key_of(biz), "scripted")]
    assert w.stats.snapshot()["completion_unrecorded"] == 1
    assert item not in w.transport.acked and not w.source.acked(item)


def test_replay_gains_the_crash_guard_and_keeps_the_letter(
        client: redis.Redis, durable: RedisServer) -> None:
    w = world("replay", client, durable, crashing=True)
    item = w.source.item("biz-crash")
    store = RedisDeadLetterStore(client, DeadLetterSettings())
    [result] = replay([item.letter], w.lifecycle, store, 30.0)  # type: ignore[attr-defined]
    assert not result.ok and result.summary() == "retry again: dispatcher crashed"
    assert store.get(result.letter.id) is not None
    assert client.get("alicom:dedup:" + key_of("biz-crash")) == b"P:"  # released (the mark)


def test_a_dead_letter_no_replica_confirmed_keeps_its_message_and_is_stored_once_later(
        client: redis.Redis, durable: RedisServer) -> None:
    # `[dedup] wait_replicas = 1` on a primary whose replica is gone (a failover's window):
    # the letter is on the primary only, so the message must stay at its source.
    unconfirmed = world("mns", client, durable, wait=replication(1, 0.05))
    first = unconfirmed.source.item("biz-unconfirmed", broken=True)
    unconfirmed.process(first)
    assert first not in unconfirmed.transport.acked and not unconfirmed.source.acked(first)
    assert unconfirmed.stats.snapshot().get("dead_letters", 0) == 0
    assert len(unconfirmed.letters()) == 1  # written on the primary all the same
    w = world("mns", client, durable)  # its next delivery, the letter confirmed this time
    again = InFlight.of(first.delivery._replace(  # type: ignore[attr-defined]
        receipt_handle="h-again", dequeue_count=2))
    w.process(again)
    assert again in w.transport.acked and w.source.acked(again)
    [letter] = w.letters()  # the same entry rewritten, not a second one
    assert letter.message_id == first.delivery.message_id  # type: ignore[attr-defined]
    assert letter.dequeue_count == 2


def test_a_poison_message_delivered_again_is_dead_lettered_once(
        client: redis.Redis, durable: RedisServer) -> None:
    # The measured bug: a poison body's delete hit a stale handle, MNS delivered the message
    # again, and its second dead letter was a second entry. Its letter id is the message's.
    w = world("mns", client, durable)
    first = w.source.item("biz-poison", broken=True)
    w.process(first)
    again = InFlight.of(first.delivery._replace(  # type: ignore[attr-defined]
        receipt_handle="h-again", dequeue_count=2))
    w.process(again)
    [letter] = w.letters()
    assert letter.message_id == first.delivery.message_id  # type: ignore[attr-defined]
    assert letter.dequeue_count == 2  # the later delivery's details, one entry
    assert w.stats.snapshot()["dead_letters"] == 2


def test_each_line_lists_each_handler_of_its_receipt_a_batch_calls_entry_written_once() -> None:
    batch_call = HandlerOutcome("ok", "stats", "", None, 0.0042)  # one object, all receipts
    first = (HandlerOutcome("ok", "noop", "", None, 0.001), batch_call)
    second = (HandlerOutcome("retry", "noop", "busy", 3.0, 0.002), batch_call)
    entries: dict[int, dict[str, object]] = {}

    one, two = _handler_fields(first, entries), _handler_fields(second, entries)

    assert one == [{"handler": "noop", "outcome": "ok", "duration_ms": 1.0},
                   {"handler": "stats", "outcome": "ok", "duration_ms": 4.2}]
    assert two == [{"handler": "noop", "outcome": "retry", "duration_ms": 2.0,
                    "reason": "busy"},
                   {"handler": "stats", "outcome": "ok", "duration_ms": 4.2}]
    assert one is not None and two is not None and one[1] is two[1]
