"""The Redis dead-letter store, against a real redis-server."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alicom_sandbox.config_file import write_config
from alicom_sandbox.redis_server import RedisServer
from consumer.errors import ConfigError, TransientError
from consumer.pipeline.deadletter import DeadLetter, new_dead_letter_id
from consumer.pipeline.deadletter_store import DeadLetterSettings, RedisDeadLetterStore
from tests.lifecycle_sources import report

DAY_MS = 24 * 3600 * 1000


def now_ms() -> int:
    return int(time.time() * 1000)


def letter(queue: str = "Alicom-Queue-1-SmsReport", *, dead_at_ms: int | None = None,
           raw_body: str | bytes = "eyJiaXpfaWQiOiAiMSJ9", reason: str = "not_json") -> DeadLetter:
    return DeadLetter.create(
        queue=queue, message_type="SmsReport", raw_body=raw_body, reason=reason,
        detail="Expecting value: line 1 column 1", source="mns" if queue else "push",
        message_id="7B0C2F0E1A" if queue else "", dequeue_count=3,
        enqueue_time_ms=1_700_000_000_000, first_dequeue_time_ms=1_700_000_000_500,
        dead_at_ms=dead_at_ms,
    )


@pytest.fixture
def store(redis_client: redis.Redis) -> RedisDeadLetterStore:
    return RedisDeadLetterStore(redis_client, DeadLetterSettings())


def command_calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_dead_letter_comes_back_exactly_as_it_was_put(store: RedisDeadLetterStore) -> None:
    original = letter()
    assert store.put(original) == original.id
    assert store.get(original.id) == original


def test_a_letter_without_an_id_gets_a_time_ordered_one(store: RedisDeadLetterStore) -> None:
    base = letter(dead_at_ms=1_800_000_000_123)
    letter_id = store.put(replace(base, id=""))
    assert letter_id.startswith("1800000000123-")
    stored = store.get(letter_id)
    assert stored is not None
    assert stored.id == letter_id


def test_ids_are_unique_and_sort_by_time_as_strings() -> None:
    ids = [new_dead_letter_id(ms) for ms in (5, 1_700_000_000_000, 1_700_000_000_000, 9)]
    assert len(set(ids)) == 4
    assert sorted(ids) == [ids[0], ids[3], *sorted(ids[1:3])]


def test_get_of_an_unknown_id_is_none(store: RedisDeadLetterStore) -> None:
    assert store.get("1700000000000-000000000000") is None


def test_list_is_newest_first_and_pages_with_limit_and_offset(
    store: RedisDeadLetterStore,
) -> None:
    start = now_ms()
    letters = [letter(dead_at_ms=start + i) for i in range(5)]
    store.put_many(letters[::2])
    store.put_many(letters[1::2])
    newest_first = [item.id for item in reversed(letters)]
    assert [item.id for item in store.list()] == newest_first
    assert [item.id for item in store.list(limit=2, offset=1)] == newest_first[1:3]
    assert store.list(limit=10, offset=5) == []


def test_list_and_count_can_be_narrowed_to_one_queue(store: RedisDeadLetterStore) -> None:
    report, up, push = letter("Q-SmsReport"), letter("Q-SmsUp"), letter("")
    store.put_many([report, up, push])
    assert [item.id for item in store.list(queue="Q-SmsUp")] == [up.id]
    assert [item.id for item in store.list(queue="")] == [push.id]
    assert (store.count(), store.count("Q-SmsReport"), store.count("nowhere")) == (3, 1, 0)


def test_remove_takes_an_entry_out_of_every_view(store: RedisDeadLetterStore) -> None:
    kept, gone = letter("Q"), letter("Q")
    store.put_many([kept, gone])
    assert store.remove(gone.id) is True
    assert store.get(gone.id) is None
    assert [item.id for item in store.list(queue="Q")] == [kept.id]
    assert store.count() == store.count("Q") == 1
    assert store.remove(gone.id) is False


def test_purging_one_queue_leaves_the_others(store: RedisDeadLetterStore) -> None:
    store.put_many([letter("A"), letter("A"), letter("B")])
    assert store.purge("A") == 2
    assert (store.count(), store.count("A"), store.count("B")) == (1, 0, 1)
    assert [item.queue for item in store.list()] == ["B"]


def test_purging_everything_leaves_no_key_behind(
    store: RedisDeadLetterStore, redis_client: redis.Redis
) -> None:
    redis_client.set("unrelated", "1")
    store.put_many([letter("A"), letter("B"), letter("")])
    assert store.purge() == 3
    assert store.count() == 0
    assert redis_client.keys("{alicom:dlq}:*") == []
    assert redis_client.get("unrelated") == b"1"


def test_a_purge_larger_than_one_chunk_removes_everything(store: RedisDeadLetterStore) -> None:
    start = now_ms()
    store.put_many([letter("Q", dead_at_ms=start + i) for i in range(2500)])
    assert store.count() == 2500
    assert store.purge("Q") == 2500
    assert store.count() == 0


def test_entries_older_than_the_retention_are_trimmed_on_the_next_put(
    store: RedisDeadLetterStore, redis_client: redis.Redis
) -> None:
    old = letter("Q", dead_at_ms=now_ms() - 31 * DAY_MS)
    fresh = letter("Q")
    store.put_many([old, fresh])
    assert [item.id for item in store.list()] == [fresh.id]
    assert store.count() == store.count("Q") == 1
    assert store.get(old.id) is None
    old_id = old.id.encode()
    assert redis_client.zscore(store.all_key(), old_id) is None
    assert redis_client.zscore(store.queue_key("Q"), old_id) is None


def test_entries_expire_by_themselves_when_nothing_else_is_written(
    redis_client: redis.Redis,
) -> None:
    store = RedisDeadLetterStore(redis_client, DeadLetterSettings(retention_s=0.3))
    item = letter("Q")
    store.put(item)
    assert store.count() == 1
    guard = time.monotonic() + 30  # a hang guard, not a timing assertion
    while redis_client.exists(store.all_key(), store.queue_key("Q"), store.entry_key(item.id)):
        assert time.monotonic() < guard, "dead-letter keys never expired"
        time.sleep(0.02)
    assert store.count() == 0
    assert store.list() == []


def test_the_oldest_entries_go_first_beyond_max_entries(
    redis_client: redis.Redis,
) -> None:
    store = RedisDeadLetterStore(redis_client, DeadLetterSettings(max_entries=3))
    start = now_ms()
    letters = [letter("A" if i % 2 else "B", dead_at_ms=start + i) for i in range(5)]
    for item in letters:
        store.put(item)
    assert [item.id for item in store.list()] == [item.id for item in letters[:1:-1]]
    assert store.get(letters[0].id) is None
    assert store.get(letters[1].id) is None
    assert (store.count("A"), store.count("B")) == (1, 2)
    assert redis_client.zcard(store.queue_key("A")) == 1


def test_a_body_that_is_not_utf8_survives_byte_exact(
    store: RedisDeadLetterStore, redis_client: redis.Redis
) -> None:
    body = bytes(range(256)) + b"\xc3\x28\xff"
    item = letter(raw_body=body)
    assert item.raw_body_is_base64
    assert base64.b64decode(item.raw_body) == body
    store.put(item)
    assert redis_client.hget(store.entry_key(item.id), "raw_body") == body
    stored = store.get(item.id)
    assert stored is not None
    assert stored.body_bytes() == body
    assert stored == item


def test_a_utf8_push_body_reads_back_as_the_same_text(store: RedisDeadLetterStore) -> None:
    body = '{"phone_number":"13800138000","content":"退订 T","dest_code":"1234"}'
    item = letter("", raw_body=body)
    store.put(item)
    stored = store.get(item.id)
    assert stored is not None
    assert stored.raw_body == body
    assert not stored.raw_body_is_base64


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300))
def test_any_body_bytes_round_trip(store: RedisDeadLetterStore, body: bytes) -> None:
    item = letter(raw_body=body)
    store.put(item)
    stored = store.get(item.id)
    assert stored is not None
    assert stored.body_bytes() == body


def test_put_many_is_one_transaction(
    store: RedisDeadLetterStore, redis_client: redis.Redis
) -> None:
    store.put(letter())  # loads the trim script, so only the transaction is counted below
    multi, exec_ = command_calls(redis_client, "multi"), command_calls(redis_client, "exec")
    ids = store.put_many([letter("A"), letter("B"), letter("C")])
    assert command_calls(redis_client, "multi") - multi == 1
    assert command_calls(redis_client, "exec") - exec_ == 1
    assert all(store.get(letter_id) is not None for letter_id in ids)


def test_put_many_with_one_bad_letter_stores_none_of_them(
    store: RedisDeadLetterStore, redis_client: redis.Redis
) -> None:
    bad = replace(letter(), raw_body="not base64!", raw_body_is_base64=True)
    with pytest.raises(ValueError, match="base64"):
        store.put_many([letter("A"), bad, letter("B")])
    assert store.count() == 0
    assert redis_client.keys("{alicom:dlq}:*") == []


def test_a_client_that_decodes_responses_is_refused(redis_server: RedisServer) -> None:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    with pytest.raises(ConfigError, match="decode_responses"):
        RedisDeadLetterStore(client, DeadLetterSettings())
    client.close()


@pytest.mark.parametrize("bad", [{"key_prefix": ""}, {"retention_s": 0}, {"max_entries": 0}])
def test_invalid_dead_letter_settings_are_a_config_error(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DeadLetterSettings(**bad)  # type: ignore[arg-type]  # values are from a fixed valid set


@pytest.fixture
def restored_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's server, brought back up whatever the test did to it."""
    yield redis_server
    if redis_server.process.poll() is not None:
        redis_server.start_again()


