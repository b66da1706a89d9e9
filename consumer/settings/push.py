"""`[push]` settings: the HTTP push receiver (consumer.sources.push.server) and its worker
(consumer.sources.push.worker).

`PushSettings` validates itself (ConfigError, one message listing every problem).
`load_push_config` returns the common `Settings` and the `PushSettings` of one file: until
`consumer.settings` carries a `push` section it takes the `[push]` table and the
`ALICOM_RECEIPTS_PUSH_<KEY>` variables out itself and hands the rest to `load_settings`.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from consumer.errors import ConfigError
from consumer.settings import Settings, load_settings

# tomllib is 3.11+; the package depends on tomli for 3.10 (same API).
tomllib: Any = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")

PLATFORM_DEADLINE_S = 0.7
"""The platform gives up on a push answered later than this."""

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_SECRET = re.compile(r"[A-Za-z0-9._~-]{16,}")


@dataclass(frozen=True)
class PushSettings:
    """The `[push]` section: the receiver, its Redis stream, and the push-worker.

    `listen` is "host:port"; `path_prefix` the URL path before the type ("/alicom" gives
    `/alicom/SmsReport`, or `/alicom/<secret>/SmsReport` when `secret` is set). `allowlist`
    lists CIDRs allowed to push (empty: anyone), checked when a connection is made;
    `trusted_proxies` lists CIDRs of reverse proxies whose X-Forwarded-For is believed. A
    body holding more than `max_elements` receipts is refused (413). At most
    `max_connections` connections are open (the oldest idle one is closed for a new one);
    a client has `read_timeout_s` to send a request's header, and again its body.
    `stream_maxlen` is where the receiver starts refusing (503), never a trim. Worker:
    `consumers` threads, each reading `batch_size` entries per XREADGROUP, blocking up to
    `block_s`; an entry pending for `reclaim_idle_s` (a crashed consumer's, or one whose
    retry backoff ended) is re-taken with XAUTOCLAIM, and retry backoffs are capped at it.
    """

    listen: str = "127.0.0.1:8080"
    path_prefix: str = "/alicom"
    secret: str | None = field(default=None, repr=False)
    allowlist: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    max_elements: int = 1000
    max_connections: int = 4096
    read_timeout_s: float = 10.0
    stream: str = "alicom:push"
    stream_maxlen: int = 1_000_000
    handoff_timeout_s: float = 0.5
    group: str = "alicom-push"
    consumers: int = 2
    batch_size: int = 64
    block_s: float = 1.0
    reclaim_idle_s: float = 300.0

    def __post_init__(self) -> None:
        problems = [p for p in (*_server_problems(self), *_worker_problems(self)) if p]
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":8080" means all

    def networks(self, which: str) -> tuple[IpNetwork, ...]:
        """The parsed CIDRs of `allowlist` or `trusted_proxies`."""
        return tuple(ipaddress.ip_network(c, strict=False) for c in getattr(self, which))


def _server_problems(s: PushSettings) -> list[str]:
    _host, sep, port = s.listen.rpartition(":")
    out = ["" if sep and port.isdigit() and int(port) < 65536 else
           "push.listen must be host:port, got %r" % s.listen]
    if not s.path_prefix.startswith("/") or (s.path_prefix.endswith("/") and s.path_prefix != "/"):
        out.append("push.path_prefix must start with / and not end with one, got %r"
                   % s.path_prefix)
    if s.secret is not None and not _SECRET.fullmatch(s.secret):
        out.append("push.secret must be at least 16 of A-Z a-z 0-9 . _ ~ - (it is a URL path "
                   "segment)")
    for name in ("allowlist", "trusted_proxies"):
        for cidr in getattr(s, name):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                out.append("push.%s: %r is not an address or CIDR" % (name, cidr))
    if not 0 < s.handoff_timeout_s < PLATFORM_DEADLINE_S:
        out.append("push.handoff_timeout_s must be > 0 and < 0.7 (the platform waits 700 ms), "
                   "got %r" % s.handoff_timeout_s)
    if s.max_body_bytes < 1024 or s.stream_maxlen < 1 or not s.stream:
        out.append("push.max_body_bytes must be >= 1024, stream_maxlen >= 1, stream non-empty")
    if not (1 <= s.max_elements <= 100_000 and 1 <= s.max_connections <= 1_000_000):
        out.append("push.max_elements must be 1-100000 and push.max_connections 1-1000000, "
                   "got %r and %r" % (s.max_elements, s.max_connections))
    if not 0.1 <= s.read_timeout_s <= 300:
        out.append("push.read_timeout_s must be 0.1-300, got %r" % s.read_timeout_s)
    return out


def _worker_problems(s: PushSettings) -> list[str]:
    ok = s.consumers >= 1 and s.batch_size >= 1 and 0 < s.block_s <= 30 and s.reclaim_idle_s >= 1
    return ["" if ok and s.group else "push.consumers and batch_size must be >= 1, block_s "
            "0-30, reclaim_idle_s >= 1, group non-empty"]


def load_push_config(path: str | None, env: Mapping[str, str]) -> tuple[Settings, PushSettings]:
    """The common settings and the `[push]` section (with ALICOM_RECEIPTS_PUSH_* overrides).

    Interim: while `Settings` has no `push` field, the `[push]` table and its environment
    variables are taken out here before the rest goes through `load_settings`.
    """
    if "push" in {f.name for f in fields(Settings)}:
        settings = load_settings(path, env)
        return settings, getattr(settings, "push")  # noqa: B009 - absent until integrated
    text = _read_text(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("%s is not valid TOML: %s" % (path, exc)) from exc
    table = raw.get("push", {})
    if not isinstance(table, dict):
        raise ConfigError("push must be a table ([push])")
    values: dict[str, Any] = dict(table)
    rest_env = {}
    for var, value in env.items():
        if var.startswith(_PUSH_ENV):
            values[var[len(_PUSH_ENV):].lower()] = _EnvValue(value)
        else:
            rest_env[var] = value
    push = PushSettings(**_typed(values))
    stripped = _PUSH_TABLE.sub("", text)
    if "push" in tomllib.loads(stripped):
        raise ConfigError("write the push settings as a [push] table")
    with tempfile.TemporaryDirectory(prefix="alicom-push-") as tmp:
        copy = os.path.join(tmp, "config.toml")
        with open(copy, "w", encoding="utf-8") as fh:
            fh.write(stripped)
        settings = load_settings(copy if path is not None else None, rest_env)
    return dataclasses.replace(settings, source=path or settings.source), push


_PUSH_ENV = "ALICOM_RECEIPTS_PUSH_"
# The [push] header up to the next table header (or the end of the file).
_PUSH_TABLE = re.compile(r"(?ms)^[ \t]*\[[ \t]*push[ \t]*\][^\n]*\n.*?(?=^[ \t]*\[|\Z)")


class _EnvValue(str):
    """A value from the environment: typed from its text."""

    __slots__ = ()


def _read_text(path: str | None) -> str:
    if path is None:
        return ""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError("cannot read the configuration file %s: %s"
                          % (path, exc.strerror or exc)) from exc


def _typed(values: Mapping[str, Any]) -> dict[str, Any]:
    """`[push]` values typed by PushSettings' fields; unknown keys are a ConfigError."""
    hints = {f.name: str(f.type) for f in fields(PushSettings)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        hint = hints.get(key)
        if hint is None:
            raise ConfigError("push.%s is not a setting (known: %s)"
                              % (key, ", ".join(hints)))
        try:
            out[key] = _coerce(value, hint)
        except ValueError as exc:
            raise ConfigError("push.%s: %s" % (key, exc)) from None
    return out


def _coerce(value: Any, hint: str) -> Any:
    if isinstance(value, _EnvValue):
        text = str(value).strip()
        if hint.startswith("tuple"):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if hint == "str | None":
            return None if text.lower() in ("", "none") else text
        return {"int": int, "float": float}.get(hint, str)(text)
    if hint.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return tuple(value)
    expected = {"int": (int,), "float": (int, float)}.get(hint, (str,))
    if not isinstance(value, expected) or isinstance(value, bool):
        raise ValueError("expected %s, got %s" % (hint, type(value).__name__))  # noqa: TRY004 - reported as a config problem
    return float(value) if hint == "float" else value
