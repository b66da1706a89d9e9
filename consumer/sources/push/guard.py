"""Connections to the push receiver, guarded before any byte of a request is read.

The platform wants every push answered within 700 ms; a client that opens connections and
sends nothing (or a header a byte at a time) must not be able to make it wait. aiohttp alone
reads a request before anything of ours runs, keeps a silent connection for an hour, and
accepts until the process runs out of file descriptors (then asyncio stops accepting for a
second at a time: real pushes time out). So every connection passes through `ConnectionGuard`:

- a peer outside the allowlist is dropped on connect (unless it is a trusted proxy, whose
  X-Forwarded-For the request middleware still checks);
- at most `max_connections` are open; a new one past the cap closes the oldest connection
  that is not handling a request (one that never sent a whole header, or an idle keep-alive),
  and when every open connection is handling one, the new one is dropped instead;
- the read timeouts themselves (a header within the keep-alive timeout, a body within
  `read_timeout_s`) are aiohttp's and the request handler's (consumer.sources.push.server).

`effective_max_connections` keeps the cap under the process's file-descriptor limit, which it
first raises to the hard limit (systemd's default soft limit is 1,024).
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, cast

import structlog

from consumer.settings.push import IpNetwork

log = structlog.get_logger("alicom_receipts.push")

#: How many connections asyncio accepts per event-loop turn (it is also the listen backlog).
ACCEPT_BACKLOG = 128
#: Descriptors kept free of connections: Redis, the log, the listening socket, imports; and
#: room for four turns of accepts, because a connection's descriptor is taken when asyncio
#: accepts it, two turns before the guard sees it, and an evicted one is released a turn
#: after: without this room the process hits its limit and asyncio stops accepting for 1 s.
FD_RESERVE = 64 + 4 * ACCEPT_BACKLOG


def within(address: str, networks: Sequence[IpNetwork]) -> bool:
    """True when `address` is an IP address inside one of `networks`."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def effective_max_connections(wanted: int) -> int:
    """`wanted`, lowered to fit the file-descriptor limit (after raising the soft limit to the
    hard one); logs a warning when it had to lower it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + FD_RESERVE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # the soft limit stays: the cap below accounts for it
    fitting = max(1, soft - FD_RESERVE)
    if wanted > fitting:
        log.warning("push_connection_cap_lowered", max_connections=wanted, using=fitting,
                    open_files_limit=soft, fix="raise LimitNOFILE (ulimit -n)")
        return fitting
    return wanted


class ConnectionGuard:
    """Admits, counts and evicts connections; one per listening socket (one event loop)."""

    def __init__(self, max_connections: int, allow: Sequence[IpNetwork],
                 proxies: Sequence[IpNetwork]) -> None:
        self.max_connections = max_connections
        self._allow = tuple(allow)
        self._proxies = tuple(proxies)
        self._open: OrderedDict[_Guarded, None] = OrderedDict()  # oldest first
        self._busy: set[asyncio.BaseTransport] = set()
        self.refused = 0  # dropped on connect: outside the allowlist, or no room
        self.evicted = 0  # closed to make room for a newer connection

    @property
    def open_count(self) -> int:
        return len(self._open)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` that guards `factory`'s protocols."""
        return lambda: _Guarded(self, factory)

    def busy(self, transport: asyncio.BaseTransport | None, flag: bool) -> None:
        """Marks the connection of `transport` as handling a request (not evictable) or not."""
        if transport is None:
            return
        if flag:
            self._busy.add(transport)
        else:
            self._busy.discard(transport)

    def admit(self, conn: _Guarded, transport: asyncio.BaseTransport) -> bool:
        """Decides on a new connection; False when it must be dropped."""
        peer = _peer_host(transport)
        if self._allow and not within(peer, self._allow) and not within(peer, self._proxies):
            self.refused += 1
            log.warning("push_refused_source", remote=peer, on="connect")
            return False
        if len(self._open) >= self.max_connections and not self._evict_one():
            self.refused += 1
            log.warning("push_connection_refused", remote=peer, open=len(self._open),
                        reason="every connection is handling a request")
            return False
        self._open[conn] = None
        return True

    def closed(self, conn: _Guarded, transport: asyncio.BaseTransport | None) -> None:
        self._open.pop(conn, None)
        if transport is not None:
            self._busy.discard(transport)

    def _evict_one(self) -> bool:
        for conn in self._open:
            if conn.transport not in self._busy:
                del self._open[conn]
                self.evicted += 1
                conn.evict()
                return True
        return False


def _peer_host(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class _Guarded(asyncio.Protocol):
    """Forwards to aiohttp's protocol once the guard admitted the connection."""

    def __init__(self, guard: ConnectionGuard,
                 factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: Any = None  # aiohttp's RequestHandler, once admitted
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP server's: a Transport
        if not self._guard.admit(self, transport):
            self.transport.abort()
            return
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def evict(self) -> None:
        """Closes this connection to make room (its inner protocol sees connection_lost)."""
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self, self.transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None
