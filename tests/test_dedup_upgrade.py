"""Upgrading to hashed key names: records written under the old names (the business identity
in clear) keep catching their duplicates for their whole TTL, against a real Redis."""

from __future__ import annotations

import pytest
import redis

from consumer.keys import make_key_function
from consumer.pipeline.dedup import ClaimState, Completion, DedupSettings, RedisDedupStore
from consumer.receipts import ReceiptMeta, SmsReport

PREFIX = DedupSettings().key_prefix
KEY_OF = make_key_function(secret=b"deployment-secret")


@pytest.fixture(params=["one call per batch", "one call per key"])
def store(redis_client: redis.Redis, request: pytest.FixtureRequest) -> RedisDedupStore:
    """Both paths of a single Redis: the batch script, and the single-key calls (their
    legacy name as KEYS[2])."""
    store = RedisDedupStore(redis_client, DedupSettings())
    store.one_call_per_batch = request.param == "one call per batch"
    return store


def report(phone: str) -> SmsReport:
    return SmsReport(raw={}, meta=ReceiptMeta("mns", "q", "m-%s" % phone, 1),
                     phone_number=phone, biz_id="932702304080415357^0", success=True)


def old_version_completed(client: redis.Redis, receipt: SmsReport, ttl_s: int) -> str:
    """What the previous version left after applying `receipt`: "1" under the name in clear."""
    name = PREFIX + "SmsReport:%s:%s" % (receipt.biz_id, receipt.phone_number)
    client.set(name, "1", ex=ttl_s)
    return name


def test_an_old_format_record_still_catches_its_duplicate(redis_client: redis.Redis,
        store: RedisDedupStore) -> None:
    applied, fresh = report("13800000001"), report("13800000002")
    old_name = old_version_completed(redis_client, applied, ttl_s=3600)
    keys = [KEY_OF(applied), KEY_OF(fresh)]

    states = store.claim(keys, "owner-1", 30, legacy=[KEY_OF.legacy(r) for r in (applied, fresh)])

    assert states == [ClaimState.COMPLETED, ClaimState.CLAIMED]
    # Nothing new is written for the duplicate, the old record keeps its TTL, and the fresh
    # receipt's claim lives under the hashed name only.
    assert redis_client.get(PREFIX + keys[0]) is None
    assert 0 < redis_client.ttl(old_name) <= 3600
    assert redis_client.get(PREFIX + keys[1]) == b"I:owner-1"
    assert redis_client.get(PREFIX + KEY_OF.legacy(fresh)) is None


def test_a_claim_held_by_an_old_version_process_is_left_alone(redis_client: redis.Redis,
        store: RedisDedupStore) -> None:
    receipt = report("13800000003")
    redis_client.set(PREFIX + KEY_OF.legacy(receipt), "I:old-process", px=30_000)
    states = store.claim([KEY_OF(receipt)], "new", 30, legacy=[KEY_OF.legacy(receipt)])
    assert states == [ClaimState.IN_PROGRESS]


def test_once_the_old_record_expired_the_receipt_is_claimed_under_its_new_name(
        redis_client: redis.Redis, store: RedisDedupStore) -> None:
    receipt = report("13800000004")
    old_name = old_version_completed(redis_client, receipt, ttl_s=3600)
    redis_client.delete(old_name)  # its TTL ran out
    key = KEY_OF(receipt)
    assert store.claim([key], "o", 30, legacy=[KEY_OF.legacy(receipt)]) == [ClaimState.CLAIMED]
    assert store.complete([key], "o", 60) == [Completion.RECORDED]
    # From now on the new record answers, with or without the fallback.
    assert store.claim([key], "p", 30) == [ClaimState.COMPLETED]


def test_a_new_record_wins_over_a_legacy_one(redis_client: redis.Redis,
        store: RedisDedupStore) -> None:
    receipt = report("13800000005")
    key = KEY_OF(receipt)
    assert store.claim([key], "mine", 30) == [ClaimState.CLAIMED]
    old_version_completed(redis_client, receipt, ttl_s=60)
    # Our own live claim is renewed, as without a legacy record.
    assert store.claim([key], "mine", 30, legacy=[KEY_OF.legacy(receipt)]) == [
        ClaimState.CLAIMED]


def test_legacy_names_must_match_the_keys_one_to_one(redis_client: redis.Redis,
        store: RedisDedupStore) -> None:
    with pytest.raises(ValueError, match="one record per key"):
        store.claim(["a", "b"], "o", 30, legacy=["a"])


def test_a_server_refusing_scripts_over_many_slots_gets_no_legacy_name_either(
        redis_client: redis.Redis) -> None:
    # Tair's proxy refuses a batch script (many slots) and would refuse a claim with its
    # legacy name (two slots) just the same; no version before could run there, so there is
    # no legacy record to find: the claims go without one.
    store = RedisDedupStore(redis_client, DedupSettings())
    store._claim_many = redis_client.register_script(
        "return redis.error_reply('ERR eval/evalsha command keys must be in same slot')")
    receipt = report("13800000009")
    old_version_completed(redis_client, receipt, ttl_s=3600)
    assert store.claim([KEY_OF(receipt)], "me", 30, legacy=[KEY_OF.legacy(receipt)]) == [
        ClaimState.CLAIMED]
    assert not store.one_call_per_batch
