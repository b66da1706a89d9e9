"""Running many Lua script calls in one round trip, on a single server or a Redis Cluster.

Every script in this code base follows the rule Tair's cluster proxy enforces: it touches
only keys passed in KEYS, each written literally as ``KEYS[n]`` (never through a variable or
an expression), and the keys of one call share one slot (one hash tag). That makes each call
routable by its first key; `run_calls` then sends all calls of a batch:

* on a single server (or a Sentinel-watched primary): in one pipeline, one round trip;
* on a cluster: grouped by the node that owns each call's slot, one pipeline per node, so a
  batch costs one round trip per node it touches. redis-py's own cluster pipeline refuses
  EVALSHA, hence the grouping here, on the node connections the cluster client keeps.

The pipelines hold EVALSHA only: redis-py's script objects would add a SCRIPT EXISTS round
trip to every pipeline. A call answered NOSCRIPT (first use on a node, a restart, a
failover to a replica that never saw the script) gets its script loaded there and is sent
once more.

A call that a node answers with a redirection (MOVED/ASK during a resharding or failover),
TRYAGAIN/CLUSTERDOWN, READONLY, or that a node's lost connection left without an answer, is
sent again on its own through the cluster client, which follows redirections and re-reads the
slot map. Other errors come back in the result list, one per call.

`run_plans` sends the calls of several stores' writes (`ScriptPlan`: the calls and what to
make of their answers) in one `run_calls`, so that handlers sharing a Redis write a batch in
one round trip (the `bulk-sender` handler).

`run_transaction` is the same for a MULTI/EXEC block of plain commands (the dead letters'
writes): one round trip to the node that owns its slot, ending with the same WAIT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import hiredis
import orjson
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    TryAgainError,
)
from redis.utils import HIREDIS_AVAILABLE

from consumer.clients.redis_client import RedisClient, checked_out

__all__ = ["NotReplicatedError", "Replication", "ScriptCall", "ScriptPlan", "json_arg",
           "raise_errors", "replication", "run_calls", "run_plans", "run_transaction"]

_T = TypeVar("_T")

# Answers that mean "this node no longer holds the slot (or is between roles)": retried alone.
_REROUTE = (MovedError, AskError, TryAgainError, ClusterDownError, ReadOnlyError,
            redis.ConnectionError, redis.TimeoutError)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One call of a registered script; ``keys`` share one slot (the first one routes it)."""

    script: Script
    keys: Sequence[str]
    args: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class ScriptPlan(Generic[_T]):
    """A store's write split in two: the `calls` to send, and `finish`, given their answers
    in order (an error answer is an exception in its place), raising what went wrong or
    returning the result; it may make further round trips of its own (a fallback)."""

    calls: Sequence[ScriptCall]
    finish: Callable[[list[Any]], _T]


@dataclass(frozen=True, slots=True)
class Replication:
    """WAIT for `replicas` replicas (at most `timeout_ms`) after a batch's writes."""

    replicas: int
    timeout_ms: int


def replication(replicas: int, timeout_s: float) -> Replication | None:
    """The WAIT of a `wait_replicas` setting (`[dedup]`, a handler option); None for 0."""
    return Replication(replicas, max(1, round(timeout_s * 1000))) if replicas > 0 else None


#: How a cluster proxy (Tair's) refuses a script whose keys lie in many slots, or that reads
#: its keys by index (`KEYS[i]`): the callers that send such batch scripts fall back to one
#: call per record (or group) from then on.
BATCH_REFUSED = re.compile(r"same slot|CROSSSLOT|KEYS array|for redis cluster", re.IGNORECASE)


class NotReplicatedError(redis.RedisError):
    """Fewer replicas than asked confirmed a batch's writes (they are on the primary)."""