def test_redis_going_away_is_a_transient_error_and_its_return_works_again(
    restored_server: RedisServer, redis_client: redis.Redis, store: RedisDeadLetterStore
) -> None:
    store.put(letter())
    restored_server.stop()
    with pytest.raises(TransientError, match="dead-letter put"):
        store.put(letter())
    with pytest.raises(TransientError, match="dead-letter list"):
        store.list()
    restored_server.start_again()
    item = letter()
    store.put(item)  # the fresh server has no scripts: redis-py loads them again
    assert store.get(item.id) == item


@pytest.fixture
def config(redis_server: RedisServer, tmp_path: Path) -> Path:
    """A configuration for the `dead-letters` command on the session's (emptied) Redis."""
    return config_with(tmp_path, redis_server)


def config_with(tmp_path: Path, redis_server: RedisServer,
                handlers: list[dict[str, Any]] | None = None) -> Path:
    """The `config` fixture's configuration, with `handlers`; empties the Redis."""
    redis_server.client().flushdb()
    return write_config(tmp_path / "c.toml", {"alicom": {"preset": "sandbox"},
                                              "redis": {"url": redis_server.url},
                                              "log": {"format": "json"}}, handlers or [])


def dead_letters_command(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", "dead-letters", "--config", str(config), *argv],
        capture_output=True, text=True, timeout=60, check=False)


