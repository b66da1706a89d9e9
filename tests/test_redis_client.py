"""The one Redis client factory: every URL form, real Sentinel and Cluster set-ups, and no
password in any error."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from alicom_sandbox.redis_server import free_port, running_redis
from alicom_sandbox.redis_topologies import (
    ClusterSetup,
    SentinelSetup,
    running_cluster,
    running_sentinel,
)
from consumer.clients.redis_client import (
    connect,
    hash_tagged,
    redis_error_text,
    scrub,
    transient_from_redis,
)
from consumer.clients.redis_scripts import NotReplicatedError, ScriptCall, replication, run_calls
from consumer.errors import ConfigError, TransientError
from consumer.pipeline.deadletter import DeadLetter, message_letter_id
from consumer.pipeline.deadletter_store import RedisDeadLetterStore
from consumer.pipeline.decode import parse_object
from consumer.pipeline.dedup import ClaimState, Completion, DedupSettings, RedisDedupStore
from consumer.receipts import SHANGHAI, ReceiptMeta
from consumer.redis_url import parse_redis_url, redis_url_problems
from consumer.reports.delivery_stats import StatsWriter
from consumer.reports.hour_counts import read_hours
from consumer.settings import DeadLetterSettings, redact_url


def test_sentinel_urls_name_the_sentinels_the_service_and_the_db() -> None:
    target = parse_redis_url(
        "rediss+sentinel://app:pw%40x@s1:26379,s2,[::1]:26380/mymaster/2?sentinel_password=sp")
    assert (target.mode, target.tls, target.service_name, target.db) == (
        "sentinel", True, "mymaster", 2)
    assert target.nodes == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (target.username, target.password, target.sentinel_password) == ("app", "pw@x", "sp")
    assert "pw@x" not in repr(target) and "sp" not in repr(target).replace("sentinel", "")


def test_cluster_urls_list_start_up_nodes() -> None:
    target = parse_redis_url("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2")
    assert (target.mode, target.tls, target.password) == ("cluster", False, "pw")
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379))


def test_tls_urls_may_name_the_ca_file_of_a_managed_redis() -> None:
    target = parse_redis_url("rediss+cluster://n1:7000,n2?ssl_ca_certs=/etc/ssl/tair/ca.pem")
    assert (target.tls, target.ssl_ca_certs) == (True, "/etc/ssl/tair/ca.pem")
    assert target.nodes == (("n1", 7000), ("n2", 6379))
    target = parse_redis_url("rediss+sentinel://s1/m/2?ssl_ca_certs=/ca.pem&sentinel_password=x")
    assert (target.service_name, target.db, target.ssl_ca_certs) == ("m", 2, "/ca.pem")
    with pytest.raises(ConfigError, match=r"has ssl_ca_certs, but redis\+cluster:// is not TLS"):
        parse_redis_url("redis+cluster://n1?ssl_ca_certs=/ca.pem")


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+sentinel://:hunter2@s1:26x79/m", "has a port that is not a number 1-65535 "
                                             "(host 's1', port '26x79')"),
    ("redis://:hunter2@h:63x9/0", "has a port that is not a number (host 'h:63x9')"),
    ("redis+cluster://:hunter2@h:7000/1", "has a path, but a cluster has only db 0 (no /db)"),
    ("redis+sentinel://:hunter2@h:26379", "needs the service name as its path"),
    ("redis+sentinel://h/m/x", "has a db that is not a number ('x')"),
    ("redis+sentinel://h/m?pasword=hunter2", "has unknown option(s) pasword"),
    ("redis+cluster://:hunter2@h1,,h2", "has an empty host in its host list"),
    ("memcached://:hunter2@h", "must start with redis://"),
    ("redis:/:hunter2@h", "must start with redis://"),
    ("redis:hunter2@h", "must start with redis://"),
    (":hunter2@redis://h", "must start with redis://"),
])
def test_a_bad_url_is_one_line_naming_the_problem_without_the_password(
        url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_redis_url(url)
    text = str(caught.value)
    assert text.startswith("redis url " + problem), text
    assert "hunter2" not in text and "\n" not in text
    assert redis_url_problems(url) == ["redis.url " + text.removeprefix("redis url ")]


def test_good_urls_have_no_problems() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://u:p@h:6380/1", "unix:///run/redis.sock?db=2",
                "redis+sentinel://s1:26379/m", "redis+cluster://n1:7000"):
        assert redis_url_problems(url) == [], url


def test_sentinel_password_is_redacted_in_logged_settings() -> None:
    assert redact_url("redis+sentinel://:pw@s1:26379,s2:26379/m/0?sentinel_password=sp") == (
        "redis+sentinel://:***@s1:26379,s2:26379/m/0?sentinel_password=***")


def test_scrub_removes_every_password_the_url_carries() -> None:
    url = "redis+sentinel://:data-pw@s1:26379/m?sentinel_password=sent-pw"
    text = scrub("AUTH data-pw failed; sentinel sent-pw; at redis://u:x@h", url)
    assert text == "AUTH *** failed; sentinel ***; at redis://***@h"


def test_a_secret_echoed_in_a_redis_error_text_is_scrubbed() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, password="hunter2-xyz")
    echoed = redis.ConnectionError(
        "proxy said: cannot reach redis://ops:p4ss@10.0.0.9:6379 with AUTH hunter2-xyz"
    )
    message = str(transient_from_redis(echoed, "claim", client))
    assert "p4ss" not in message
    assert "hunter2-xyz" not in message
    assert "10.0.0.9:6379" in message
    client.close()


def test_hash_tagged_puts_a_family_in_one_slot_and_keeps_an_existing_tag() -> None:
    assert hash_tagged("alicom:dlq:") == "{alicom:dlq}:"
    assert hash_tagged("alicom:track") == "{alicom:track}"
    assert hash_tagged("app:{dlq}:") == "app:{dlq}:"


@pytest.fixture(scope="module")
def sentinel_setup() -> Iterator[SentinelSetup]:
    with running_sentinel() as setup:
        yield setup


@pytest.fixture(scope="module")
def cluster_setup() -> Iterator[ClusterSetup]:
    with running_cluster() as setup:
        yield setup


@pytest.mark.slow
def test_a_sentinel_client_follows_the_primary_across_a_failover(
        sentinel_setup: SentinelSetup) -> None:
    client = connect(sentinel_setup.url, socket_timeout_s=5)
    assert isinstance(client, redis.Redis)
    client.set("k", "before")
    first = sentinel_setup.current_primary()
    second = sentinel_setup.failover()
    assert second != first
    client.set("k", "after")  # the same client object: no restart, no new URL
    assert client.get("k") == b"after"
    assert redis.Redis(port=second).get("k") == b"after"


@pytest.mark.slow
def test_a_cluster_client_routes_keys_to_every_master(cluster_setup: ClusterSetup) -> None:
    client = connect(cluster_setup.url, socket_timeout_s=5)
    for i in range(50):
        client.set(f"k{i}", i)
    per_master = [redis.Redis(port=p).dbsize() for p in cluster_setup.masters()]
    assert len(per_master) == 3 and all(n > 0 for n in per_master), per_master
    assert sum(per_master) == 50


def test_a_cluster_nobody_answers_is_a_redis_error_without_the_password() -> None:
    url = f"redis+cluster://:hunter2@127.0.0.1:{free_port()}"
    with pytest.raises(redis.RedisError) as caught:
        connect(url, socket_timeout_s=1, connect_timeout_s=1)
    assert "hunter2" not in scrub(str(caught.value), url)


@pytest.mark.slow
def test_wait_replicas_confirms_claims_and_completions_on_the_replica_or_fails(
        sentinel_setup: SentinelSetup) -> None:
    client = connect(sentinel_setup.url, socket_timeout_s=5)
    one = RedisDedupStore(client, DedupSettings(wait_replicas=1, wait_timeout_s=2))
    keys = [f"w{i}" for i in range(8)]
    one.claim(keys, "me", 30)
    assert one.complete(keys, "me", 600) == [Completion.RECORDED] * 8
    replica = redis.Redis(port=_replica_port(sentinel_setup))
    assert replica.get("alicom:dedup:w0") == b"1"  # already there: WAIT confirmed it

    two = RedisDedupStore(client, DedupSettings(wait_replicas=2, wait_timeout_s=0.2))
    with pytest.raises(TransientError, match="1 of 2 replicas"):
        two.claim(["x"], "me", 30)  # an unconfirmed claim: the caller runs nothing
    one.claim(["y"], "me", 30)
    with pytest.raises(TransientError, match="1 of 2 replicas"):
        two.complete(["y"], "me", 600)
    assert client.get("alicom:dedup:y") == b"1"  # written on the primary all the same


@pytest.mark.slow
def test_wait_replicas_confirms_dead_letters_on_the_replica_and_a_put_sent_again_adds_none(
        sentinel_setup: SentinelSetup) -> None:
    client = connect(sentinel_setup.url, socket_timeout_s=5)
    settings = DeadLetterSettings(key_prefix="wait-dlq:")
    letter = DeadLetter.create(queue="Q", message_type="SmsReport", raw_body=b"{bad",
                               reason="not_json", detail="d", source="mns",
                               letter_id=message_letter_id("mns", "Q", "m-1", 1000))
    two = RedisDeadLetterStore(client, settings, replication(2, 0.2))
    with pytest.raises(TransientError, match="1 of 2 replicas"):
        two.put(letter)  # unconfirmed: the caller keeps the message
    one = RedisDeadLetterStore(client, settings, replication(1, 2))
    assert one.put(letter) == letter.id  # the same message's letter, sent again
    assert one.count() == 1 and one.get(letter.id) == letter
    replica = redis.Redis(port=_replica_port(sentinel_setup))
    assert replica.hget(one.entry_key(letter.id), "reason") == b"not_json"


@pytest.mark.slow
def test_wait_replicas_confirms_statistics_and_a_batch_recorded_again_counts_once(
        sentinel_setup: SentinelSetup) -> None:
    client = connect(sentinel_setup.url, socket_timeout_s=5)
    hour = datetime.now(SHANGHAI).replace(minute=0, second=0, microsecond=0)
    sent = hour.strftime("%Y-%m-%d %H:%M:%S")
    receipt = parse_object("SmsReport", {
        "phone_number": "13800000000", "biz_id": "77^1", "success": True,
        "err_code": "DELIVERED", "err_msg": "ok", "send_time": sent, "report_time": sent,
        "sms_size": "1", "out_id": ""}, ReceiptMeta(source="mns"))
    with pytest.raises(NotReplicatedError, match="1 of 2 replicas"):
        StatsWriter(client, "wait-stats", wait=replication(2, 0.2)).record([receipt])
    assert StatsWriter(client, "wait-stats", wait=replication(1, 2)).record([receipt]) == [None]
    assert read_hours(client, hour, 1, "wait-stats")[0].delivered == 1
    replica = redis.Redis(port=_replica_port(sentinel_setup))
    assert read_hours(replica, hour, 1, "wait-stats")[0].delivered == 1
    with pytest.raises(ValueError, match="needs once-markers"):
        StatsWriter(client, "wait-stats", once_ttl_s=0, wait=replication(1, 2))


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_tls_sentinel_and_cluster_urls_work_across_a_failover_and_check_the_certificate(
        topology: str) -> None:
    """Every process listens with a self-signed certificate (and talks TLS to the others);
    the URL names it as its CA. The same URL without it fails: the certificate is checked."""
    setup: SentinelSetup | ClusterSetup
    with (running_sentinel(tls=True) if topology == "sentinel"
          else running_cluster(tls=True)) as setup:
        url = setup.url
        assert url.startswith(f"rediss+{topology}://") and "?ssl_ca_certs=" in url
        store = RedisDedupStore(connect(url, socket_timeout_s=5),
                                DedupSettings(wait_replicas=1, wait_timeout_s=2))
        assert store.claim(["before"], "me", 30) == [ClaimState.CLAIMED]
        setup.failover()
        claimed = None
        for _ in range(5):  # the first claims after it may be unconfirmed (TransientError)
            try:
                claimed = store.claim([f"after-{n}" for n in range(16)], "me", 30)
                break
            except TransientError:
                time.sleep(0.2)
        assert claimed == [ClaimState.CLAIMED] * 16
        if isinstance(setup, SentinelSetup):
            # The sentinel client only says that no sentinel answered; that each refused
            # the handshake is shown on a sentinel's own TLS port, asked directly.
            with pytest.raises(redis.ConnectionError, match="No master found"):
                connect(url.partition("?")[0], socket_timeout_s=2).ping()
            sentinel = redis.Redis(port=setup.tls_ports[setup.sentinel_ports[0]], ssl=True,
                                   socket_timeout=2)
            with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
                sentinel.ping()
        else:  # the cluster client reads its slot map at once, over the refused handshake
            with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
                connect(url.partition("?")[0], socket_timeout_s=2).ping()


def _replica_port(setup: SentinelSetup) -> int:
    primary = setup.current_primary()
    return setup.replica_port if primary == setup.primary_port else setup.primary_port


def test_script_round_trips_wait_in_the_kernel_and_a_stalled_server_still_times_out() -> None:
    # One send and one receive per round trip (no poll before each): the socket is in
    # blocking mode and the kernel keeps its timeout. A server of its own: it is paused.
    with running_redis() as server:
        client = connect(server.url, socket_timeout_s=0.2, retry=Retry(NoBackoff(), 0))
        other = server.client()
        script = client.register_script("return 1")
        try:
            assert run_calls(client, [ScriptCall(script, ["k"])]) == [1]
            [connection] = client.connection_pool._available_connections
            sock = connection._sock  # the pooled socket is what is checked
            assert sock.gettimeout() is None
            seconds, micros = struct.unpack("@ll", sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
            assert seconds + micros / 1e6 == pytest.approx(0.2, abs=0.01)  # kernel: in ticks

            other.execute_command("CLIENT", "PAUSE", 1000, "ALL")  # the server stops answering
            with pytest.raises(redis.RedisError) as caught:
                run_calls(client, [ScriptCall(script, ["k"])])
            assert redis_error_text(caught.value, client) == (
                "TimeoutError: Timeout reading from or writing to socket")
            time.sleep(1.0)  # the pause ends: the next round trip connects again and works
            assert run_calls(client, [ScriptCall(script, ["k"])]) == [1]
        finally:
            client.close()
            other.close()