def run_calls(client: RedisClient, calls: Sequence[ScriptCall],
              wait: Replication | None = None) -> list[Any]:
    """The answer of every call, in order: the script's result, or the exception Redis
    answered that call with (the other calls still ran). An empty list costs nothing; a
    connection failure that retrying cannot get past raises `redis.RedisError`.

    `wait`: each pipeline ends with WAIT (same connection, same round trip: WAIT counts the
    writes of its own connection); fewer replicas than asked, or a call that had to be
    rerouted on its own during a failover, raise `NotReplicatedError` after all calls ran."""
    if not calls:
        return []
    if isinstance(client, RedisCluster):
        return _on_cluster(client, calls, wait)
    return _on_one(client, calls, list(range(len(calls))), wait)


def run_plans(client: RedisClient, plans: Sequence[ScriptPlan[Any]]) -> list[Any]:
    """Every plan's calls in one `run_calls` (one round trip on a single server), then every
    plan's `finish` with its own answers, in order; their results. All the calls ran before
    any `finish`: each finish is called even when an earlier one raised, so that each store
    completes its part (a fallback round trip), and the first error is raised after them.
    A connection failure that retrying cannot get past raises `redis.RedisError`, no finish
    called."""
    replies = run_calls(client, [call for plan in plans for call in plan.calls])
    results: list[Any] = []
    first_error: Exception | None = None
    at = 0
    for plan in plans:
        mine, at = replies[at:at + len(plan.calls)], at + len(plan.calls)
        try:
            results.append(plan.finish(mine))
        except Exception as exc:  # noqa: BLE001 - raised below, once every store finished
            results.append(None)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results


def json_arg(rows: Sequence[Any]) -> bytes:
    """A batch's rows (lists and tuples of str and int) as one script argument, a JSON array
    the script reads with `cjson.decode`: one argument to pack instead of one per field
    (hiredis formats each argument's header with sprintf: some 10k instructions per receipt
    for the bulk handlers' rows)."""
    try:
        return orjson.dumps(rows)
    except orjson.JSONEncodeError:  # a lone surrogate in a text: written as '?'
        return json.dumps(rows, ensure_ascii=False).encode("utf-8", "replace")


def raise_errors(replies: Sequence[Any]) -> None:
    """The `finish` of a plan whose answers say nothing: raises the first error Redis
    answered with."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _on_one(target: redis.Redis, calls: Sequence[ScriptCall], indexes: list[int],
            wait: Replication | None = None) -> list[Any]:
    """`calls[i]` for i in `indexes` in one pipeline on one server: EVALSHA only, so one
    round trip (redis-py's own script handling adds a SCRIPT EXISTS round trip per
    pipeline); scripts the server does not know (NOSCRIPT: first use, a restart, a
    failover) are loaded and those calls sent once more."""
    replies = _pipelined(target, [calls[i] for i in indexes], wait)
    missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        for script in {id(calls[indexes[n]].script): calls[indexes[n]].script
                       for n in missing}.values():
            target.script_load(script.script)
        again = _pipelined(target, [calls[indexes[n]] for n in missing], wait)
        for n, reply in zip(missing, again, strict=True):
            replies[n] = reply
    return replies


def _pipelined(target: redis.Redis, calls: Sequence[ScriptCall],
               wait: Replication | None) -> list[Any]:
    """All the calls in one round trip (`_round_trip`), WAIT's answer checked."""
    replies = _round_trip(target, _commands(calls, range(len(calls)), wait))
    if wait is not None:
        _check_wait(replies.pop(), wait)
    return replies


