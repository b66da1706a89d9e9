"""What a `redis.url` names: one server, a Sentinel-watched primary, or a Redis Cluster.

Accepted forms (every command and every Redis-backed handler reads the same ones):

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path?db=N``:
  one server, handed to redis-py's ``from_url`` as they are;
* ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`` and
  ``rediss+sentinel://...``: the primary of ``service_name`` as the listed sentinels report it,
  followed across failovers. The password is the data nodes'; the sentinels' own password, if
  they have one, is the ``sentinel_password`` query option (``?sentinel_password=...``);
* ``redis+cluster://[[user]:password@]host:port[,host:port...]`` and ``rediss+cluster://...``:
  a Redis Cluster (or Tair in direct-connection mode); the hosts are start-up nodes, the rest
  is discovered.

With TLS (``rediss+...``) the servers' certificates are checked against the system's CAs, or
the ones in the file the ``ssl_ca_certs`` query option names (``?ssl_ca_certs=/path/ca.pem``:
a managed Redis's own CA), for the data nodes and the sentinels alike.

Parsing is pure (nothing connects); `parse_redis_url` raises a one-line `ConfigError` that
never contains the password.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

from consumer.errors import ConfigError

__all__ = ["RedisTarget", "parse_redis_url", "redis_url_problems"]

Mode = Literal["standalone", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("standalone", False), "rediss": ("standalone", True), "unix": ("standalone", False),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT = {"sentinel": 26379, "cluster": 6379}
_QUERY_OPTIONS = frozenset({"sentinel_password", "ssl_ca_certs"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


@dataclass(frozen=True)
class RedisTarget:
    """A parsed `redis.url`. ``url`` is the original text (for standalone ``from_url``);
    passwords are kept out of ``repr``."""

    mode: Mode
    tls: bool
    url: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl_ca_certs: str | None = None


class _UrlProblemError(ValueError):
    """What is wrong with a URL, worded to follow its name ("redis.url has ...")."""


def redis_url_problems(url: str) -> list[str]:
    """The problem with `url` as one line (empty when it is valid), for settings validation."""
    try:
        _parse(url)
    except _UrlProblemError as exc:
        return [f"redis.url {exc}"]
    return []


def parse_redis_url(url: str, name: str = "redis url") -> RedisTarget:
    """Parses `url` (forms in the module docstring); raises a one-line ConfigError starting
    with `name` that says what is wrong and never quotes a password."""
    try:
        return _parse(url)
    except _UrlProblemError as exc:
        raise ConfigError(f"{name} {exc}") from None


def _parse(url: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        # Without "://" nothing of the text is quoted: a mistyped "redis:/:pw@host" would
        # show its password.
        got = (f"{scheme[:20] + sep + _host_text(url)!r}" if sep and _SCHEME.fullmatch(scheme)
               else "no known scheme://")
        raise _UrlProblemError("must start with " + ", ".join(f"{s}://" for s in _SCHEMES)
                               + f", got {got}")
    mode, tls = _SCHEMES[scheme.lower()]
    if mode == "standalone":
        return _standalone(url, tls)
    rest, _, query = rest.partition("?")  # first: a query's file path holds "/"
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    nodes = tuple(_node(part, _DEFAULT_PORT[mode]) for part in hosts.split(","))
    options = _options(query)
    ca_certs = options.get("ssl_ca_certs")
    if ca_certs is not None and not tls:
        raise _UrlProblemError(f"has ssl_ca_certs, but {scheme}:// is not TLS (rediss+...)")
    segments = [urllib.parse.unquote(s) for s in path.split("/") if s]
    if mode == "sentinel":
        if not segments:
            raise _UrlProblemError("needs the service name as its path "
                           "(redis+sentinel://host:26379/mymaster[/db])")
        if len(segments) > 2:
            raise _UrlProblemError("has a path other than /service_name[/db]")
        db = _db(segments[1]) if len(segments) == 2 else 0
        return RedisTarget(mode, tls, url, nodes, segments[0], db, username, password,
                           options.get("sentinel_password"), ca_certs)
    if segments:
        raise _UrlProblemError("has a path, but a cluster has only db 0 (no /db)")
    return RedisTarget(mode, tls, url, nodes, username=username, password=password,
                       ssl_ca_certs=ca_certs)


def _standalone(url: str, tls: bool) -> RedisTarget:
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises ValueError on a non-numeric port
    except ValueError:
        host = _host_text(url)
        raise _UrlProblemError(f"has a port that is not a number (host {host!r})") from None
    if parts.scheme.lower() != "unix" and not parts.hostname:
        raise _UrlProblemError("has no host")
    return RedisTarget("standalone", tls, url)


def _host_text(url: str) -> str:
    """The host part of `url` without user info, for an error message."""
    netloc = url.partition("://")[2].partition("/")[0]
    return netloc.rpartition("@")[2][:80]


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    return (urllib.parse.unquote(user) or None,
            urllib.parse.unquote(password) if colon else None)


def _node(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [IPv6]:port
        host, _, after = text[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _UrlProblemError("has an empty host in its host list")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _UrlProblemError(f"has a port that is not a number 1-65535 (host {host!r}, "
                       f"port {port_text[:20]!r})")
    return host, int(port_text)


def _options(query: str) -> dict[str, str]:
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - _QUERY_OPTIONS)
    if unknown:
        raise _UrlProblemError(f"has unknown option(s) {', '.join(unknown)[:80]} "
                       f"(known: {', '.join(sorted(_QUERY_OPTIONS))})")
    return options


def _db(text: str) -> int:
    if not text.isdigit():
        raise _UrlProblemError(f"has a db that is not a number ({text[:20]!r})")
    return int(text)
