"""The one Redis client factory: every command, source and Redis-backed handler connects here.

`connect(url, ...)` gives a synchronous client and `connect_async(url, ...)` an asyncio one
for the forms `consumer.redis_url` parses: one server (``redis://``, ``rediss://``,
``unix://``), the Sentinel-watched primary of a service (``redis+sentinel://``, followed across
failovers: redis-py asks the sentinels again whenever a connection to the old primary fails
or answers READONLY), or a Redis Cluster (``redis+cluster://``, slots discovered and followed
on MOVED/ASK).

Code that takes a client is typed `RedisClient`; what works on both a single server and a
cluster is the single-key commands, pipelines without transactions, and scripts and MULTI
blocks whose keys share one slot (`hash_tagged` prefixes make whole key families do so).

A bad URL is a one-line `ConfigError`; no error this module raises or logs contains a
password (`scrub`). A failed Redis call becomes the daemon's `TransientError`, scrubbed the
same way, through `transient_from_redis` (every Redis-backed store's one wrapping).
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
from collections.abc import Iterable
from typing import Any, TypeAlias, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
from redis.client import Pipeline
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from consumer.errors import ConfigError, StartupUnavailable, TransientError, one_line
from consumer.redis_url import RedisTarget, parse_redis_url

__all__ = [
    "AsyncRedisClient",
    "RedisClient",
    "RedisPipeline",
    "checked_out",
    "connect",
    "connect_async",
    "connect_at_start",
    "connect_option",
    "hash_tagged",
    "redis_error_text",
    "scrub",
    "transient_from_redis",
]

RedisClient: TypeAlias = redis.Redis | RedisCluster
RedisPipeline: TypeAlias = Pipeline | ClusterPipeline
AsyncRedisClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

_HASH_TAG = re.compile(r"\{[^{}]+\}")
_URL_CREDENTIALS = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def hash_tagged(prefix: str) -> str:
    """`prefix` with a Redis Cluster hash tag, so every key under it maps to one slot.

    A prefix that already holds a tag (``{x}``) is kept; otherwise its text without trailing
    separators goes into braces: ``alicom:dlq:`` -> ``{alicom:dlq}:``.
    """
    if _HASH_TAG.search(prefix):
        return prefix
    core = prefix.rstrip(":")
    return "{%s}%s" % (core, prefix[len(core):])


def scrub(text: str, url: str) -> str:
    """`text` without the passwords `url` carries (user info, sentinel_password) or any URL's
    user info: for error messages built from redis-py's exceptions."""
    try:
        target = parse_redis_url(url)
    except ConfigError:
        return _scrubbed(text, ())
    secrets = [target.password, target.sentinel_password]
    if target.mode == "standalone":
        import urllib.parse  # noqa: PLC0415 - only the standalone form keeps them in the URL

        try:
            parts = urllib.parse.urlsplit(url)
            secrets.append(parts.password)
            secrets += urllib.parse.parse_qs(parts.query).get("password", [])
        except ValueError:
            pass
    return _scrubbed(text, secrets)


def transient_from_redis(
    exc: redis.RedisError, operation: str, client: RedisClient
) -> TransientError:
    """A TransientError for a failed Redis call, with any credential scrubbed from the text.

    redis-py's messages name host and port only, but a server or proxy reply, or a future
    client version, could echo a URL or the password; this removes both (the client's own
    password and user name, any URL's user info) before the text can reach a log line.
    """
    return TransientError(f"redis {operation} failed: {redis_error_text(exc, client)}")


def redis_error_text(exc: BaseException, client: RedisClient) -> str:
    """`Type: message` of a failed call on `client`, on one line, with the client's own
    password and user name and any URL's user info masked: the one form every Redis error
    takes on its way to a log line, a retry reason or a dead letter."""
    if isinstance(exc, redis.ConnectionError) and isinstance(exc.__context__, BlockingIOError):
        # A socket on kernel timeouts (`checked_out`) ran out of time.
        exc = redis.TimeoutError("Timeout reading from or writing to socket")
    kwargs: dict[str, object] = client.get_connection_kwargs()
    secrets = [kwargs.get("password"), kwargs.get("username")]
    text = _scrubbed(str(exc), [s for s in secrets if isinstance(s, str)])
    return one_line(exc, text)


def _scrubbed(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with any URL's user info and every non-empty one of `secrets` masked."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def connect(url: str, *, socket_timeout_s: float, connect_timeout_s: float = 5.0,
            health_check_interval_s: int = 0, retry: Retry | None = None,
            decode_responses: bool = False) -> RedisClient:
    """A client for `url`. Nothing is sent until the first command, except for a cluster,
    whose slot map is read now (`redis.ConnectionError` if no start-up node answers)."""
    target = parse_redis_url(url)
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout_s, "socket_connect_timeout": connect_timeout_s,
        "decode_responses": decode_responses,
    }
    if retry is not None:
        common["retry"] = retry
    if target.mode == "standalone":
        try:
            return redis.Redis.from_url(url, health_check_interval=health_check_interval_s,
                                        **common)
        except ValueError as exc:  # its text may quote the URL: never pass it on
            raise ConfigError("redis url is not understood by redis-py (%s)"
                              % scrub(str(exc), url)) from None
    auth = _auth(target)
    if target.mode == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, common), **auth,
            **common)
        return cast("redis.Redis", sentinel.master_for(  # type: ignore[no-untyped-call]
            target.service_name, db=target.db, health_check_interval=health_check_interval_s))
    nodes = [ClusterNode(h, p) for h, p in target.nodes]  # type: ignore[no-untyped-call]
    try:
        return RedisCluster(startup_nodes=nodes,
                            health_check_interval=health_check_interval_s, **auth, **common)
    except RedisClusterException as exc:  # not a RedisError: callers catch those
        raise redis.ConnectionError("redis cluster: " + scrub(str(exc), url)) from None


