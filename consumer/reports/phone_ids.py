"""How a phone number is stored by the number list and the send tasks: as itself, or hashed.

The stores never put a number into a key name: numbers are hash fields and sorted-set
members, so a lookup by number (`HGET`, `ZMSCORE`) works either way. With hashing on
(`hash_numbers = true` in the handlers' options, `[tracking] hash_numbers`, `--hash-numbers`
for the commands), what is stored is `h:` + 32 hex digits of a keyed blake2b of the number,
keyed with the deployment's dedup key secret (`consumer.keys.key_secret`: the systemd
credential `dedup_key_secret` or `$ALICOM_RECEIPTS_DEDUP_KEY_SECRET`), so a lookup by number
still works (hash it, look it up) while Redis holds no readable list of numbers and nobody
without the secret can try all numbers against it; listings and exports then show those
hashes, and say so. Every process reading or writing the same stores must agree.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from consumer.errors import ConfigError
from consumer.keys import ENV_SECRET, SECRET_FILE, key_secret

__all__ = ["PhoneIds", "normalise_phone", "phone_ids"]

_PERSON = b"alicom-phone"  # blake2b personalisation: not the same hash as the dedup keys


_CN_PREFIXES = ("+86", "0086", "86")


def normalise_phone(phone: str) -> str:
    """A mainland number without a +86 / 0086 / 86 prefix; other numbers as given (stripped)."""
    phone = phone.strip()
    # Receipts carry 11 bare digits: that case costs one length test (it runs per receipt).
    if len(phone) > 11 and phone.startswith(_CN_PREFIXES):
        for prefix in _CN_PREFIXES:
            if phone.startswith(prefix) and len(phone) - len(prefix) == 11:
                return phone[len(prefix):]
    return phone


@dataclass(frozen=True)
class PhoneIds:
    """Maps a phone number to what the stores keep for it (thread-safe, immutable)."""

    key: bytes | None = field(default=None, repr=False)
    #: The same mapping as calling the instance, as a plain function: what the handlers'
    #: per-receipt loops call (a call of the instance costs a frame more).
    of: Callable[[str], str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.key is not None and not self.key:
            raise ConfigError("the phone hash key must not be empty")
        object.__setattr__(self, "of", normalise_phone if self.key is None else self._hashed)

    @property
    def hashed(self) -> bool:
        """True when stored numbers are keyed hashes (listings show hashes then)."""
        return self.key is not None

    def __call__(self, phone: str) -> str:
        """The stored form of `phone` (+86 / 0086 / 86 prefixes removed first)."""
        return self.of(phone)

    def _hashed(self, phone: str) -> str:
        return "h:" + hashlib.blake2b(normalise_phone(phone).encode(), digest_size=16,
                                      key=cast(bytes, self.key)[:64], person=_PERSON).hexdigest()


def phone_ids(hash_numbers: bool, env: Mapping[str, str] | None = None) -> PhoneIds:
    """Plain numbers, or (`hash_numbers`) keyed hashes with the dedup key secret of `env`
    (default: this process's environment); ConfigError when hashing is asked without one."""
    if not hash_numbers:
        return PhoneIds()
    secret = key_secret(os.environ if env is None else env)
    if not secret:
        raise ConfigError("hash_numbers needs the dedup key secret: the credential %s or $%s"
                          % (SECRET_FILE, ENV_SECRET))
    return PhoneIds(secret)
