"""The `[push]` section: the HTTP push receiver (consumer.sources.push.server) and its worker
(consumer.sources.push.worker). Loaded with every other section by `load_settings`
(`Settings.push`)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from consumer.errors import ConfigError
from consumer.settings.schema import Section, number, parse_address

PLATFORM_DEADLINE_S = 0.7
"""The platform gives up on a push answered later than this."""

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_SECRET = re.compile(r"[A-Za-z0-9._~-]{16,}")


@dataclass(frozen=True)
class PushSettings(Section):
    """The `[push]` section: the receiver, its Redis stream, and the push-worker.

    `listen` is "host:port" (port 0: any free port); `path_prefix` the URL path before the
    type ("/alicom" gives `/alicom/SmsReport`, or `/alicom/<secret>/SmsReport` when `secret`
    is set; the secret is at least 16 of A-Z a-z 0-9 . _ ~ -, since it is a path segment).
    `allowlist` lists CIDRs allowed to push (empty: anyone), checked when a connection is
    made; `trusted_proxies` lists CIDRs of reverse proxies whose X-Forwarded-For is believed.
    A body holding more than `max_elements` receipts is refused (413). At most
    `max_connections` connections are open (the oldest idle one is closed for a new one); a
    client has `read_timeout_s` to send a request's header, and again its body.
    `stream_maxlen` is where the receiver starts refusing (503), never a trim. Worker:
    `consumers` threads, each reading `batch_size` entries per XREADGROUP, blocking up to
    `block_s`; an entry pending for `reclaim_idle_s` (a crashed consumer's, or one whose
    retry backoff ended) is re-taken with XAUTOCLAIM, and retry backoffs are capped at it.
    `allow_volatile`: let the server start on a Redis without AOF (a push answered 200 is
    then lost if Redis crashes or restarts before its next snapshot).
    """

    SECTION = "push"
    listen: str = "127.0.0.1:8080"
    path_prefix: str = "/alicom"
    secret: str | None = field(default=None, repr=False)
    allowlist: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = number(1024 * 1024, 1024, 64 * 1024 * 1024)
    max_elements: int = number(1000, 1, 100_000)
    max_connections: int = number(4096, 1, 1_000_000)
    read_timeout_s: float = number(10.0, 0.1, 300)
    stream: str = "alicom:push"
    stream_maxlen: int = number(1_000_000, 1, 1_000_000_000)
    handoff_timeout_s: float = number(0.5, 0, PLATFORM_DEADLINE_S, low_open=True,
                                      high_open=True, why="the platform waits 700 ms")
    group: str = "alicom-push"
    consumers: int = number(2, 1, 256)
    batch_size: int = number(64, 1, 10_000)
    block_s: float = number(1.0, 0, 30, low_open=True)
    reclaim_idle_s: float = number(300.0, 1, 86_400)
    allow_volatile: bool = False

    def rules(self) -> list[str]:
        out: list[str] = []
        try:
            parse_address(self.listen, "push.listen", min_port=0)
        except ConfigError as exc:
            out.append(str(exc))
        if not self.path_prefix.startswith("/") or (
                self.path_prefix.endswith("/") and self.path_prefix != "/"):
            out.append("push.path_prefix must start with / and not end with one, got %r"
                       % self.path_prefix)
        if self.secret is not None and not _SECRET.fullmatch(self.secret):
            out.append("push.secret must be at least 16 of A-Z a-z 0-9 . _ ~ - (it is a URL "
                       "path segment)")
        for name in ("allowlist", "trusted_proxies"):
            for cidr in getattr(self, name):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    out.append("push.%s: %r is not an address or CIDR" % (name, cidr))
        out.extend("push.%s must not be empty" % name
                   for name in ("stream", "group") if not getattr(self, name))
        return out

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_address(self.listen, "push.listen", min_port=0)

    def networks(self, which: str) -> tuple[IpNetwork, ...]:
        """The parsed CIDRs of `allowlist` or `trusted_proxies`."""
        return tuple(ipaddress.ip_network(c, strict=False) for c in getattr(self, which))
