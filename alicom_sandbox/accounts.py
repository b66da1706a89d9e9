"""AccessKeys the sandbox accepts: one long-lived root key and STS-like temporary ones.

The root key plays the platform (Alibaba itself): it may create queues and publish
receipts. A temporary credential is what Dybaseapi `QueryTokenForMnsQueue` hands to a
customer: an `STS.`-prefixed id, a secret, a `SecurityToken` that must travel in the
`security-token` header, an expiry, and a scope of one MessageType (it may only touch the
queue `Alicom-Queue-<account>-<MessageType>`).

The store lives inside the sandbox's single asyncio thread; it is not locked.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field

from alicom_sandbox.clock import Clock

# Expired temporary credentials are kept this long so that a late request gets the
# "expired" answer instead of "unknown key"; after that they are forgotten.
_KEEP_EXPIRED_S = 3600.0
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"


@dataclass(frozen=True)
class Credential:
    """One AccessKey. `security_token`, `expires_at` and `message_type` are None for root."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # epoch seconds on the sandbox clock
    message_type: str | None = None

    @property
    def is_temporary(self) -> bool:
        return self.security_token is not None

    def expired(self, now: float) -> bool:
        """True once the sandbox clock has reached `expires_at` (never for the root key)."""
        return self.expires_at is not None and now >= self.expires_at


def _random_text(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


class CredentialStore:
    """The AccessKeys known to the sandbox, looked up by AccessKeyId."""

    def __init__(self, root_id: str, root_secret: str, clock: Clock) -> None:
        self._clock = clock
        self._root = Credential(access_key_id=root_id, access_key_secret=root_secret)
        self._temporary: dict[str, Credential] = {}

    def root(self) -> Credential:
        return self._root

    def issue_temporary(self, message_type: str, lifetime_s: float) -> Credential:
        """A fresh random credential for one MessageType, valid `lifetime_s` from now.

        Each call gives a new id, secret and token; earlier ones stay valid until they expire
        (as on the real token API, where two callers may hold different live tokens).
        """
        now = self._clock.now()
        self._forget_expired(now)
        # The token looks like an STS token (a long base64 text starting with "CAIS") so that
        # header size and handling resemble the real thing.
        token = "CAIS" + base64.b64encode(secrets.token_bytes(180)).decode("ascii")
        credential = Credential(
            access_key_id="STS." + _random_text(24),
            access_key_secret=_random_text(44),
            security_token=token,
            expires_at=now + lifetime_s,
            message_type=message_type,
        )
        self._temporary[credential.access_key_id] = credential
        return credential

    def lookup(self, access_key_id: str) -> Credential | None:
        """The credential with this id, expired ones included (the caller checks expiry)."""
        if access_key_id == self._root.access_key_id:
            return self._root
        return self._temporary.get(access_key_id)

    def _forget_expired(self, now: float) -> None:
        horizon = now - _KEEP_EXPIRED_S
        stale = [
            key
            for key, cred in self._temporary.items()
            if cred.expires_at is not None and cred.expires_at < horizon
        ]
        for key in stale:
            del self._temporary[key]
