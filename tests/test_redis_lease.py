"""The Redis lease behind `reconcile`'s one-host-at-a-time rule, on a real Redis."""

from __future__ import annotations

import time

import redis

from consumer.clients.redis_lease import hold, holder_of


def test_a_second_holder_is_turned_away_until_the_first_leaves(
        redis_client: redis.Redis) -> None:
    with hold(redis_client, "lease", 5) as first:
        assert first is not None
        with hold(redis_client, "lease", 5) as second:
            assert second is None
        assert holder_of(redis_client, "lease") == first.holder
        assert " pid=" in first.holder
    assert holder_of(redis_client, "lease") is None
    with hold(redis_client, "lease", 5) as third:
        assert third is not None


def test_a_held_lease_is_renewed_past_its_ttl(redis_client: redis.Redis) -> None:
    with hold(redis_client, "lease", 1.0) as lease:
        assert lease is not None
        time.sleep(2.5)  # well past the TTL: only the renewals keep it
        assert holder_of(redis_client, "lease") == lease.holder
        assert not lease.lost.is_set()


def test_a_lease_taken_over_is_reported_lost_and_not_released_from_the_new_holder(
        redis_client: redis.Redis) -> None:
    with hold(redis_client, "lease", 1.0) as lease:
        assert lease is not None
        redis_client.set("lease", "someone else")
        guard = time.monotonic() + 10  # a hang guard, not a timing assertion
        while not lease.lost.is_set():
            assert time.monotonic() < guard
            time.sleep(0.05)
    assert redis_client.get("lease") == b"someone else"
