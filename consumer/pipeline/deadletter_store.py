"""The dead-letter store in Redis (`consumer.pipeline.deadletter` is the value).

Layout under the hash-tagged ``key_prefix`` (default ``alicom:dlq:``, keys ``{alicom:dlq}:...``):

* ``e:<id>``: a hash per entry (the ``DeadLetter`` fields; the body as raw bytes), expiring by
  itself at ``dead_at_ms + retention`` so entries go away even if nothing is ever written again;
* ``all``: a sorted set of every id, scored by ``dead_at_ms``;
* ``q:<queue>``: the same per queue (``q:`` alone for HTTP push, whose queue is "").

Reads filter the indexes by retention, so an id whose hash has expired is never listed or
counted; such ids are trimmed on the next put and each index expires with its newest entry.

Every write that touches several keys is atomic: ``put_many`` is one MULTI/EXEC (entries,
indexes and the trim by retention and ``max_entries`` together), and so is every removal;
what a trim or removal drops is read just before (ids, and the queue each entry names), and
dropping is idempotent, so two writers racing do no harm. No Lua: every key is named by the
client, and ``key_prefix`` is hash-tagged (``{alicom:dlq}:``,
`consumer.clients.redis_client.hash_tagged`), so the whole family lives in one slot and the
transactions work on a Redis Cluster and through Tair's proxy as on one server.
"""

from __future__ import annotations

import binascii
import builtins
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, TypeAlias, cast

import redis

from consumer.clients.redis_client import RedisClient, hash_tagged, transient_from_redis
from consumer.clients.redis_scripts import Replication, run_transaction
from consumer.errors import ConfigError
from consumer.pipeline.deadletter import DeadLetter, body_text, new_dead_letter_id
from consumer.settings import DeadLetterSettings

__all__ = ["DeadLetterSettings", "RedisDeadLetterStore"]

# Removals per transaction when trimming or purging: bounds how long one call blocks Redis.
_CHUNK = 1000
_Commands: TypeAlias = "builtins.list[tuple[Any, ...]]"

_INT_FIELDS = frozenset(
    {"dequeue_count", "enqueue_time_ms", "first_dequeue_time_ms", "dead_at_ms"}
)
_TEXT_FIELDS = tuple(
    f.name for f in fields(DeadLetter)
    if f.name not in _INT_FIELDS
    and f.name not in {"raw_body", "raw_body_is_base64", "handlers"}
)


