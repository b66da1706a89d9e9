"""How a phone number is stored by the number list and the send tasks: as itself, or hashed.

The stores never put a number into a key name: numbers are hash fields and sorted-set
members, so a lookup by number (`HGET`, `ZMSCORE`) works either way. With a hash key set,
what is stored is `h:` + the first 32 hex digits of HMAC-SHA256(key, number), so a lookup
by number still works (hash it, look it up) while Redis holds no readable list of numbers;
listings and exports then show those hashes, and say so.

The key comes from a file (`phone_hash_key_file`, e.g. a systemd credential), never from the
configuration itself. Every process that reads or writes the same stores (workers, the
sending code's `SendTracker`, the commands, the dashboard) must use the same key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from consumer.errors import ConfigError

__all__ = ["PhoneIds", "normalise_phone", "phone_ids_from_file"]

_MIN_KEY_BYTES = 16


def normalise_phone(phone: str) -> str:
    """A mainland number without a +86 / 0086 / 86 prefix; other numbers as given (stripped)."""
    phone = phone.strip()
    for prefix in ("+86", "0086", "86"):
        if phone.startswith(prefix) and len(phone) - len(prefix) == 11:
            return phone[len(prefix):]
    return phone


@dataclass(frozen=True)
class PhoneIds:
    """Maps a phone number to what the stores keep for it (thread-safe, immutable)."""

    key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.key is not None and len(self.key) < _MIN_KEY_BYTES:
            raise ConfigError("the phone hash key must be at least %d bytes" % _MIN_KEY_BYTES)

    @property
    def hashed(self) -> bool:
        """True when stored numbers are keyed hashes (listings show hashes then)."""
        return self.key is not None

    def __call__(self, phone: str) -> str:
        """The stored form of `phone` (+86 / 0086 / 86 prefixes removed first)."""
        bare = normalise_phone(phone)
        if self.key is None:
            return bare
        return "h:" + hmac.new(self.key, bare.encode(), hashlib.sha256).hexdigest()[:32]


def phone_ids_from_file(path: str | None) -> PhoneIds:
    """Plain numbers without a path; else hashing with the file's bytes (stripped) as key."""
    if not path:
        return PhoneIds()
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError("phone_hash_key_file %s cannot be read (%s)"
                          % (path, exc.strerror or type(exc).__name__)) from exc
    return PhoneIds(key)
