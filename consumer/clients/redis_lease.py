"""A Redis lease: at most one holder of a name at a time, across hosts (e.g. `reconcile`).

`hold(client, key, ttl_s)` is a context manager giving a `Lease` when the key was free
(``SET key <holder> NX PX ttl``) and None when another holder has it; while held, a
background thread renews it every third of `ttl_s` (compare-and-PEXPIRE on the holder
token), and leaving releases it (compare-and-DEL), so a crashed holder blocks the name for
`ttl_s` at most. If renewing fails (Redis away longer than the TTL, or the key taken over),
`Lease.lost` is set and logged: the holder may finish (the guarded work must stay safe to run
twice, as reconcile is through dedup), it only loses the exclusivity.

The value names the holder (host, pid, start time: no secret) so the one turned away can say
who runs. Single-key scripts with KEYS[1] only: legal on a cluster and through Tair's proxy.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis
import structlog

from consumer.clients.redis_client import RedisClient

__all__ = ["Lease", "hold", "holder_of"]

log = structlog.get_logger("alicom_receipts.lease")

# KEYS[1] the lease. ARGV: our holder token, ttl ms. 1 when renewed, 0 when not ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] the lease. ARGV: our holder token. 1 when released, 0 when not ours (any more).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass
class Lease:
    """A held lease; `lost` is set when renewing it failed."""

    key: str
    holder: str
    lost: threading.Event = field(default_factory=threading.Event)


def holder_of(client: RedisClient, key: str) -> str | None:
    """Who holds `key` now ("host pid=N since=<iso time> <id>"), None when nobody."""
    value = client.get(key)
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@contextmanager
def hold(client: RedisClient, key: str, ttl_s: float) -> Iterator[Lease | None]:
    """The lease on `key` for the `with` block, or None when someone else holds it."""
    ttl_ms = max(1000, int(ttl_s * 1000))
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    holder = f"{socket.gethostname()} pid={os.getpid()} since={since} {uuid.uuid4().hex[:8]}"
    if not client.set(key, holder, nx=True, px=ttl_ms):
        yield None
        return
    lease = Lease(key, holder)
    renew = client.register_script(_RENEW)
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(ttl_ms / 3000):
            try:
                renewed = renew(keys=[key], args=[holder, ttl_ms])
            except redis.RedisError as exc:
                log.warning("lease_renew_failed", key=key, error=type(exc).__name__)
                continue  # the TTL still runs; try again next time
            if not renewed:
                lease.lost.set()
                log.error("lease_lost", key=key, note="another holder may run now")
                return

    keeper = threading.Thread(target=keep, name="lease", daemon=True)
    keeper.start()
    try:
        yield lease
    finally:
        stop.set()
        keeper.join(5)
        try:
            client.register_script(_RELEASE)(keys=[key], args=[holder])
        except redis.RedisError as exc:  # it expires by itself within the TTL
            log.warning("lease_release_failed", key=key, error=type(exc).__name__)
