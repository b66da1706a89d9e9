"""Signature nonces the token API has seen recently (one cache per sandbox, in its context)."""

from __future__ import annotations

from collections import OrderedDict

_NONCE_MAX_ENTRIES = 200_000


class NonceCache:
    """Signature nonces seen recently, with bounded memory.

    A nonce only has to be remembered while a request carrying it could still pass the date
    check, so entries expire after `keep_s`. Entries are kept in arrival order, which is also
    expiry order, so expiring is popping from the front. Past `max_entries` the oldest entry is
    dropped even if unexpired: memory stays bounded, at the price of accepting the replay of a
    nonce older than the newest `max_entries` ones (a flood no sandbox test produces).
    """

    def __init__(self, max_entries: int = _NONCE_MAX_ENTRIES) -> None:
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._max_entries = max_entries

    def check_and_record(self, nonce: str, now: float, keep_s: float) -> bool:
        """True if the nonce is fresh (and now recorded); False if it was already used."""
        while self._expiry:
            oldest, expires_at = next(iter(self._expiry.items()))
            if expires_at > now:
                break
            del self._expiry[oldest]
        if nonce in self._expiry:
            return False
        if len(self._expiry) >= self._max_entries:
            self._expiry.popitem(last=False)
        self._expiry[nonce] = now + keep_s
        return True

    def __len__(self) -> int:
        return len(self._expiry)