def missing_line(letter_id: str) -> str:
    return (f"alicom-receipts dead-letters: no dead letter {letter_id!r} (replayed, purged or "
            "expired; `dead-letters list` shows those kept)")


def test_show_prints_a_letter_on_stdout_and_says_a_missing_one_on_stderr_with_exit_1(
        redis_server: RedisServer, config: Path) -> None:
    kept = letter()
    RedisDeadLetterStore(redis_server.client(), DeadLetterSettings()).put(kept)

    shown = dead_letters_command(config, "show", kept.id)
    missing = dead_letters_command(config, "show", "1700000000000-nosuch")

    assert (shown.returncode, json.loads(shown.stdout)["id"], shown.stderr) == (0, kept.id, "")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.splitlines() == [missing_line("1700000000000-nosuch")]


def test_replaying_ids_that_name_no_dead_letter_says_each_on_stderr_and_exits_1(
        redis_server: RedisServer, config: Path) -> None:
    store = RedisDeadLetterStore(redis_server.client(), DeadLetterSettings())
    store.put(letter())

    done = dead_letters_command(config, "replay", "gone-1", "gone-2")

    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [missing_line("gone-1"), missing_line("gone-2")]
    assert store.count() == 1  # the letter no ID named is left alone


def test_replaying_a_kept_and_a_missing_id_replays_the_kept_one_and_exits_1(
        redis_server: RedisServer, tmp_path: Path) -> None:
    applied = tmp_path / "applied.jsonl"
    config = config_with(tmp_path, redis_server,
                         [{"use": "jsonl", "options": {"path": str(applied)}}])
    store = RedisDeadLetterStore(redis_server.client(), DeadLetterSettings())
    kept = letter("", raw_body=json.dumps(report("360060905089790807")))  # a good receipt now
    store.put(kept)

    done = dead_letters_command(config, "replay", kept.id, "gone-1")

    assert done.returncode == 1
    assert missing_line("gone-1") in done.stderr.splitlines()
    replayed, total = done.stdout.splitlines()
    assert replayed.startswith(f"{kept.id}  applied (")
    assert total == "1 replayed, 0 still dead"
    assert store.get(kept.id) is None  # applied: its letter is removed
    [line] = applied.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["biz_id"] == "360060905089790807"


def test_replaying_all_of_an_empty_store_says_there_is_nothing_to_replay(config: Path) -> None:
    done = dead_letters_command(config, "replay", "--all")

    assert (done.returncode, done.stdout.strip()) == (0, "nothing to replay"), done.stderr


def test_replaying_through_a_handler_the_configuration_lacks_is_a_usage_error(
        redis_server: RedisServer, config: Path) -> None:
    store = RedisDeadLetterStore(redis_server.client(), DeadLetterSettings())
    store.put(letter())

    done = dead_letters_command(config, "replay", "--all", "--handler", "nosuch")

    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("alicom-receipts dead-letters: replay --handler: no handler named "
                           "nosuch in the configuration\n")
    assert store.count() == 1  # nothing replayed, nothing removed
