"""Running many Lua script calls in one round trip, on a single server or a Redis Cluster.

Every script in this code base follows the rule Tair's cluster proxy enforces: it touches
only keys passed in KEYS, each written literally as ``KEYS[n]`` (never through a variable or
an expression), and the keys of one call share one slot (one hash tag). That makes each call
routable by its first key; `run_calls` then sends all calls of a batch:

* on a single server (or a Sentinel-watched primary): in one pipeline, one round trip;
* on a cluster: grouped by the node that owns each call's slot, one pipeline per node, so a
  batch costs one round trip per node it touches. redis-py's own cluster pipeline refuses
  EVALSHA, hence the grouping here, on the node connections the cluster client keeps.

A call that a node answers with a redirection (MOVED/ASK during a resharding or failover),
TRYAGAIN/CLUSTERDOWN, READONLY, or that a node's lost connection left without an answer, is
sent again on its own through the cluster client, which follows redirections and re-reads the
slot map. Other errors come back in the result list, one per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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

from consumer.clients.redis_client import RedisClient

__all__ = ["ScriptCall", "run_calls"]

# Answers that mean "this node no longer holds the slot (or is between roles)": retried alone.
_REROUTE = (MovedError, AskError, TryAgainError, ClusterDownError, ReadOnlyError,
            redis.ConnectionError, redis.TimeoutError)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One call of a registered script; ``keys`` share one slot (the first one routes it)."""

    script: Script
    keys: Sequence[str]
    args: Sequence[Any] = ()


def run_calls(client: RedisClient, calls: Sequence[ScriptCall]) -> list[Any]:
    """The answer of every call, in order: the script's result, or the exception Redis
    answered that call with (the other calls still ran). An empty list costs nothing; a
    connection failure that retrying cannot get past raises `redis.RedisError`."""
    if not calls:
        return []
    if isinstance(client, RedisCluster):
        return _on_cluster(client, calls)
    replies = _evalsha(client, calls)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:  # Redis restarted or flushed its scripts: load them, run those calls again
        for script in {id(calls[i].script): calls[i].script for i in missing}.values():
            script.sha = client.script_load(script.script)
        for index, reply in zip(missing, _evalsha(client, [calls[i] for i in missing]),
                                strict=True):
            replies[index] = reply
    return replies


def _evalsha(client: redis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """The calls as plain EVALSHA in one pipeline. (A redis-py `Script` called on a pipeline
    makes `execute()` send SCRIPT EXISTS for its scripts first: a round trip per batch.)"""
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
    return list(pipe.execute(raise_on_error=False))


def _on_cluster(client: RedisCluster, calls: Sequence[ScriptCall]) -> list[Any]:
    groups: dict[str, tuple[ClusterNode, list[int]]] = {}
    for index, call in enumerate(calls):
        node = client.get_node_from_key(call.keys[0])  # type: ignore[no-untyped-call]
        groups.setdefault(node.name, (node, []))[1].append(index)
    results: list[Any] = [None] * len(calls)
    for node, indexes in groups.values():
        pipe = client.get_redis_connection(node).pipeline(transaction=False)
        for index in indexes:
            call = calls[index]
            call.script(keys=list(call.keys), args=list(call.args), client=pipe)
        try:
            replies: list[Any] = list(pipe.execute(raise_on_error=False))
        except _REROUTE as exc:  # the node went away: each call finds its new owner
            replies = [exc] * len(indexes)
        for index, reply in zip(indexes, replies, strict=True):
            results[index] = _alone(calls[index]) if isinstance(reply, _REROUTE) else reply
    return results


def _alone(call: ScriptCall) -> Any:
    """One call through the cluster client (its script's registered client): redirections
    followed, the slot map refreshed, retried by its retry policy; its error returned."""
    try:
        return call.script(keys=list(call.keys), args=list(call.args))
    except redis.ResponseError as exc:
        return exc
