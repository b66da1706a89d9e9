"""One exception family for the whole daemon.

Adapters around the MNS SDK, the Tea SDKs and redis-py translate their errors into these
(`raise ... from exc`), so the pipeline only ever decides between *transient* (try again
later, with backoff) and *permanent* (no retry will help).
"""

from __future__ import annotations

#: Exit statuses of every command (the README's "Exit statuses"; consumer.cli.runner):
#: 1 the command failed (problems found, a dependency failed while it ran); 2 a usage or
#: configuration error, which restarting cannot fix (systemd units: RestartPreventExitStatus=2;
#: `run` stops instead of restarting such a worker); 3 a read-side command's Redis did not
#: answer (`stats`, `numbers`, `tasks`, `reviews`: their 1 is an answer); 75 (sysexits'
#: EX_TEMPFAIL) a temporary start-up failure (`StartupUnavailable`: the ECS metadata service
#: not answering yet, the listen port still taken), worth a restart after a while.
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNANSWERED = 3
EXIT_UNAVAILABLE = 75


class AlicomReceiptsError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AlicomReceiptsError):
    """The configuration is invalid; the message says which setting and why."""


class TransientError(AlicomReceiptsError):
    """A dependency failed in a way that may succeed on retry (network, 5xx, throttling)."""


class StartupUnavailable(TransientError):  # noqa: N818 - reads as the state it reports
    """Something the process needs to start is not available yet, though nothing is wrong
    with the configuration (exit status `EXIT_UNAVAILABLE`, restarted later)."""


class PermanentError(AlicomReceiptsError):
    """A failure that no retry will fix (bad request, missing queue, bad input)."""


class AuthError(TransientError):
    """Credentials were refused (the 403 family); refresh the token, then retry."""


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


def one_line(exc: BaseException, text: str | None = None) -> str:
    """`Type: message` of `exc` on a single line, whatever its text holds: the form an error
    takes as a retry or dead-letter reason, a one-line CLI message or a log field. `text`,
    when given, stands for the message (one already masked or cut to its useful part)."""
    return " ".join(f"{type(exc).__name__}: {exc if text is None else text}".split())


def clipped(text: str, limit: int = 300) -> str:
    """`text` on one line (each run of whitespace one space), cut to `limit` characters with
    "..." at the end: for a message that quotes another program's or library's text."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
