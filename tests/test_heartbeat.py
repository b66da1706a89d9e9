"""The MNS heartbeat: the messages due for a visibility extension are extended most urgent
first, several calls at a time (MNS has no batch call), each on a client of its own; one
that fails is counted and the others still go through."""

from __future__ import annotations

import threading
import time

from consumer.errors import TransientError
from consumer.pipeline.stats import Stats
from consumer.sources.mns.ack import AckConfig, Heartbeat
from consumer.sources.mns.inflight import InFlight, Window
from consumer.sources.mns.queue import Delivery
from consumer.testing.memory import MemoryDedupStore

WAIT_S = 30.0  # bounds a hung test only
HOLD_S = 60.0  # a running handler's lease is renewed without its visibility this long


class Client:
    """A queue client that records its calls; `gate` (if set) holds every call until it
    is passed, so that passing it shows how many calls ran at once."""

    def __init__(self, calls: list[tuple[str, int]], gate: threading.Barrier | None = None,
                 refuse: str = "") -> None:
        self.calls, self.gate, self.refuse = calls, gate, refuse
        self.in_use = threading.Lock()

    def change_visibility(self, receipt_handle: str, visibility_timeout_s: int,
                          ) -> tuple[str, int]:
        assert self.in_use.acquire(blocking=False), "a client is used by one call at a time"
        try:
            if self.gate is not None:
                self.gate.wait()
            self.calls.append((receipt_handle, id(self)))
            if receipt_handle == self.refuse:
                raise TransientError("ChangeMessageVisibility failed: MessageNotExist")
            return receipt_handle + "'", int(time.time() * 1000) + visibility_timeout_s * 1000
        finally:
            self.in_use.release()


def held(window: Window, handle: str, visible_in_s: float) -> InFlight:
    next_visible_ms = int((time.time() + visible_in_s) * 1000)
    item = InFlight.of(Delivery("q", "m-" + handle, handle, "", "", 1, 0, 0, next_visible_ms))
    window.track([item])
    return item


def heartbeat(clients: list[Client], window: Window) -> Heartbeat:
    return Heartbeat(clients, MemoryDedupStore(), window, Stats(),
                     AckConfig(visibility_timeout_s=60, extend_before_s=10),
                     running_hold_s=HOLD_S)


def test_due_messages_are_extended_most_urgent_first_and_the_rest_left_alone() -> None:
    window, calls = Window(16), list[tuple[str, int]]()
    items = [held(window, h, s) for h, s in [("b", 8.0), ("later", 30.0), ("a", 2.0),
                                            ("c", 9.0)]]
    heartbeat([Client(calls)], window).beat()
    assert [handle for handle, _ in calls] == ["a", "b", "c"]
    assert [item.receipt_handle for item in items] == ["b'", "later", "a'", "c'"]
    assert all(item.next_visible_ms > (time.time() + 50) * 1000 for item in items
               if item.receipt_handle.endswith("'"))


def test_the_calls_run_side_by_side_one_per_client() -> None:
    window, calls = Window(64), list[tuple[str, int]]()
    together = threading.Barrier(4, timeout=WAIT_S)  # passes only with 4 calls at once
    clients = [Client(calls, together) for _ in range(4)]
    for n in range(8):
        held(window, "h%d" % n, 1.0)
    heartbeat(clients, window).beat()
    assert sorted(handle for handle, _ in calls) == ["h%d" % n for n in range(8)]
    assert {client for _, client in calls} == {id(c) for c in clients}


def test_a_failed_extension_is_counted_and_the_others_still_extended() -> None:
    window, calls = Window(16), list[tuple[str, int]]()
    stats = Stats()
    items = [held(window, h, 1.0) for h in ("x", "gone", "y")]
    Heartbeat([Client(calls, refuse="gone"), Client(calls, refuse="gone")],
              MemoryDedupStore(), window, stats, AckConfig(), running_hold_s=HOLD_S).beat()
    assert sorted(item.receipt_handle for item in items) == ["gone", "x'", "y'"]
    assert stats.snapshot()["visibility_extensions"] == 2


def test_a_lease_renewal_redis_confirmed_moves_the_claims_deadline_a_refused_one_does_not(
        ) -> None:
    window, calls, store = Window(16), list[tuple[str, int]](), MemoryDedupStore()
    ours, lapsed = held(window, "ours", 1.0), held(window, "lapsed", 1.0)
    for item, key, owner in [(ours, "k1", "me"), (lapsed, "k2", "me")]:
        item.key, item.owner, item.claimed, item.lease_until = key, owner, True, 0.0
    store.claim(["k1"], "me", 60.0)
    store.claim(["k2"], "another delivery", 60.0)  # took the record after ours lapsed
    Heartbeat([Client(calls)], store, window, Stats(),
              AckConfig(visibility_timeout_s=60, extend_before_s=10),
              running_hold_s=HOLD_S).beat()
    assert ours.lease_until > time.monotonic() + 50
    assert lapsed.lease_until == 0.0  # so it confirms its claim before it runs


def test_a_running_copys_lease_is_renewed_without_its_visibility_a_waiting_ones_is_not(
        ) -> None:
    window, calls, store = Window(16), list[tuple[str, int]](), MemoryDedupStore()
    now = time.monotonic()
    running, waiting = held(window, "gone", 1.0), held(window, "gone", 1.0)
    taken = held(window, "taken", 1.0)
    for item, key in [(running, "k1"), (waiting, "k2"), (taken, "k3")]:
        item.key, item.owner, item.claimed, item.lease_until = key, "me", True, now + 1.0
    store.claim(["k1", "k2"], "me", 1.0)
    store.claim(["k3"], "another delivery", 60.0)  # took the record after ours lapsed
    running.running_since = taken.running_since = now
    beat = Heartbeat([Client(calls, refuse="gone")], store, window, Stats(),
                     AckConfig(visibility_timeout_s=60, extend_before_s=10),
                     running_hold_s=HOLD_S).beat
    beat()
    assert running.lease_until > time.monotonic() + 50  # MNS refused: Redis renewed it
    assert waiting.lease_until == now + 1.0  # it confirms its claim before it runs
    assert taken.lease_lost and taken.lease_until == now + 1.0
    beat()
    assert taken.lease_lost and taken.lease_until == now + 1.0
