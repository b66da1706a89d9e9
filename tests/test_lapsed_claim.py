"""A copy of a message whose claim lapsed while it waited to run (for a runner, or alone in
the isolation gate) never runs beside the delivery that took the record over.

The soak's case: a suspect (delivery 2) waited for the isolation gate while Redis was
restarting and its MNS visibility extensions were refused; its lease and its visibility
lapsed, MNS delivered the message again to the same process (delivery 3), whose claim found
the record lapsed and took it. Both copies then ran the receipt. Real Redis for the dedup
records and the crash ledger; the MNS side is the recording queue of the lifecycle tests.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis

from alicom_sandbox.redis_server import free_port
from consumer.clients.redis_client import connect
from consumer.errors import TransientError
from consumer.keys import dedup_key
from consumer.pipeline.dedup import Claim, DedupSettings, RedisDedupStore
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.lifecycle import Lifecycle
from consumer.pipeline.outcome import Verdict
from consumer.pipeline.poison import CrashLedger, PoisonGuard
from consumer.receipts import Receipt
from consumer.sources.mns.inflight import InFlight
from tests.lifecycle_sources import MnsSource, lifecycle_on

LAPSING_LEASE_S = 0.2  # the waiting copy's lease, left to lapse (the heartbeat could not renew)
LEASE_S = 30.0


class Counting:
    """The handler: how often each receipt was applied."""

    name = "counting"

    def __init__(self) -> None:
        self.applied: Counter[str] = Counter()

    def handle(self, receipt: Receipt) -> None:
        self.applied[dedup_key(receipt)] += 1


class Unanswering:
    """The dedup store while Redis is restarting: every call fails as the real one's do."""

    def __init__(self, inner: RedisDedupStore) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def claim_each(self, keys: Sequence[str], owner: str, lease_s: float,
                   legacy: Sequence[str] = ()) -> list[Claim]:
        if self.down:
            raise TransientError("redis claim failed: ConnectionError: Connection refused.")
        return self.inner.claim_each(keys, owner, lease_s, legacy)


@pytest.fixture
def handler() -> Counting:
    return Counting()


@pytest.fixture
def dispatcher(handler: Counting) -> Iterator[Dispatcher]:
    made = Dispatcher({"SmsReport": [handler]}, 5.0, 2)
    yield made
    made.close()


def guard(ledger_client: redis.Redis | None, store: RedisDedupStore) -> PoisonGuard:
    """Suspects alone with a ledger (on `ledger_client`), or every copy in a normal batch."""
    ledger = None if ledger_client is None else CrashLedger(ledger_client, store.redis_key)
    return PoisonGuard(ledger, lambda: 0, 0.0, LEASE_S)


def two_copies(source: MnsSource, lifecycle: Lifecycle) -> tuple[InFlight, InFlight]:
    """Deliveries 2 and 3 of one message (the soak's F42F3E716CB0A227-B12), prepared."""
    first = source.item("360060905089790807", deliveries=2)
    again = source.item("360060905089790807", deliveries=3)
    assert isinstance(first, InFlight) and isinstance(again, InFlight)
    assert lifecycle.prepare([first, again], source.transport(lifecycle)) == [first, again]
    return first, again


@pytest.mark.parametrize("alone", [True, False], ids=["suspect_alone", "normal_batch"])
def test_a_copy_whose_claim_lapsed_while_it_waited_leaves_the_receipt_to_the_new_claim(
        redis_client: redis.Redis, dispatcher: Dispatcher, handler: Counting,
        alone: bool) -> None:
    store = RedisDedupStore(redis_client, DedupSettings())
    lifecycle, source = lifecycle_on(store, redis_client, dispatcher), MnsSource()
    first, again = two_copies(source, lifecycle)
    assert lifecycle.claim([first], "owner-a", LAPSING_LEASE_S) == [first]
    assert first.suspect  # delivery 2 and no trace of an outcome: it runs alone
    time.sleep(LAPSING_LEASE_S * 1.5)  # waiting for the gate; the lease is not renewed
    assert lifecycle.claim([again], "owner-b", LEASE_S) == [again]  # the record had lapsed

    settled: list[InFlight] = []
    poison = guard(redis_client if alone else None, store)
    poison.run(lifecycle, [first], settled.extend)  # the gate lets the older copy in first
    poison.run(lifecycle, [again], settled.extend)

    assert handler.applied == {str(again.key): 1}
    assert first.decision is not None and first.decision.verdict is Verdict.LEAVE
    assert not first.claimed
    assert again.decision is not None and again.decision.outcome == "handled"
    assert settled == [first, again]
    assert redis_client.get(store.redis_key(str(again.key))) == b"1"


def test_a_copy_whose_lapsed_claim_redis_cannot_confirm_runs_nothing(
        redis_client: redis.Redis, dispatcher: Dispatcher, handler: Counting) -> None:
    store = Unanswering(RedisDedupStore(redis_client, DedupSettings()))
    lifecycle, source = lifecycle_on(store, redis_client, dispatcher), MnsSource()
    first, _ = two_copies(source, lifecycle)
    assert lifecycle.claim([first], "owner-a", LAPSING_LEASE_S) == [first]
    time.sleep(LAPSING_LEASE_S * 1.5)
    store.down = True
    # The crash ledger is as unreachable as the records (nothing listens on its port).
    dead = connect("redis://127.0.0.1:%d/0" % free_port(), socket_timeout_s=1,
                   connect_timeout_s=1)
    settled: list[InFlight] = []
    guard(dead, store.inner).run(lifecycle, [first], settled.extend)

    assert handler.applied == {}
    assert settled == [first]
    assert first.decision is not None and first.decision.verdict is Verdict.LEAVE
    assert first.decision.reason == "claim_unconfirmed"
    dead.close()


def test_a_copy_with_a_live_lease_runs_without_asking_redis_again(
        redis_client: redis.Redis, dispatcher: Dispatcher, handler: Counting) -> None:
    store = Unanswering(RedisDedupStore(redis_client, DedupSettings()))
    lifecycle, source = lifecycle_on(store, redis_client, dispatcher), MnsSource()
    first, _ = two_copies(source, lifecycle)
    assert lifecycle.claim([first], "owner-a", LEASE_S) == [first]
    store.down = True  # a confirmation would fail: none is made
    settled: list[InFlight] = []
    guard(None, store.inner).run(lifecycle, [first], settled.extend)
    assert handler.applied == {str(first.key): 1}
    assert settled == [first]
