"""The sandbox's clock: epoch time as the sandbox server sees it (the real clock plus a skew).

Its own module so that the parts holding per-sandbox state (credentials, queues) can use it
without importing `alicom_sandbox.context`, which holds them all.
"""

from __future__ import annotations

import time


class Clock:
    """Epoch time as the sandbox server sees it: the real clock plus an injectable skew.

    A positive skew makes the server run ahead of its clients (their `Date` headers look
    stale). The skew also moves the engine's message times, exactly as a server with a wrong
    clock would.
    """

    def __init__(self, skew_s: float = 0.0) -> None:
        self._skew_s = skew_s

    def now(self) -> float:
        """Epoch seconds including the skew."""
        return time.time() + self._skew_s

    def now_ms(self) -> int:
        """Epoch milliseconds including the skew (MNS reports times in epoch ms)."""
        return int((time.time() + self._skew_s) * 1000)

    @property
    def skew_s(self) -> float:
        return self._skew_s

    def set_skew(self, seconds: float) -> None:
        self._skew_s = float(seconds)