def _round_trip(target: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """`commands` written at once on one pooled connection, then their replies read in
    order: what redis-py's `Pipeline.execute(raise_on_error=False)` does here (the
    connection's retry policy, so the commands must be safe to send twice; an error reply
    kept in its place), without its per-command bookkeeping, which cost more CPU per
    receipt than the rest of the claim."""
    pool = target.connection_pool
    connection = checked_out(pool)
    try:
        replies: list[Any] = connection.retry.call_with_retry(
            lambda: _exchange(connection, commands), lambda _error: connection.disconnect())
    except BaseException:  # replies may be left unread: never reuse the connection as is
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
    return replies


def run_transaction(client: RedisClient, key: str, commands: Sequence[tuple[Any, ...]],
                    wait: Replication | None = None) -> list[Any]:
    """`commands` (tuples of a command's words, every key in `key`'s slot) as one
    MULTI/EXEC on the node that owns `key`, followed by WAIT when `wait` is given (same
    connection, same round trip, as for `run_calls`); returns EXEC's replies.

    The commands must be idempotent: a lost connection sends the block again. A command
    refused while queued (READONLY, MOVED...) aborts the block and is raised; so is an
    error reply inside EXEC's answer. `NotReplicatedError` when fewer replicas than asked
    confirmed it, or when a cluster's slot had moved (the block then ran through redis-py's
    own cluster transaction, which follows the move and re-reads the slot map) and `wait`
    is set: the caller treats its writes as unconfirmed and sends them again."""
    block = [("MULTI",), *commands, ("EXEC",)]
    if not isinstance(client, RedisCluster):
        return _transaction(client, block, wait)
    node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    try:
        return _transaction(client.get_redis_connection(node), block, wait)
    except _REROUTE:
        with client.pipeline(transaction=True) as pipe:  # type: ignore[no-untyped-call]
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = pipe.execute()
    if wait is not None:
        raise NotReplicatedError("a transaction was rerouted during a failover: its "
                                 "replication is not confirmed")
    return replies


def _transaction(target: redis.Redis, block: list[tuple[Any, ...]],
                 wait: Replication | None) -> list[Any]:
    replies = _round_trip(target, block + ([("WAIT", wait.replicas, wait.timeout_ms)]
                                           if wait is not None else []))
    acked = replies.pop() if wait is not None else None
    result = replies.pop()
    queued_errors = [reply for reply in replies if isinstance(reply, Exception)]
    if queued_errors:
        raise queued_errors[0]  # the cause; EXEC answered EXECABORT
    if isinstance(result, Exception):
        raise result
    errors = [reply for reply in result if isinstance(reply, Exception)]
    if errors:
        raise errors[0]
    if wait is not None:
        _check_wait(acked, wait)
    return list(result)


def _commands(calls: Sequence[ScriptCall], indexes: Iterable[int],
              wait: Replication | None) -> list[tuple[Any, ...]]:
    commands: list[tuple[Any, ...]] = [
        ("EVALSHA", calls[i].script.sha, len(calls[i].keys), *calls[i].keys, *calls[i].args)
        for i in indexes]
    if wait is not None:
        commands.append(("WAIT", wait.replicas, wait.timeout_ms))
    return commands


def _exchange(connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    connection.send_packed_command(packed(connection, commands))
    return _read_replies(connection, len(commands))


def packed(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """The wire form of `commands` (a first word without spaces: EVALSHA, WAIT), as
    `connection.pack_commands` gives it. With hiredis (a dependency, and then redis-py's own
    packer) each command goes straight to `hiredis.pack_command`: the same bytes without
    redis-py's pass over every argument, which cost 3 us per call of a batch, 4 times
    hiredis's own; any other case (no hiredis, an argument type hiredis refuses) is left to
    redis-py."""
    if HIREDIS_AVAILABLE:
        try:
            return [b"".join([hiredis.pack_command(command) for command in commands])]
        except TypeError:
            pass
    chunks: list[Any] = connection.pack_commands(commands)
    return chunks


def _read_replies(connection: Any, count: int) -> list[Any]:
    """`count` replies, an error reply in its place: all are read, the connection stays
    in step."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


def _check_wait(acked: Any, wait: Replication) -> None:
    if isinstance(acked, Exception):  # e.g. the node is a replica now (a failover)
        raise NotReplicatedError(f"WAIT refused: {acked}")
    if int(acked) < wait.replicas:
        raise NotReplicatedError(f"WAIT: {acked} of {wait.replicas} replicas confirmed the "
                                 "writes within %d ms" % wait.timeout_ms)


def _on_cluster(client: RedisCluster, calls: Sequence[ScriptCall],
                wait: Replication | None) -> list[Any]:
    """Every node's pipeline is written before any answer is read, so a batch over three
    masters costs one round trip of wall time, not three."""
    groups: dict[str, tuple[ClusterNode, list[int]]] = {}
    for index, call in enumerate(calls):
        node = client.get_node_from_key(call.keys[0])  # type: ignore[no-untyped-call]
        groups.setdefault(node.name, (node, []))[1].append(index)
    sent = [_Sent.send(client.get_redis_connection(node), calls, indexes, wait)
            for node, indexes in groups.values()]
    results: list[Any] = [None] * len(calls)
    unconfirmed: NotReplicatedError | None = None
    for batch in sent:
        try:
            replies, short = batch.receive(calls, wait)
            unconfirmed = short or unconfirmed
        except _REROUTE as exc:  # the node went away: each call finds its new owner
            replies = [exc] * len(batch.indexes)
        # Even when WAIT failed: a call answered MOVED (the node is a replica now, and
        # refuses WAIT too) must go through the cluster client, whose slot map learns the
        # move from it; otherwise every later batch met the same stale map.
        for index, reply in zip(batch.indexes, replies, strict=True):
            if isinstance(reply, _REROUTE):
                results[index] = _alone(client, calls[index])
                if wait is not None:
                    unconfirmed = NotReplicatedError("a call was rerouted during a failover: "
                                                     "its replication is not confirmed")
            else:
                results[index] = reply
    if unconfirmed is not None:
        raise unconfirmed
    return results


@dataclass
class _Sent:
    """One node's pipeline, written on one of its connections, its answers not read yet."""

    target: redis.Redis
    indexes: list[int]
    connection: Any = None
    error: Exception | None = None
    count: int = 0

    @classmethod
    def send(cls, target: redis.Redis, calls: Sequence[ScriptCall], indexes: list[int],
             wait: Replication | None) -> _Sent:
        commands = _commands(calls, indexes, wait)
        connection = checked_out(target.connection_pool)
        try:
            connection.send_packed_command(packed(connection, commands))
        except _REROUTE as exc:
            connection.disconnect()
            target.connection_pool.release(connection)
            return cls(target, indexes, error=exc)
        return cls(target, indexes, connection, count=len(commands))

    def receive(self, calls: Sequence[ScriptCall], wait: Replication | None,
                ) -> tuple[list[Any], NotReplicatedError | None]:
        """The answers (as `_on_one` gives them: NOSCRIPT calls loaded and sent again), and
        the error of a WAIT short of replicas (the answers are kept: some may be MOVED)."""
        if self.error is not None:
            raise self.error
        try:
            replies = _read_replies(self.connection, self.count)
        except BaseException:
            self.connection.disconnect()
            raise
        finally:
            self.target.connection_pool.release(self.connection)
        short: NotReplicatedError | None = None
        try:
            if wait is not None:
                _check_wait(replies.pop(), wait)
            missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                again = _on_one(self.target, calls, [self.indexes[n] for n in missing], wait)
                for n, reply in zip(missing, again, strict=True):
                    replies[n] = reply
        except NotReplicatedError as exc:
            short = exc
        return replies, short


def _alone(client: RedisCluster, call: ScriptCall) -> Any:
    """One call through the cluster client the batch was routed with (not its script's
    registered client, which may be another of the same cluster: `run_plans`), so that its
    slot map learns a move: redirections followed, retried by its retry policy; its error
    returned."""
    try:
        return call.script(keys=list(call.keys), args=list(call.args), client=client)
    except redis.ResponseError as exc:
        return exc
