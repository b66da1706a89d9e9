"""Shared state of one sandbox process: its settings, its clock, and the parts that use them.

The sandbox is a local stand-in for Alibaba Cloud MNS (API 2015-06-06) plus the Dybaseapi
token API, on one loopback port. Every part receives a `SandboxContext`; nothing reads the
environment at import time (the CLI in `alicom_sandbox.server.main` does that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from alicom_sandbox.clock import Clock
from alicom_sandbox.fakes import MESSAGE_TYPES
from alicom_sandbox.nonces import NonceCache
from alicom_sandbox.sms_records import DysmsSettings, DysmsState

if TYPE_CHECKING:
    from alicom_sandbox.accounts import CredentialStore
    from alicom_sandbox.engine import QueueEngine
    from alicom_sandbox.faults import Faults


# The documented local default AccessKey. It is only ever valid against the sandbox, so
# printing it at start is allowed (the CLI never prints a secret other than this one).
DEFAULT_ACCESS_KEY_ID = "LTAIsandboxAccessKey"
DEFAULT_ACCESS_KEY_SECRET = "sandbox-secret-not-for-production"  # noqa: S105 - public local default

# Alibaba's account that owns every Alicom receipt queue on the real service.
ALICOM_ACCOUNT_ID = "1943695596114318"

MNS_API_VERSION = "2015-06-06"


def queue_name_for(account_id: str, message_type: str) -> str:
    """The Alicom queue name for one message type: `Alicom-Queue-<account>-<MessageType>`."""
    return f"Alicom-Queue-{account_id}-{message_type}"


def default_queue_names(account_id: str = ALICOM_ACCOUNT_ID) -> tuple[str, ...]:
    """One Alicom queue per known message type, in `fakes.MESSAGE_TYPES` order."""
    return tuple(queue_name_for(account_id, t) for t in MESSAGE_TYPES)


def message_type_of_queue(queue_name: str) -> str | None:
    """The `<MessageType>` suffix of an Alicom queue name, or None for any other name.

    `Alicom-Queue-<digits>-<Type>` -> `<Type>`; used to scope temporary credentials.
    """
    prefix = "Alicom-Queue-"
    if not queue_name.startswith(prefix):
        return None
    account, sep, message_type = queue_name[len(prefix) :].partition("-")
    if not sep or not account.isdigit() or not message_type:
        return None
    return message_type


@dataclass(frozen=True, kw_only=True)
class SandboxConfig:
    """Start-up settings of one sandbox process (faults live in `faults.FaultSettings`)."""

    host: str = "127.0.0.1"
    port: int = 8765
    root_access_key_id: str = DEFAULT_ACCESS_KEY_ID
    root_access_key_secret: str = field(default=DEFAULT_ACCESS_KEY_SECRET, repr=False)
    account_id: str = ALICOM_ACCOUNT_ID
    # Lifetime of the temporary credentials the token API hands out; the admin API can change
    # it at run time through `SandboxContext.token_lifetime_s`.
    token_lifetime_s: float = 3600.0
    # MNS refuses a request whose `Date` header is further than this from server time.
    date_window_s: float = 900.0
    default_queues: tuple[str, ...] = field(default_factory=default_queue_names)
    # Queue attribute defaults, as on real MNS.
    visibility_timeout_s: int = 30
    message_retention_s: int = 345600  # 4 days
    polling_wait_s: int = 0
    delay_s: int = 0
    maximum_message_size_bytes: int = 65536


@dataclass
class SandboxContext:
    """Everything a request handler of the sandbox needs; one per process.

    `token_lifetime_s` starts as `config.token_lifetime_s` and is what the token API must use
    when it issues a credential (the admin API changes it at run time). `nonces`: the token
    API's recently seen signature nonces; `dysms`: the sending side's settings and records.
    """

    config: SandboxConfig
    clock: Clock
    accounts: CredentialStore
    engine: QueueEngine
    faults: Faults
    token_lifetime_s: float = -1.0
    nonces: NonceCache = field(default_factory=NonceCache)
    dysms: DysmsState = field(default_factory=lambda: DysmsState(DysmsSettings()))

    def __post_init__(self) -> None:
        if self.token_lifetime_s < 0:
            self.token_lifetime_s = self.config.token_lifetime_s
