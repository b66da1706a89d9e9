"""A copy whose handler runs keeps its claim while it runs, so no other delivery of the
receipt runs the handler beside it (the window `Lifecycle.confirm` cannot close: a running
copy checks nothing before its handler acts).

How the lease used to lapse under a running handler: the heartbeat renewed it only together
with a visibility extension MNS accepted (MNS refusing, or unreachable from this process,
left it to lapse, and the message came back visible), and a renewal Redis refused was tried
again only at the next visibility extension, `visibility_timeout_s - extend_before_s` later
(a platform duplicate of the receipt could claim the lapsed record meanwhile).

A copy that lost its lease anyway (the process froze, MNS and Redis were both away, or the
hold ended) writes its completion over nothing another delivery holds live, and over
anything else (a release, a claim whose owner lapsed in turn).

Real Redis holds the dedup records; the handler runs on the real dispatcher through the
lifecycle and the poison guard, the real heartbeat renews. MNS is a queue client that
refuses (or accepts) visibility changes, and the deliveries are made as the worker's poller
makes them (`MnsSource`).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import pytest
import redis

from consumer.errors import TransientError
from consumer.keys import dedup_key
from consumer.pipeline.dedup import ClaimState, Completion, DedupSettings, RedisDedupStore
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.lifecycle import Lifecycle
from consumer.pipeline.outcome import Verdict
from consumer.pipeline.poison import PoisonGuard
from consumer.pipeline.stats import Stats
from consumer.receipts import Receipt
from consumer.sources.mns.ack import AckConfig, Heartbeat
from consumer.sources.mns.inflight import InFlight
from tests.lifecycle_sources import MnsSource, RecordingQueue, lifecycle_on

BIZ_ID = "360060905089790807"
WAIT_S = 30.0  # bounds every wait for a state (a hung or failing test only)
BEAT_S = 0.1   # between heartbeat passes (the worker's is 1 s; the lease is scaled down too)
HOLD_S = 60.0  # a running copy's lease is renewed without its visibility this long
LAPSING_S = 0.2  # a lease left to lapse
CLAIM_S = 1.0  # a lease left long enough for the next delivery's claim to find it
RUNNERS: list[threading.Thread] = []  # the test's runner threads, joined after it


class Slow:
    """The long handler call: counts each application when it starts, then runs until the
    test lets it finish."""

    name = "slow"

    def __init__(self) -> None:
        self.applied: Counter[str] = Counter()
        self.started = threading.Event()
        self.finish = threading.Event()

    def handle(self, receipt: Receipt) -> None:
        self.applied[dedup_key(receipt)] += 1
        self.started.set()
        assert self.finish.wait(2 * WAIT_S)  # outlasts every wait of the test


class Mns(RecordingQueue):
    """The queue client of the heartbeat: refuses every visibility change while `refusing`
    (a 503, or MNS out of reach of this process), else extends as MNS does."""

    def __init__(self, refusing: bool) -> None:
        super().__init__()
        self.refusing = refusing

    def change_visibility(self, receipt_handle: str, visibility_timeout_s: int,
                          ) -> tuple[str, int]:
        if self.refusing:
            raise TransientError("ChangeMessageVisibility on Alicom-Queue-1-SmsReport failed: "
                                 "ServiceUnavailable")
        return receipt_handle + "+", int((time.time() + visibility_timeout_s) * 1000)


class Blinking(RedisDedupStore):
    """The dedup store while Redis restarts: lease renewals fail while `down`."""

    down = False

    def extend(self, keys: Sequence[str], owner: str, lease_s: float) -> list[bool]:
        if self.down:
            raise TransientError("redis extend failed: ConnectionError: Connection refused.")
        return super().extend(keys, owner, lease_s)


@pytest.fixture
def handler() -> Slow:
    return Slow()


@pytest.fixture
def dispatcher(handler: Slow) -> Iterator[Dispatcher]:
    made = Dispatcher({"SmsReport": [handler]}, WAIT_S, 2)
    yield made
    handler.finish.set()  # a test that failed early leaves no call running into the next
    for thread in RUNNERS:
        thread.join(WAIT_S)
    RUNNERS.clear()
    made.close()


def delivered(source: MnsSource, lifecycle: Lifecycle, deliveries: int, owner: str,
              visibility_s: float) -> tuple[InFlight, list[InFlight]]:
    """A delivery of the message, received now with `visibility_s`, prepared and claimed
    as the poller does (the lease ends with the visibility); returns it and what runs."""
    item = source.item(BIZ_ID, deliveries=deliveries)
    assert isinstance(item, InFlight)
    item.next_visible_ms = int((time.time() + visibility_s) * 1000)
    assert lifecycle.prepare([item], source.transport(lifecycle)) == [item]
    return item, lifecycle.claim([item], owner, visibility_s)


def running(lifecycle: Lifecycle, items: list[InFlight], settled: list[InFlight],
            lease_s: float) -> threading.Thread:
    """Runs `items` through the poison guard on a runner thread of their own (a claim it
    confirms gets `lease_s`, the worker's visibility timeout)."""
    guard = PoisonGuard(None, lambda: 0, 0.0, lease_s)
    thread = threading.Thread(target=guard.run, args=(lifecycle, items, settled.extend))
    thread.start()
    RUNNERS.append(thread)
    return thread


def beat_until(heartbeat: Heartbeat | None, reached: Callable[[], bool], what: str) -> None:
    """Heartbeat passes (none: just waits) until `reached()`; fails if it is not within
    WAIT_S. Every wait of these tests is for a state, never for a fixed time: a slow CI
    machine makes them slower, not wrong."""
    bound = time.monotonic() + WAIT_S
    while not reached():
        assert time.monotonic() < bound, f"not within {WAIT_S} s: {what}"
        if heartbeat is not None:
            heartbeat.beat()
        time.sleep(BEAT_S)


def record(client: redis.Redis, store: RedisDedupStore, item: InFlight) -> bytes | None:
    value = client.get(store.redis_key(str(item.key)))
    assert value is None or isinstance(value, bytes)  # the fixture's client decodes nothing
    return value


def held(client: redis.Redis, store: RedisDedupStore, item: InFlight, owner: str,
         for_s: float = 0.0) -> bool:
    """The record is `owner`'s claim, its lease ending more than `for_s` from now."""
    key = store.redis_key(str(item.key))
    return record(client, store, item) == b"I:" + owner.encode() and (
        client.pttl(key) > for_s * 1000)


def deadline_ms(client: redis.Redis, key: str, owner: str) -> int:
    """The deadline (Redis's clock) of `owner`'s claim over a release ('I:<owner>@<ms>/...')."""
    value = client.get(key)
    assert isinstance(value, bytes), value
    match = re.fullmatch(rb"I:%s@(\d+)/.*" % owner.encode(), value)
    assert match is not None, value
    return int(match.group(1))


def redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def first_copy_running(store: RedisDedupStore, client: redis.Redis, dispatcher: Dispatcher,
                       handler: Slow, lease_s: float,
                       ) -> tuple[Lifecycle, MnsSource, InFlight, threading.Thread,
                                  list[InFlight]]:
    """A first delivery claimed by owner-a for `lease_s`, its handler started (and held):
    its lifecycle, source, item, runner thread and the list its settled items go to."""
    lifecycle, source = lifecycle_on(store, client, dispatcher), MnsSource()
    settled: list[InFlight] = []
    first, to_run = delivered(source, lifecycle, 1, "owner-a", lease_s)
    runner = running(lifecycle, to_run, settled, lease_s)
    assert handler.started.wait(WAIT_S)
    return lifecycle, source, first, runner, settled


def another_copy_runs_nothing(source: MnsSource, lifecycle: Lifecycle, handler: Slow,
                              first: InFlight, runner: threading.Thread,
                              settled: list[InFlight], deliveries: int,
                              owner: str) -> InFlight:
    """Another copy of the running `first` arrives (a redelivery, or a platform duplicate:
    `deliveries` 1) while its claim holds; then the first call returns. The receipt was
    applied once and the other copy left its message; that copy is returned."""
    other, to_run = delivered(source, lifecycle, deliveries, owner, 30.0)
    runner_other = running(lifecycle, to_run, settled, 30.0)
    handler.finish.set()
    runner.join(WAIT_S)
    runner_other.join(WAIT_S)
    assert handler.applied == {str(first.key): 1}
    assert other.decision is not None and other.decision.verdict is Verdict.LEAVE
    return other


def test_a_running_copy_keeps_its_claim_while_mns_refuses_its_visibility(
        redis_client: redis.Redis, dispatcher: Dispatcher, handler: Slow) -> None:
    store = RedisDedupStore(redis_client, DedupSettings())
    config = AckConfig(visibility_timeout_s=2, extend_before_s=1.5)
    lifecycle, source, first, runner, settled = first_copy_running(
        store, redis_client, dispatcher, handler, config.visibility_timeout_s)
    # Every lease given so far (the claim's, a confirmation's) ends by then.
    first_lease_ended = time.monotonic() + config.visibility_timeout_s

    heartbeat = Heartbeat([Mns(refusing=True)], store, source.window, Stats(), config,
                          running_hold_s=HOLD_S)
    beat_until(heartbeat, lambda: time.monotonic() > first_lease_ended
               and held(redis_client, store, first, "owner-a", CLAIM_S),
               "the running copy's claim renewed past its first lease")
    # Its visibility ended too: MNS delivers the message again, to this process or another.
    another_copy_runs_nothing(source, lifecycle, handler, first, runner, settled, 2,
                              "owner-b")
    assert first.decision is not None and first.decision.outcome == "handled"
    assert first.completed  # recorded under its own claim
    assert record(redis_client, store, first) == b"1"
    # Its delete (with a handle the re-delivery made stale) may fail: the next delivery
    # is acknowledged as a duplicate.
    later, to_run_later = delivered(source, lifecycle, 3, "owner-c", 30.0)
    assert to_run_later == []
    assert later.decision is not None and later.decision.outcome == "duplicate"


def test_a_running_copys_renewal_redis_refused_is_retried_at_the_next_pass(
        redis_client: redis.Redis, dispatcher: Dispatcher, handler: Slow) -> None:
    store = Blinking(redis_client, DedupSettings())
    # A visibility extension is due 1 s before the visibility ends, the next one 3 s later.
    config = AckConfig(visibility_timeout_s=4, extend_before_s=1.0)
    lifecycle, source, first, runner, settled = first_copy_running(
        store, redis_client, dispatcher, handler, config.visibility_timeout_s)
    first_lease_ended = time.monotonic() + config.visibility_timeout_s
    lease_until, visible_ms = first.lease_until, first.next_visible_ms
    heartbeat = Heartbeat([Mns(refusing=False)], store, source.window, Stats(), config,
                          running_hold_s=HOLD_S)

    store.down = True  # Redis restarts around the first extension (MNS takes it)
    beat_until(heartbeat, lambda: first.next_visible_ms != visible_ms,
               "MNS extended the visibility")
    assert first.lease_until == lease_until  # the renewal with it failed
    store.down = False
    extended_ms = first.next_visible_ms
    beat_until(heartbeat, lambda: first.lease_until > lease_until,
               "the failed renewal retried and confirmed")
    # At a pass, not with the next visibility extension (3 s after the first).
    assert first.next_visible_ms == extended_ms
    beat_until(heartbeat, lambda: time.monotonic() > first_lease_ended
               and held(redis_client, store, first, "owner-a", CLAIM_S),
               "past the first lease, the claim held")

    # A platform duplicate of the receipt (another message) arrives meanwhile.
    another_copy_runs_nothing(source, lifecycle, handler, first, runner, settled, 1,
                              "owner-b")
    assert first.completed
    assert record(redis_client, store, first) == b"1"


def test_a_running_copy_takes_back_the_record_that_lapsed_while_redis_was_away(
        redis_client: redis.Redis, dispatcher: Dispatcher, handler: Slow) -> None:
    store = Blinking(redis_client, DedupSettings())
    config = AckConfig(visibility_timeout_s=2, extend_before_s=1.5)
    lifecycle, source, first, runner, settled = first_copy_running(
        store, redis_client, dispatcher, handler, config.visibility_timeout_s)
    lease_until = first.lease_until
    heartbeat = Heartbeat([Mns(refusing=False)], store, source.window, Stats(), config,
                          running_hold_s=HOLD_S)
    store.down = True  # Redis restarts; MNS keeps extending the visibility
    beat_until(heartbeat, lambda: record(redis_client, store, first) is None,
               "the lease lapsed")
    assert first.lease_until == lease_until  # no renewal went through
    store.down = False
    beat_until(heartbeat, lambda: held(redis_client, store, first, "owner-a", CLAIM_S),
               "the record taken back once Redis answered")
    # A platform duplicate of the receipt (another message) arrives now.
    another_copy_runs_nothing(source, lifecycle, handler, first, runner, settled, 1,
                              "owner-b")
    assert not first.lease_lost  # nobody had taken it: no claim_lost_while_running line
    assert first.completed


def test_past_the_hold_a_copy_cut_off_from_mns_lets_its_lease_go(
        redis_client: redis.Redis, dispatcher: Dispatcher, handler: Slow) -> None:
    store = RedisDedupStore(redis_client, DedupSettings())
    config = AckConfig(visibility_timeout_s=1, extend_before_s=0.9)
    hold_s = 2.5
    lifecycle, source, first, runner, _settled = first_copy_running(
        store, redis_client, dispatcher, handler, config.visibility_timeout_s)
    first_lease_ended = time.monotonic() + config.visibility_timeout_s
    heartbeat = Heartbeat([Mns(refusing=True)], store, source.window, Stats(), config,
                          running_hold_s=hold_s)
    beat_until(heartbeat, lambda: time.monotonic() > first_lease_ended
               and held(redis_client, store, first, "owner-a"),
               "past the first lease, within the hold: the claim renewed")
    assert first.running_since is not None  # the hold is measured from it
    hold_ended = first.running_since + hold_s
    beat_until(heartbeat, lambda: time.monotonic() > hold_ended
               and record(redis_client, store, first) is None,
               "past the hold, the lease gone")

    again, to_run_again = delivered(source, lifecycle, 2, "owner-b", 30.0)
    assert to_run_again == [again]  # the others run it: the handler's deadline passed twice
    handler.finish.set()
    runner.join(WAIT_S)


def test_a_running_copy_whose_claim_was_taken_writes_nothing_over_it(
        redis_client: redis.Redis, dispatcher: Dispatcher, handler: Slow) -> None:
    """No heartbeat at all (the process was frozen, or MNS and Redis were both away): the
    lease lapsed, and the next delivery claimed the record and runs. The older copy's
    completion is refused (LOST): it is not acknowledged, and the claim stays the newer
    delivery's, which records and acknowledges the receipt once it finishes."""
    store = RedisDedupStore(redis_client, DedupSettings())
    lifecycle, source, first, runner, settled = first_copy_running(
        store, redis_client, dispatcher, handler, LAPSING_S)
    beat_until(None, lambda: record(redis_client, store, first) is None, "the lease lapsed")
    again, to_run_again = delivered(source, lifecycle, 2, "owner-b", 30.0)
    assert to_run_again == [again]
    handler.finish.set()
    runner.join(WAIT_S)

    assert first.completed is False  # LOST: another delivery's live claim
    assert record(redis_client, store, first) == b"I:owner-b"
    lifecycle.settle([first], source.transport(lifecycle))
    assert not source.acked(first)
    assert lifecycle.stats.snapshot()["lost_claims"] == 1
    running(lifecycle, to_run_again, settled, 30.0).join(WAIT_S)
    assert again.completed
    lifecycle.settle([again], source.transport(lifecycle))
    assert source.acked(again)
    assert handler.applied == {str(first.key): 2}  # the window this change narrows
    assert record(redis_client, store, first) == b"1"


def test_a_completion_is_refused_only_by_a_live_claim_of_another_delivery(
        redis_client: redis.Redis) -> None:
    """A copy whose lease lapsed while its handlers ran (they all finished) records the
    receipt unless another delivery holds it now: over a later delivery's release naming
    what it finished, and over a claim whose owner lost its lease in turn."""
    store = RedisDedupStore(redis_client, DedupSettings())
    keys = ["alicom:dedup:released", "alicom:dedup:lapsed"]
    for key in ("released", "lapsed"):
        store.claim([key], "A", 30.0)
        store.release([key], "A", [{"a1b2c3"}], 3600.0)  # an earlier delivery's partial
        store.claim([key], "running", LAPSING_S)  # its lease lapses while it runs
    running_until = max(deadline_ms(redis_client, key, "running") for key in keys)
    beat_until(None, lambda: redis_now_ms(redis_client) > running_until, "the leases lapsed")
    store.claim(["released", "lapsed"], "B", 3.0)  # the next delivery took both
    assert store.release(["released"], "B", [{"a1b2c3", "0f0f0f"}], 3600.0) == [True]
    b_until = deadline_ms(redis_client, keys[1], "B")
    assert store.complete(["lapsed"], "running", 3600.0) == [Completion.LOST]  # B is live
    assert deadline_ms(redis_client, keys[1], "B") == b_until  # B's claim, untouched
    # B's lease on "lapsed" ends too (B died).
    beat_until(None, lambda: redis_now_ms(redis_client) > b_until, "B's lease lapsed")

    assert store.complete(["released", "lapsed"], "running", 3600.0) == [
        Completion.RECORDED, Completion.RECORDED]
    assert redis_client.mget(keys) == [b"1", b"1"]
    assert store.claim(["released", "lapsed"], "C", 30.0) == [ClaimState.COMPLETED] * 2
