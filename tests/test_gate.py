"""The gate: as many pollers (or ackers) work at once as the round trip needs, the rest wait."""

from __future__ import annotations

import threading

from consumer.sources.mns.gate import Gate

WAIT_S = 30.0  # an upper bound for "eventually", never a speed expectation


def test_without_adaptation_every_poller_receives() -> None:
    gate = Gate(8, adaptive=False)
    stop = threading.Event()

    assert gate.limit == 8
    assert all(gate.wait_turn(i, stop) for i in range(8))
    gate.record(1.0, 0.000_001)  # measurements change nothing
    assert gate.limit == 8


def test_an_adaptive_gate_starts_with_two_pollers_and_parks_the_others() -> None:
    gate = Gate(8)
    stop = threading.Event()
    passed = threading.Event()
    parked = threading.Thread(target=lambda: passed.set() if gate.wait_turn(5, stop) else None)

    parked.start()

    assert gate.limit == 2
    assert gate.wait_turn(0, stop) and gate.wait_turn(1, stop)
    assert not passed.wait(0.3)  # poller 5 waits while two are enough
    stop.set()
    parked.join(WAIT_S)
    assert not passed.is_set()  # a stop ends the wait without a turn


def test_a_long_round_trip_wakes_the_parked_pollers() -> None:
    gate = Gate(8)
    stop = threading.Event()
    passed = threading.Event()
    parked = threading.Thread(target=lambda: passed.set() if gate.wait_turn(7, stop) else None)
    parked.start()

    gate.record(0.020, 0.001)  # MNS 20 ms away, 1 ms of work per batch: 21 would be needed

    assert gate.limit == 8  # capped at the pollers there are
    assert passed.wait(WAIT_S)
    parked.join(WAIT_S)


def test_the_limit_follows_round_trip_over_work() -> None:
    gate = Gate(16)

    gate.record(0.004, 0.001)
    assert gate.limit == 5  # ceil(4 / 1) + 1

    for _ in range(50):  # the round trip shrinks to the time of the work
        gate.record(0.001, 0.001)
    assert gate.limit == 2


def test_a_worker_with_fewer_pollers_than_the_floor_uses_them_all() -> None:
    gate = Gate(1)
    gate.record(0.000_1, 1.0)
    assert gate.limit == 1


def test_a_follower_admits_as_many_as_its_leader_plus_the_spare() -> None:
    pollers, ackers = Gate(8), Gate(8)
    pollers.lead(ackers, spare=1)
    assert ackers.limit == 3  # 2 pollers to start with, and one to spare

    pollers.record(0.020, 0.001)
    assert (pollers.limit, ackers.limit) == (8, 8)

    for _ in range(50):
        pollers.record(0.001, 0.001)
    assert (pollers.limit, ackers.limit) == (2, 3)


def test_a_fixed_follower_ignores_its_leader() -> None:
    pollers, ackers = Gate(8), Gate(8, adaptive=False)
    pollers.lead(ackers, spare=1)
    pollers.record(0.001, 0.001)
    assert ackers.limit == 8