def connect_at_start(url: str, *, socket_timeout_s: float, connect_timeout_s: float = 5.0,
                     health_check_interval_s: int = 0) -> RedisClient:
    """`connect` for a daemon starting (worker, push server and worker): a cluster none of
    whose start-up nodes answers (its slot map is read now) is `StartupUnavailable`: one
    line and exit 75, restarted later, never a traceback. (A single server or a Sentinel
    service is first reached by the first command, where the daemon's retries apply.)"""
    try:
        return connect(url, socket_timeout_s=socket_timeout_s,
                       connect_timeout_s=connect_timeout_s,
                       health_check_interval_s=health_check_interval_s)
    except redis.RedisError as exc:  # `connect` scrubbed its text of any password
        raise StartupUnavailable("Redis did not answer: %s" % one_line(exc, str(exc))) from None


def connect_option(owner: str, url: str, timeout_s: float) -> RedisClient:
    """A client for a handler's `url` option; a bad URL is a ConfigError naming `owner`, a
    cluster no start-up node of which answers `StartupUnavailable` (`connect_at_start`)."""
    try:
        return connect_at_start(url, socket_timeout_s=timeout_s, connect_timeout_s=timeout_s)
    except ConfigError as exc:
        raise ConfigError(f"{owner}: {exc}") from None


def connect_async(url: str, *, socket_timeout_s: float, connect_timeout_s: float = 5.0,
                  health_check_interval_s: int = 0,
                  retry: redis.asyncio.retry.Retry | None = None) -> AsyncRedisClient:
    """The asyncio twin of `connect`; a cluster's slot map is read on first use."""
    target = parse_redis_url(url)
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout_s, "socket_connect_timeout": connect_timeout_s,
    }
    if retry is not None:
        common["retry"] = retry
    if target.mode == "standalone":
        try:
            return redis.asyncio.Redis.from_url(
                url, health_check_interval=health_check_interval_s, **common)
        except ValueError as exc:
            raise ConfigError("redis url is not understood by redis-py (%s)"
                              % scrub(str(exc), url)) from None
    auth = _auth(target)
    if target.mode == "sentinel":
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, common), **auth,
            **common)
        return cast("redis.asyncio.Redis", sentinel.master_for(
            target.service_name, db=target.db, health_check_interval=health_check_interval_s))
    return redis.asyncio.cluster.RedisCluster(
        startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.nodes],
        health_check_interval=health_check_interval_s, **auth, **common)


def checked_out(pool: Any) -> Any:  # redis-py's pool and connection: partly untyped
    """A connection of `pool` (`pool.get_connection()`, returned by `pool.release`), its
    socket on kernel timeouts (set once per socket: `_kernel_timeouts`; a TLS socket, or a
    platform that refuses the options, keeps redis-py's): for code that writes and reads a
    connection itself (`consumer.clients.redis_scripts`).

    The socket keeps them while it lives, also for redis-py's own commands on it: each read
    or write then ends after the socket timeout, even one redis-py means to block for ever
    (a pub/sub `get_message(timeout=None)`: nothing in the daemon subscribes), and a large
    write's timeout counts per send(2), not for the whole write."""
    connection = pool.get_connection()
    sock = getattr(connection, "_sock", None)  # redis-py's connected socket
    if type(sock) is socket.socket and sock.gettimeout() is not None:
        # A platform that refuses them (e.g. a 32-bit timeval): redis-py's timeout stays.
        with contextlib.suppress(OSError, struct.error):
            _kernel_timeouts(sock, connection.socket_timeout)
    return connection


def _kernel_timeouts(sock: socket.socket, timeout_s: float) -> None:
    """`sock` in blocking mode, its `timeout_s` kept by the kernel (SO_RCVTIMEO, SO_SNDTIMEO).

    CPython implements a socket timeout as a poll(2) before every send and receive, and each
    of those system calls releases the GIL: in the worker, whose threads contend for it, a
    release can cost a context switch. In blocking mode an exchange is one send and one
    receive. A timeout then comes out of redis-py as a ConnectionError caused by
    BlockingIOError (EAGAIN), which `redis_error_text` words as the timeout it is; redis-py's
    retry policy retries both alike."""
    micros = max(1, round(timeout_s * 1_000_000))  # a zero timeval would wait for ever
    value = struct.pack("@ll", micros // 1_000_000, micros % 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    sock.settimeout(None)


def _auth(target: RedisTarget) -> dict[str, Any]:
    auth: dict[str, Any] = {"ssl": target.tls}
    if target.ssl_ca_certs:
        auth["ssl_ca_certs"] = target.ssl_ca_certs
    if target.username:
        auth["username"] = target.username
    if target.password is not None:
        auth["password"] = target.password
    return auth


def _sentinel_kwargs(target: RedisTarget, common: dict[str, Any]) -> dict[str, Any]:
    """The sentinels' own connection options: their password is not the data nodes'."""
    kwargs: dict[str, Any] = {
        "socket_timeout": common["socket_timeout"],
        "socket_connect_timeout": common["socket_connect_timeout"], "ssl": target.tls,
    }
    if target.ssl_ca_certs:
        kwargs["ssl_ca_certs"] = target.ssl_ca_certs
    if target.sentinel_password:
        kwargs["password"] = target.sentinel_password
    return kwargs
