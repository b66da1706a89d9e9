"""The Redis idempotency store, against a real redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from alicom_sandbox.redis_server import RedisServer
from consumer.errors import ConfigError, TransientError
from consumer.pipeline.dedup import (
    RELEASED_MARK_S,
    ClaimState,
    Completion,
    DedupSettings,
    RedisDedupStore,
)

LONG_S = 60.0
SHORT_LEASE_S = 0.2
WEEK_S = 7 * 24 * 3600.0


@pytest.fixture(params=["one call per batch", "one call per key"])
def store(redis_client: redis.Redis, request: pytest.FixtureRequest) -> RedisDedupStore:
    """Every test runs on both paths: a single Redis's one batch script per call, and the
    single-key calls a cluster (or a proxy that refuses the batch script) gets."""
    store = RedisDedupStore(redis_client, DedupSettings())
    store.one_call_per_batch = request.param == "one call per batch"
    return store


def wait_until_gone(client: redis.Redis, key: str) -> None:
    """Polls until Redis has expired `key`; the limit is a hang guard, not a timing assertion."""
    guard = time.monotonic() + 30
    while client.pttl(key) != -2:
        assert time.monotonic() < guard, f"{key} never expired"
        time.sleep(0.02)


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_second_owner_cannot_claim_a_key_during_a_live_lease(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    assert store.claim(["SmsReport:b1:138"], "A", LONG_S) == [ClaimState.CLAIMED]
    assert store.claim(["SmsReport:b1:138"], "B", LONG_S) == [ClaimState.IN_PROGRESS]
    assert redis_client.get("alicom:dedup:SmsReport:b1:138") == b"I:A"


def test_a_claim_by_the_same_owner_is_idempotent_and_renews_the_lease(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["k"], "A", 5.0)
    assert store.claim(["k"], "A", LONG_S) == [ClaimState.CLAIMED]
    assert redis_client.pttl("alicom:dedup:k") > 5000


def test_an_orphaned_claim_becomes_claimable_once_its_lease_expires(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    assert store.claim(["k"], "crashed-worker", SHORT_LEASE_S) == [ClaimState.CLAIMED]
    wait_until_gone(redis_client, "alicom:dedup:k")
    assert store.claim(["k"], "B", LONG_S) == [ClaimState.CLAIMED]
    assert redis_client.get("alicom:dedup:k") == b"I:B"


def test_a_stale_owner_cannot_complete_over_the_new_owner_powertools_bug_2(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    assert store.claim(["k"], "A", SHORT_LEASE_S) == [ClaimState.CLAIMED]
    wait_until_gone(redis_client, "alicom:dedup:k")
    assert store.claim(["k"], "B", LONG_S) == [ClaimState.CLAIMED]

    assert store.complete(["k"], "A", WEEK_S) == [Completion.LOST]
    assert redis_client.get("alicom:dedup:k") == b"I:B"
    assert store.claim(["k"], "C", LONG_S) == [ClaimState.IN_PROGRESS]

    assert store.complete(["k"], "B", WEEK_S) == [Completion.RECORDED]
    assert redis_client.get("alicom:dedup:k") == b"1"
    assert store.claim(["k"], "C", LONG_S) == [ClaimState.COMPLETED]


def test_a_completed_key_is_found_completed_and_left_as_it_is(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.complete(["k"], "B", 100.0)
    assert store.complete(["k"], "A", WEEK_S) == [Completion.ALREADY_COMPLETED]
    assert 0 < redis_client.pttl("alicom:dedup:k") <= 100_000  # the first record's TTL


def test_a_completion_retried_after_a_lost_reply_counts_as_completed(
    store: RedisDedupStore,
) -> None:
    # The first call was applied on the server, its reply timed out: the retry finds the
    # record completed. That is this delivery's own completion, not a lost claim.
    assert store.claim(["k"], "A", LONG_S) == [ClaimState.CLAIMED]
    assert store.complete(["k"], "A", WEEK_S) == [Completion.RECORDED]
    [again] = store.complete(["k"], "A", WEEK_S)
    assert again is Completion.ALREADY_COMPLETED and again.done


def test_completing_after_an_expired_lease_nobody_took_still_records_the_work(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["k"], "A", SHORT_LEASE_S)
    wait_until_gone(redis_client, "alicom:dedup:k")
    assert store.complete(["k"], "A", WEEK_S) == [Completion.RECORDED]
    assert store.claim(["k"], "B", LONG_S) == [ClaimState.COMPLETED]


def test_a_completed_key_suppresses_duplicates_until_its_ttl_runs_out(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["k"], "A", LONG_S)
    assert store.complete(["k"], "A", 0.2) == [Completion.RECORDED]
    assert store.claim(["k"], "B", LONG_S) == [ClaimState.COMPLETED]
    wait_until_gone(redis_client, "alicom:dedup:k")
    assert store.claim(["k"], "B", LONG_S) == [ClaimState.CLAIMED]


def test_complete_keeps_the_record_for_the_given_ttl_not_the_lease(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["k"], "A", 1.0)
    store.complete(["k"], "A", WEEK_S)
    assert redis_client.pttl("alicom:dedup:k") > 6 * 24 * 3600 * 1000


def test_release_by_a_non_owner_changes_nothing(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["k"], "A", LONG_S)
    assert store.release(["k"], "B") == [False]
    assert redis_client.get("alicom:dedup:k") == b"I:A"
    assert store.claim(["k"], "B", LONG_S) == [ClaimState.IN_PROGRESS]


def test_release_of_a_completed_key_does_not_undo_it(store: RedisDedupStore) -> None:
    store.claim(["k"], "A", LONG_S)
    store.complete(["k"], "A", WEEK_S)
    assert store.release(["k"], "A") == [False]
    assert store.claim(["k"], "B", LONG_S) == [ClaimState.COMPLETED]


def test_a_released_key_runs_again_on_the_next_delivery(store: RedisDedupStore) -> None:
    store.claim(["k"], "A", LONG_S)
    assert store.release(["k"], "A") == [True]
    assert store.claim(["k"], "B", LONG_S) == [ClaimState.CLAIMED]


def test_extend_renews_our_own_leases_and_takes_back_a_lapsed_one(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["mine"], "A", 2.0)
    store.claim(["theirs"], "B", 2.0)
    store.claim(["lapsed"], "A", SHORT_LEASE_S)
    time.sleep(SHORT_LEASE_S + 0.1)  # a renewal Redis could not take in time
    assert store.extend(["mine", "theirs", "lapsed"], "A", LONG_S) == [True, False, True]
    assert redis_client.pttl("alicom:dedup:mine") > 2000
    assert redis_client.pttl("alicom:dedup:theirs") <= 2000
    assert redis_client.get("alicom:dedup:lapsed") == b"I:A"
    assert redis_client.pttl("alicom:dedup:lapsed") > 2000
    assert store.claim(["lapsed"], "B", LONG_S) == [ClaimState.IN_PROGRESS]


def test_extend_does_not_revive_a_completed_key_as_in_progress(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["k"], "A", LONG_S)
    store.complete(["k"], "A", WEEK_S)
    assert store.extend(["k"], "A", LONG_S) == [False]
    assert redis_client.get("alicom:dedup:k") == b"1"


class RoundTrips:
    """Counts round trips: writes to a Redis connection (every dedup batch is one write of
    all its script calls, then the replies are read)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = redis.connection.AbstractConnection.send_packed_command

        def counted(conn: redis.connection.AbstractConnection, *args: Any,
                    **kwargs: Any) -> Any:
            self.count += 1
            return real(conn, *args, **kwargs)  # type: ignore[no-untyped-call]

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command",
                            counted)