class RedisDeadLetterStore:
    """The dead-letter store; see the module docstring for the layout and guarantees.

    The client must return bytes (``decode_responses=False``, redis-py's default): bodies
    are stored byte-exact and may not be UTF-8. Errors from redis-py become TransientError.

    `wait` (`consumer.pipeline.dedup.replication_of`, from `[dedup] wait_replicas`): every
    put ends with WAIT in its round trip, and fewer replicas than asked is a TransientError,
    so the caller does not delete the message as if its letter were safe; a put sent again
    rewrites the same entry (a message's letter id is stable: `message_letter_id`).
    Removals are not waited for: one lost in a failover brings a letter back, loses none.
    """

    def __init__(self, client: RedisClient, settings: DeadLetterSettings,
                 wait: Replication | None = None) -> None:
        if client.get_encoder().decode_responses:
            raise ConfigError("the dead-letter store needs a Redis client with "
                              "decode_responses=False: bodies are kept as raw bytes")
        self._client = client
        self._settings = settings
        self._wait = wait
        self._prefix = hash_tagged(settings.key_prefix)
        self._all = self._prefix + "all"

    def all_key(self) -> str:
        return self._all

    def entry_key(self, letter_id: str) -> str:
        return f"{self._prefix}e:{letter_id}"

    def queue_key(self, queue: str) -> str:
        return f"{self._prefix}q:{queue}"

    def put(self, letter: DeadLetter) -> str:
        """Stores one dead letter; returns its id (assigned when ``letter.id`` is "")."""
        return self.put_many([letter])[0]

    def put_many(self, letters: Sequence[DeadLetter]) -> builtins.list[str]:
        """Stores all letters in one MULTI/EXEC, or none of them; returns their ids.

        Idempotent for letters with ids: a put sent again after an error (a WAIT short of
        replicas, a lost connection) overwrites the same entries.

        Every letter is validated and encoded before anything is sent, so a bad one (e.g. a
        ``raw_body_is_base64`` body that is not base64) stores nothing.
        """
        if not letters:
            return []
        prepared = [self._prepare(letter) for letter in letters]
        try:
            drop, skip = self._trim_plan([(p[0], p[1].dead_at_ms) for p in prepared])
            commands: _Commands = []
            for letter_id, letter, mapping in prepared:
                if letter_id in skip:
                    continue  # past retention, or beyond max_entries, already
                commands += self._put_commands(letter_id, letter, mapping)
            commands += self._drop_commands(drop)
            commands += self._index_upkeep({letter.queue for letter in letters})
            run_transaction(self._client, self._all, commands, self._wait)
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "dead-letter put", self._client) from exc
        return [letter_id for letter_id, _, _ in prepared]

    def list(
        self, limit: int = 50, offset: int = 0, queue: str | None = None
    ) -> builtins.list[DeadLetter]:
        """Live dead letters, newest first, optionally of one queue only."""
        if limit < 1 or offset < 0:
            raise ValueError(f"need limit >= 1 and offset >= 0, got {limit!r}, {offset!r}")
        index = self._all if queue is None else self.queue_key(queue)
        try:
            ids = cast("builtins.list[bytes]", self._client.zrevrangebyscore(
                index, "+inf", f"({self._cutoff_ms()}", start=offset, num=limit
            ))
            with self._client.pipeline(transaction=False) as pipe:
                for raw_id in ids:
                    pipe.hgetall(self.entry_key(raw_id.decode()))
                rows = cast("builtins.list[dict[bytes, bytes]]", pipe.execute())
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "dead-letter list", self._client) from exc
        # A hash can expire between the two calls; such an entry is simply not listed.
        return [_from_hash(row) for row in rows if row]

    def get(self, letter_id: str) -> DeadLetter | None:
        """The dead letter with this id, or None if it was removed, trimmed or expired."""
        try:
            row = cast("dict[bytes, bytes]", self._client.hgetall(self.entry_key(letter_id)))
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "dead-letter get", self._client) from exc
        return _from_hash(row) if row else None

    def remove(self, letter_id: str) -> bool:
        """Removes one entry (e.g. after a successful replay); False if it was not there."""
        return self._remove([letter_id], self._all) == 1

    def purge(self, queue: str | None = None) -> int:
        """Removes every entry (of one queue, or all); returns how many live entries went.

        Works in chunks of 1000 so a large purge never blocks Redis for long; an entry put
        while the purge runs may survive it.
        """
        index = self._all if queue is None else self.queue_key(queue)
        total = 0
        while True:
            try:
                ids = [raw.decode() for raw in cast(
                    "builtins.list[bytes]", self._client.zrange(index, 0, _CHUNK - 1))]
            except redis.RedisError as exc:
                raise transient_from_redis(exc, "dead-letter purge", self._client) from exc
            if not ids:
                return total
            total += self._remove(ids, index)

    def count(self, queue: str | None = None) -> int:
        """How many live dead letters there are (of one queue, or all)."""
        index = self._all if queue is None else self.queue_key(queue)
        try:
            return int(self._client.zcount(index, f"({self._cutoff_ms()}", "+inf"))
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "dead-letter count", self._client) from exc

    def _prepare(self, letter: DeadLetter) -> tuple[str, DeadLetter, dict[str, bytes | str]]:
        if not letter.id:
            letter = replace(letter, id=new_dead_letter_id(letter.dead_at_ms))
        try:
            body = letter.body_bytes()
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"dead letter {letter.id}: raw_body is flagged base64 but is "
                             "not valid base64") from exc
        mapping: dict[str, bytes | str] = {name: getattr(letter, name) for name in _TEXT_FIELDS}
        mapping.update({name: str(getattr(letter, name)) for name in _INT_FIELDS})
        mapping["raw_body"] = body
        if letter.handlers:
            mapping["handlers"] = json.dumps(list(letter.handlers), ensure_ascii=False)
        return letter.id, letter, mapping

    def _cutoff_ms(self) -> int:
        """Entries dead at or before this instant are past retention."""
        return int(time.time() * 1000) - self._settings.retention_ms

    def _trim_plan(self, new: builtins.list[tuple[str, int]],
                   ) -> tuple[dict[str, str | None], set[str]]:
        """What a put of `new` (id, dead_at_ms) must drop, read before its transaction:
        stored ids past retention or beyond `max_entries` (id -> its queue, None when its
        hash is gone), and new ids not to store at all (already past either limit).

        At most one chunk of each per put, like any trim, so a put never blocks Redis long.
        Two puts racing may plan the same drops: removal is idempotent.
        """
        cutoff = self._cutoff_ms()
        with self._client.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self._all, "-inf", cutoff, start=0, num=_CHUNK)
            pipe.zcard(self._all)
            expired_raw, stored = pipe.execute()
        expired = {raw.decode() for raw in expired_raw}
        skip = {letter_id for letter_id, at_ms in new if at_ms <= cutoff}
        excess = min(int(stored) - len(expired) + len(new) - len(skip)
                     - self._settings.max_entries, _CHUNK)
        if excess > 0:
            oldest = cast("builtins.list[tuple[bytes, float]]", self._client.zrange(
                self._all, 0, excess + len(expired) - 1, withscores=True))
            candidates = sorted(
                [(score, raw.decode(), False) for raw, score in oldest
                 if raw.decode() not in expired]
                + [(float(at), letter_id, True) for letter_id, at in new if letter_id not in skip])
            for _, letter_id, is_new in candidates[:excess]:
                (skip.add(letter_id) if is_new else expired.add(letter_id))
        return self._queues_of(expired), skip

    def _queues_of(self, ids: set[str] | builtins.list[str]) -> dict[str, str | None]:
        """id -> the queue its entry names (None when the entry hash is gone)."""
        ordered = list(ids)
        if not ordered:
            return {}
        with self._client.pipeline(transaction=False) as pipe:
            for letter_id in ordered:
                pipe.hget(self.entry_key(letter_id), "queue")
            queues = pipe.execute()
        return {letter_id: None if q is None else q.decode()
                for letter_id, q in zip(ordered, queues, strict=True)}

    def _put_commands(self, letter_id: str, letter: DeadLetter,
                      mapping: dict[str, bytes | str]) -> _Commands:
        entry = self.entry_key(letter_id)
        at_ms = letter.dead_at_ms + self._settings.retention_ms
        commands: _Commands = [
            ("HSET", entry, *[item for pair in mapping.items() for item in pair]),
            ("PEXPIREAT", entry, at_ms),
            ("ZADD", self._all, letter.dead_at_ms, letter_id),
            ("ZADD", self.queue_key(letter.queue), letter.dead_at_ms, letter_id)]
        # Each index lives as long as its newest entry: set when it has no expiry (NX),
        # pushed later only (GT), so an older letter never shortens it.
        for index in (self._all, self.queue_key(letter.queue)):
            commands += [("PEXPIREAT", index, at_ms, "NX"), ("PEXPIREAT", index, at_ms, "GT")]
        return commands

    def _drop_commands(self, drop: Mapping[str, str | None],
                       index: str | None = None) -> _Commands:
        """The removal of every id in `drop`: first one DEL per id (their replies say which
        entries were live), then the index updates."""
        commands: _Commands = [("DEL", self.entry_key(letter_id)) for letter_id in drop]
        for letter_id, queue in drop.items():
            commands.append(("ZREM", self._all, letter_id))
            if queue is not None:
                commands.append(("ZREM", self.queue_key(queue), letter_id))
            if index is not None:
                commands.append(("ZREM", index, letter_id))
        return commands

    def _index_upkeep(self, queues: set[str]) -> _Commands:
        """Per-queue indexes lose ids past retention (their hashes expired by themselves)."""
        return [("ZREMRANGEBYSCORE", self.queue_key(queue), "-inf", self._cutoff_ms())
                for queue in sorted(queues)]

    def _remove(self, ids: builtins.list[str], index: str) -> int:
        """Removes `ids` from every view in one transaction; how many live entries went."""
        try:
            drop = self._queues_of(ids)
            if not drop:
                return 0
            replies = run_transaction(self._client, self._all, self._drop_commands(
                drop, index if index != self._all else None))
        except redis.RedisError as exc:
            raise transient_from_redis(exc, "dead-letter remove", self._client) from exc
        return sum(1 for reply in replies[:len(drop)] if reply)


def _from_hash(row: Mapping[bytes, bytes]) -> DeadLetter:
    values = {key.decode(): value for key, value in row.items()}

    def text(name: str) -> str:
        return values[name].decode()

    def number(name: str) -> int:
        return int(values[name])

    body, is_base64 = body_text(values["raw_body"])
    return DeadLetter(
        id=text("id"), queue=text("queue"), message_type=text("message_type"),
        raw_body=body, reason=text("reason"), detail=text("detail"),
        message_id=text("message_id"), dequeue_count=number("dequeue_count"),
        enqueue_time_ms=number("enqueue_time_ms"),
        first_dequeue_time_ms=number("first_dequeue_time_ms"),
        dead_at_ms=number("dead_at_ms"), source=text("source"), raw_body_is_base64=is_base64,
        handlers=tuple(json.loads(values["handlers"])) if "handlers" in values else (),
    )
