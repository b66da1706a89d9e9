"""One exception family for the whole daemon.

Adapters around the MNS SDK, the Tea SDKs and redis-py translate their errors into these
(`raise ... from exc`), so the pipeline only ever decides between *transient* (try again
later, with backoff) and *permanent* (no retry will help).
"""

from __future__ import annotations


class AlicomReceiptsError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AlicomReceiptsError):
    """The configuration is invalid; the message says which setting and why."""


class TransientError(AlicomReceiptsError):
    """A dependency failed in a way that may succeed on retry (network, 5xx, throttling)."""


class PermanentError(AlicomReceiptsError):
    """A failure that no retry will fix (bad request, missing queue, bad input)."""


class AuthError(TransientError):
    """Credentials were refused (the 403 family); refresh the token, then retry."""


class QueueEmpty(AlicomReceiptsError):  # noqa: N818 - a signal, not an error: MNS MessageNotExist
    """The queue had no message to give (MNS answers 404 MessageNotExist)."""


class DecodeError(PermanentError):
    """A message body cannot become a receipt; `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RetryLater(AlicomReceiptsError):  # noqa: N818 - raised by user handlers as a signal
    """Raised by a handler: this receipt could not be handled now; deliver it again later.

    `delay_s` overrides the backoff computed from the delivery count when given.
    """

    def __init__(self, reason: str = "", delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class PermanentFailure(AlicomReceiptsError):  # noqa: N818 - raised by user handlers as a signal
    """Raised by a handler: this receipt can never be handled; dead-letter it at once."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