def test_a_mixed_batch_gets_every_state_right_in_one_round_trip(
    store: RedisDedupStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.claim(["busy"], "other", LONG_S)
    store.claim(["done"], "other", LONG_S)
    store.complete(["done"], "other", WEEK_S)
    store.claim(["warm-up"], "me", LONG_S)  # the script is loaded: no SCRIPT LOAD below

    before, trips = evalsha_calls(redis_client), RoundTrips(monkeypatch)
    states = store.claim(["new", "busy", "done", "new-2"], "me", LONG_S)
    trips_taken = trips.count
    after = evalsha_calls(redis_client)

    assert states == [
        ClaimState.CLAIMED, ClaimState.IN_PROGRESS, ClaimState.COMPLETED, ClaimState.CLAIMED,
    ]
    # One batch script on a single Redis; one single-key call per key otherwise.
    assert (trips_taken, after - before) == (1, 1 if store.one_call_per_batch else 4)


def test_a_single_redis_gets_one_script_call_per_batch_a_cluster_one_per_key(
    redis_client: redis.Redis,
) -> None:
    assert RedisDedupStore(redis_client, DedupSettings()).one_call_per_batch
    cluster = redis.RedisCluster.__new__(redis.RedisCluster)  # only its type is looked at
    cluster.register_script = redis_client.register_script  # type: ignore[method-assign]
    assert not RedisDedupStore(cluster, DedupSettings()).one_call_per_batch


# Tair's cluster proxy refuses a script whose keys lie in several slots with this reply.
_TAIR_REFUSAL = "ERR eval/evalsha command keys must be in same slot"


def test_a_server_that_refuses_the_batch_script_gets_single_key_calls_from_then_on(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str],
) -> None:
    store = RedisDedupStore(redis_client, DedupSettings())
    # A real Redis answering the batch scripts the way Tair's proxy does.
    refuse = redis_client.register_script("return redis.error_reply('%s')" % _TAIR_REFUSAL)
    store._claim_many = store._complete_many = refuse
    assert store.claim(["a", "b"], "me", LONG_S) == [ClaimState.CLAIMED] * 2
    assert not store.one_call_per_batch
    assert store.complete(["a", "b"], "me", WEEK_S) == [Completion.RECORDED] * 2
    assert redis_client.mget("alicom:dedup:a", "alicom:dedup:b") == [b"1", b"1"]
    assert capsys.readouterr().out.count("dedup_batch_script_refused") == 1


