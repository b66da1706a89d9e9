"""The Redis-backed stores on a real Redis Cluster (3 masters, 3 replicas): every script call
and transaction stays within one slot, and a batch of script calls is one pipeline per node."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import redis

from alicom_sandbox.redis_topologies import ClusterSetup, running_cluster
from consumer.clients.redis_client import RedisClient, connect
from consumer.clients.redis_scripts import (
    NotReplicatedError,
    ScriptCall,
    replication,
    run_calls,
    run_transaction,
)
from consumer.errors import TransientError
from consumer.handlers.review_status import ReviewStatus
from consumer.pipeline.deadletter import DeadLetter
from consumer.pipeline.deadletter_store import DeadLetterSettings, RedisDeadLetterStore
from consumer.pipeline.decode import parse_object
from consumer.pipeline.dedup import ClaimState, Completion, DedupSettings, RedisDedupStore
from consumer.receipts import Receipt, ReceiptMeta
from consumer.reports.delivery_stats import SHANGHAI, StatsWriter
from consumer.reports.hour_counts import read_hours
from consumer.reports.numbers import NumberList
from consumer.reports.reviews import ReviewStore
from consumer.reports.tasks import Outcome
from consumer.reports.tracking import SendTracker, TrackingSettings
from tests.test_tasks_reviews import _review

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSetup]:
    with running_cluster() as setup:
        yield setup


@pytest.fixture
def client(cluster: ClusterSetup) -> Iterator[RedisClient]:
    c = connect(cluster.url, socket_timeout_s=5)
    for port in cluster.masters():
        redis.Redis(port=port).flushall()
    yield c
    c.close()


SENT = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _report(biz_id: str, phone: str, success: bool = True) -> Receipt:
    sent = SENT.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
    obj = {"phone_number": phone, "biz_id": biz_id, "success": success,
           "err_code": "DELIVERED" if success else "MK:0001", "err_msg": "x",
           "send_time": sent, "report_time": sent,
           "sms_size": "1", "out_id": ""}
    return parse_object("SmsReport", obj, ReceiptMeta(source="mns"))


def test_run_calls_answers_each_call_across_all_masters_in_one_pipeline_per_node(
        client: RedisClient, monkeypatch: pytest.MonkeyPatch) -> None:
    script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    keys = [f"k{i}" for i in range(60)]
    assert isinstance(client, redis.RedisCluster)
    nodes = {client.get_node_from_key(k).name for k in keys}  # type: ignore[no-untyped-call]
    assert len(nodes) == 3  # the keys really spread over every master
    run_calls(client, [ScriptCall(script, [k], [0]) for k in keys])  # loads it on each node
    sent = [0]
    real = redis.connection.AbstractConnection.send_packed_command

    def counting(self: redis.connection.AbstractConnection, command: object,
                 check_health: bool = True) -> None:
        sent[0] += 1
        real(self, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    answers = run_calls(client, [ScriptCall(script, [k], [i]) for i, k in enumerate(keys)])
    assert answers == list(range(60))
    assert sent[0] == 3  # one pipeline per master


def test_dead_letters_work_on_a_cluster(client: RedisClient) -> None:
    store = RedisDeadLetterStore(client, DeadLetterSettings(max_entries=3))
    letters = [DeadLetter.create(queue="A" if i % 2 else "B", message_type="SmsReport",
                                 raw_body=b"\xff body %d" % i, reason="not_json", detail="d",
                                 source="mns", dead_at_ms=int(time.time() * 1000) + i)
               for i in range(5)]
    for item in letters:
        store.put(item)
    assert [item.id for item in store.list()] == [item.id for item in letters[:1:-1]]
    assert store.get(letters[4].id) == letters[4]
    assert store.remove(letters[4].id)
    assert store.count() == 2
    assert store.purge() == 2
    assert store.count() == 0


def test_a_transaction_sent_to_a_node_that_lost_its_slot_is_rerouted_and_unconfirmed(
        client: RedisClient, cluster: ClusterSetup) -> None:
    """The client's slot map still names the old master: the block is refused there (MOVED),
    runs through the cluster client's own transaction and, its replication unknown, is
    reported unconfirmed (with `wait`); sent again it goes to the new master, confirmed."""
    key = "{rerouted}:k"
    owner = client.get_node_from_key(key).port
    promoted = cluster.failover(owner)
    with pytest.raises(NotReplicatedError, match="rerouted during a failover"):
        run_transaction(client, key, [("SET", key, "1"), ("INCR", key)], replication(1, 2))
    assert client.get_node_from_key(key).port == promoted
    assert run_transaction(client, key, [("INCR", key)], replication(1, 2)) == [3]
    replica = redis.Redis(port=owner, single_connection_client=True)
    replica.execute_command("READONLY")  # a replica now, which WAIT confirmed has it
    assert replica.get(key) == b"3"
    replica.close()
    cluster.failover(promoted)
    assert run_transaction(client, key, [("INCR", key)]) == [4]  # rerouted, no wait asked


def test_claims_waited_for_reach_the_new_master_after_a_failover(
        client: RedisClient, cluster: ClusterSetup) -> None:
    """The client's slot map still names the old master, which answers MOVED to every call
    and refuses WAIT (a replica now): the calls are sent again through the cluster client,
    which follows MOVED and re-reads the slot map, so the next claim goes to the new master.
    (Without that, every claim met the same refusal and a worker applied nothing more.)"""
    store = RedisDedupStore(client, DedupSettings(wait_replicas=1, wait_timeout_s=2))
    store.claim([f"before:{i}" for i in range(32)], "me", 30)
    cluster.failover()
    outcomes: list[object] = []
    for batch in range(5):
        try:
            outcomes.append(store.claim([f"after:{batch}:{i}" for i in range(32)], "me", 30))
            break
        except TransientError as exc:
            outcomes.append(str(exc))
    assert "rerouted during a failover" in str(outcomes[0])  # run, but not confirmed
    # redis-py learns a moved slot per MOVED, and the whole map every fifth one.
    assert outcomes[-1] == [ClaimState.CLAIMED] * 32 and len(outcomes) <= 3, outcomes


def test_tracking_tasks_and_stats_work_on_a_cluster(client: RedisClient) -> None:
    tracker = SendTracker(client, TrackingSettings())
    now = time.time()
    assert tracker.record("100^0", "13800000001", now - 60, out_id="order-1", task_id="t1")
    assert tracker.record("101^0", "13800000002", now - 30, task_id="t1")
    assert not tracker.record("101^0", "13800000002", now - 30, task_id="t1")
    assert [s.out_id for s in tracker.pending()] == ["order-1", ""]
    assert tracker.clear_many([("100^0", "13800000001"), ("102^0", "13800000009")]) == [
        True, False]
    assert tracker.count() == 1
    task = tracker.tasks.get("t1")
    assert task is not None and (task.submitted, task.pending) == (2, 2)
    # The send-tracker handler's path: one script call for the batch, keys read by index.
    assert tracker.clear_many([("101^0", "13800000002")], settle=[
        Outcome("101^0", "13800000002", False, "MK:0005", "empty_number")],
        sent_at=[now - 30]) == [True]
    assert tracker.one_call_per_batch  # the cluster took it: every key in one slot
    task = tracker.tasks.get("t1")
    assert task is not None and (task.failed, task.pending, task.reasons) == (
        1, 1, {"empty_number": 1})
    StatsWriter(client).record([_report("100^0", "13800000001"),
                                _report("101^0", "13800000002", success=False)])
    hour = read_hours(client, SENT, 1)[0]
    assert (hour.delivered, hour.failed) == (1, 1)


def test_the_number_list_and_reviews_work_on_a_cluster(client: RedisClient,
                                                       cluster: ClusterSetup) -> None:
    numbers = NumberList(client)
    numbers.add("13800000001", reason="complaint")
    numbers.add("13800000002", reason="test", expire_days=1)
    assert numbers.suppressed_many(["13800000001", "13800000002", "13800000003"]) == [
        True, True, False]
    assert numbers.count_suppressed() == 2
    assert sorted(r.number for r in numbers.suppressed()) == ["13800000001", "13800000002"]
    assert numbers.remove(["13800000002", "13800000003"]) == 1
    assert not numbers.is_suppressed("13800000002")
    handler = ReviewStatus(cluster.url)  # through the one client factory, as configured
    handler.handle_batch([_review("SignSmsReport", "1", "approving", enqueued_ms=1000),
                          _review("SignSmsReport", "1", "rejected", "x", enqueued_ms=2000)])
    handler.close()
    store = ReviewStore(client)
    assert [(r.name, r.state) for r in store.current()] == [("shop", "rejected")]
    assert [r.state for r in store.history("sign", "shop")] == ["rejected", "approving"]


def test_dedup_on_a_cluster_spreads_records_over_every_master(
        client: RedisClient, cluster: ClusterSetup) -> None:
    store = RedisDedupStore(client, DedupSettings())
    assert not store.one_call_per_batch  # a batch's keys lie in many slots: one call per key
    keys = [f"SmsReport:{i}^0:138" for i in range(48)]
    assert store.claim([*keys, keys[0]], "me", 30) == [ClaimState.CLAIMED] * 48 + [
        ClaimState.IN_PROGRESS]
    assert store.claim(keys[:2], "other", 30) == [ClaimState.IN_PROGRESS] * 2
    assert store.complete(keys, "me", 600) == [Completion.RECORDED] * 48
    assert store.claim(keys[:2], "other", 30, legacy=["old-1", "old-2"]) == [
        ClaimState.COMPLETED] * 2
    per_master = [redis.Redis(port=p).dbsize() for p in cluster.masters()]
    assert all(n > 0 for n in per_master) and sum(per_master) == 48, per_master