def test_another_error_of_the_batch_script_is_transient_and_keeps_the_batch_path(
    redis_client: redis.Redis,
) -> None:
    store = RedisDedupStore(redis_client, DedupSettings())
    store._claim_many = redis_client.register_script(
        "return redis.error_reply('OOM command not allowed when used memory > maxmemory')")
    with pytest.raises(TransientError, match="used memory"):
        store.claim(["a"], "me", LONG_S)
    assert store.one_call_per_batch
    assert redis_client.get("alicom:dedup:a") is None


@pytest.mark.parametrize("operation", ["complete", "release", "extend"])
def test_every_transition_of_a_batch_is_one_round_trip(
    store: RedisDedupStore, redis_client: redis.Redis, operation: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [f"k{i}" for i in range(16)]
    store.claim([*keys, "warm-up"], "me", LONG_S)
    _transition(store, operation, ["warm-up"])  # its script is loaded: no SCRIPT LOAD below
    trips = RoundTrips(monkeypatch)
    expected = Completion.RECORDED if operation == "complete" else True
    assert _transition(store, operation, keys) == [expected] * 16
    assert trips.count == 1


def _transition(store: RedisDedupStore, operation: str, keys: list[str]) -> list[object]:
    if operation == "complete":
        return list(store.complete(keys, "me", WEEK_S))
    if operation == "release":
        return list(store.release(keys, "me"))
    return list(store.extend(keys, "me", LONG_S))


def test_a_receipt_repeated_within_one_batch_is_claimed_once(store: RedisDedupStore) -> None:
    states = store.claim(["dup", "other", "dup"], "me", LONG_S)
    assert states == [ClaimState.CLAIMED, ClaimState.CLAIMED, ClaimState.IN_PROGRESS]
    assert store.complete(["dup", "dup"], "me", WEEK_S) == [Completion.RECORDED] * 2


def test_an_empty_batch_costs_no_round_trip(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["warm-up"], "me", LONG_S)
    before = evalsha_calls(redis_client)
    assert store.claim([], "me", LONG_S) == []
    assert store.complete([], "me", WEEK_S) == []
    assert evalsha_calls(redis_client) == before


def test_keys_live_under_the_configured_prefix(redis_client: redis.Redis) -> None:
    store = RedisDedupStore(redis_client, DedupSettings(key_prefix="tenant-7:"))
    store.claim(["SmsUp:x"], "me", LONG_S)
    assert redis_client.keys("*") == [b"tenant-7:SmsUp:x"]


def test_an_empty_owner_or_a_non_positive_lease_is_refused(store: RedisDedupStore) -> None:
    with pytest.raises(ValueError, match="owner"):
        store.claim(["k"], "", LONG_S)
    with pytest.raises(ValueError, match="lease_s"):
        store.claim(["k"], "me", 0)
    with pytest.raises(ValueError, match="ttl_s"):
        store.complete(["k"], "me", float("nan"))


@pytest.mark.parametrize(
    "bad",
    [{"key_prefix": ""}, {"completed_ttl_s": 0}],
)
def test_invalid_dedup_settings_are_a_config_error(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DedupSettings(**bad)  # type: ignore[arg-type]  # values are from a fixed valid set


@pytest.fixture
def restored_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's server, brought back up whatever the test did to it."""
    yield redis_server
    if redis_server.process.poll() is not None:
        redis_server.start_again()


def test_redis_going_away_is_a_transient_error_and_its_return_works_again(
    restored_server: RedisServer, redis_client: redis.Redis, store: RedisDedupStore
) -> None:
    store.claim(["before"], "me", LONG_S)
    restored_server.stop()
    with pytest.raises(TransientError, match="redis claim failed"):
        store.claim(["during"], "me", LONG_S)
    restored_server.start_again()
    # A fresh server has an empty script cache: redis-py reloads the script on NOSCRIPT.
    assert store.claim(["after"], "me", LONG_S) == [ClaimState.CLAIMED]


def test_a_redis_error_never_shows_the_password(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(
        f"redis://someone:s3cr3t-pa55@127.0.0.1:{redis_server.port}/0"
    )
    store = RedisDedupStore(client, DedupSettings())
    with pytest.raises(TransientError) as caught:
        store.claim(["k"], "me", LONG_S)
    message = str(caught.value)
    assert "AuthenticationError" in message
    assert "s3cr3t-pa55" not in message
    assert "someone" not in message
    client.close()


# -- per-handler completion -----------------------------------------------------------------


def test_a_release_keeps_the_finished_handlers_and_the_next_claim_gets_them(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["k"], "A", LONG_S)
    assert store.release(["k"], "A", [{"a1b2c3", "d4e5f6"}], WEEK_S) == [True]
    assert redis_client.get("alicom:dedup:k") == b"P:a1b2c3,d4e5f6"
    assert redis_client.pttl("alicom:dedup:k") > (WEEK_S - 60) * 1000  # kept, not a lease

    [claim] = store.claim_each(["k"], "B", LONG_S)

    assert (claim.state, claim.done) == (ClaimState.CLAIMED, frozenset({"a1b2c3", "d4e5f6"}))
    assert store.claim(["k"], "C", LONG_S) == [ClaimState.IN_PROGRESS]  # B's claim is live
    assert redis_client.pttl("alicom:dedup:k") > (WEEK_S - 60) * 1000  # the TTL was kept
    assert store.complete(["k"], "B", WEEK_S) == [Completion.RECORDED]
    assert redis_client.get("alicom:dedup:k") == b"1"  # complete: the same small record


def test_a_dead_claim_over_finished_handlers_is_taken_over_without_forgetting_them(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["k"], "A", LONG_S)
    store.release(["k"], "A", [{"a1b2c3"}], WEEK_S)
    store.claim(["k"], "crashed", SHORT_LEASE_S)
    time.sleep(SHORT_LEASE_S + 0.1)  # the lease (a deadline inside the record) ends

    [claim] = store.claim_each(["k"], "B", LONG_S)

    assert (claim.state, claim.done) == (ClaimState.CLAIMED, frozenset({"a1b2c3"}))
    assert store.complete(["k"], "crashed", WEEK_S) == [Completion.LOST]
    assert store.extend(["k"], "B", LONG_S) == [True]
    assert store.release(["k"], "B", [{"a1b2c3", "0f0f0f"}], WEEK_S) == [True]
    assert store.claim_each(["k"], "C", LONG_S)[0].done == {"a1b2c3", "0f0f0f"}


def test_a_release_with_nothing_finished_leaves_a_bare_mark_that_acts_as_absent(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    store.claim(["k", "j"], "A", LONG_S)
    assert store.release(["k", "j"], "A", [set(), {"a1b2c3"}], WEEK_S) == [True, True]
    assert redis_client.get("alicom:dedup:k") == b"P:"
    assert 0 < redis_client.pttl("alicom:dedup:k") <= RELEASED_MARK_S * 1000
    assert redis_client.get("alicom:dedup:j") == b"P:a1b2c3"
    assert store.release(["j"], "someone-else", [{"x"}], WEEK_S) == [False]
    assert store.extend(["k"], "A", LONG_S) == [False]
    assert store.complete(["k"], "B", WEEK_S) == [Completion.RECORDED]


def test_a_claim_tells_a_delivery_after_an_outcome_from_one_after_a_crash(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    [fresh] = store.claim_each(["k"], "A", LONG_S)
    assert (fresh.state, fresh.settled_before) == (ClaimState.CLAIMED, False)
    store.release(["k"], "A")  # a retry: the next delivery is no crash victim
    [after_retry] = store.claim_each(["k"], "B", LONG_S)
    assert (after_retry.state, after_retry.settled_before) == (ClaimState.CLAIMED, True)
    redis_client.set("alicom:dedup:k", "I:dead@1/", keepttl=True)  # an orphan past its lease
    [after_crash] = store.claim_each(["k"], "C", LONG_S)
    assert (after_crash.state, after_crash.settled_before) == (ClaimState.CLAIMED, False)


def test_records_of_the_previous_version_keep_their_meaning(
    store: RedisDedupStore, redis_client: redis.Redis
) -> None:
    redis_client.set("alicom:dedup:old-done", "1", px=60_000)
    redis_client.set("alicom:dedup:old-claim", "I:old-process-token", px=60_000)

    claims = store.claim_each(["old-done", "old-claim"], "new", LONG_S)

    assert [(c.state, c.done) for c in claims] == [
        (ClaimState.COMPLETED, frozenset()), (ClaimState.IN_PROGRESS, frozenset())]
    # The old process may still complete or release its own claim.
    assert store.complete(["old-claim"], "old-process-token", WEEK_S) == [Completion.RECORDED]


@pytest.mark.parametrize("owner", ["", "a@b", "a/b"])
def test_an_owner_that_could_be_misread_in_a_record_is_refused(
    store: RedisDedupStore, owner: str
) -> None:
    with pytest.raises(ValueError, match="owner"):
        store.claim(["k"], owner, LONG_S)
