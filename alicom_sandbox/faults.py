"""Fault injection for the sandbox: MNS latency, 5xx answers, dropped connections, hung long
polls (or, with `freeze_rate`, any MNS request: MNS frozen), a cap on concurrent long polls;
and token API latency, 5xx, throttling and hangs.

Settings can be given at start (CLI flags) and changed at run time (admin API). A rate is a
probability per request in [0, 1]; a `*_next` count makes exactly the next N requests fail,
which lets a test provoke one failure without depending on chance.

The MNS faults apply to MNS requests (everything under `/queues`); the `token_*` ones to the
token API (`QueryTokenForMnsQueue`, `alicom_sandbox.dybase`); the admin API is never faulted.
`max_long_polls` (0: no cap) is how many long polls one queue holds at once; past it a
receive is answered at once, as MNS answers it: with what the queue holds now, else 404
MessageNotExist (MNS's long-polling guide: "the server will not hold the requests" and
returns "message does not exist"); a client that loops on it without backing off floods.
"""

from __future__ import annotations

import enum
import random
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


class FaultKind(enum.Enum):
    """What to do with one request."""

    NONE = "none"
    ERROR = "error"  # answer InternalError 500 or ServiceUnavailable 503
    DROP = "drop"  # close the connection without answering
    HANG = "hang"  # never answer (only receive requests and token requests hang)
    THROTTLE = "throttle"  # the token API's flow control (Throttling.User)


@dataclass(frozen=True)
class FaultSettings:
    """The fault knobs; all zero means a well-behaved server."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    error_next: int = 0
    drop_next: int = 0
    hang_next: int = 0
    freeze_rate: float = 0.0  # any MNS request (not only a receive) hangs: MNS frozen
    max_long_polls: int = 0
    token_latency_ms: float = 0.0
    token_error_rate: float = 0.0
    token_throttle_rate: float = 0.0
    token_hang_rate: float = 0.0
    token_error_next: int = 0
    token_throttle_next: int = 0
    token_hang_next: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be between 0 and 1, got {value!r}")
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"{f.name} must not be negative, got {value!r}")

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    def updated(self, changes: dict[str, Any]) -> FaultSettings:
        """A copy with `changes` applied; unknown names or bad values raise ValueError."""
        unknown = set(changes) - self.field_names()
        if unknown:
            raise ValueError("unknown fault setting(s): " + ", ".join(sorted(unknown)))
        typed: dict[str, Any] = {}
        for name, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number")
            typed[name] = int(value) if _is_count(name) else float(value)
        return replace(self, **typed)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _is_count(name: str) -> bool:
    return name.endswith("_next") or name == "max_long_polls"


# Each side's faults in the order they are tried: (setting prefix, kind).
_MNS_ORDER = (("drop", FaultKind.DROP), ("error", FaultKind.ERROR), ("hang", FaultKind.HANG))
_TOKEN_ORDER = (("token_error", FaultKind.ERROR), ("token_throttle", FaultKind.THROTTLE),
                ("token_hang", FaultKind.HANG))


class Faults:
    """The live fault settings of one sandbox, and the dice that apply them.

    Not locked: it lives in the sandbox's single asyncio thread. `injected` counts what was
    done, by name ("error", "token_throttle", "long_poll_refused", ...).
    """

    def __init__(self, settings: FaultSettings | None = None, seed: int | None = None) -> None:
        self._settings = settings or FaultSettings()
        # Not a security use: a seeded generator makes a faulty run reproducible.
        self._random = random.Random(seed)  # noqa: S311 - fault dice, not cryptography
        self.injected: dict[str, int] = dict.fromkeys(
            ("latency", "error", "drop", "hang", "long_poll_refused", "token_latency",
             "token_error", "token_throttle", "token_hang"), 0)

    @property
    def settings(self) -> FaultSettings:
        return self._settings

    def update(self, changes: dict[str, Any]) -> FaultSettings:
        self._settings = self._settings.updated(changes)
        return self._settings

    def reset(self) -> None:
        """All faults off and the injected-fault counters back to zero."""
        self._settings = FaultSettings()
        self.injected = dict.fromkeys(self.injected, 0)

    @property
    def latency_s(self) -> float:
        return self._settings.latency_ms / 1000.0

    @property
    def token_latency_s(self) -> float:
        return self._settings.token_latency_ms / 1000.0

    def note(self, what: str) -> None:
        """Counts one injected fault the caller applied itself (latency, a refused poll)."""
        self.injected[what] += 1

    def note_latency(self) -> None:
        self.note("latency")

    def decide(self, *, can_hang: bool) -> FaultKind:
        """Roll the dice for one MNS request; the `*_next` counters win over the rates."""
        freeze = self._settings.freeze_rate
        if freeze and self._random.random() < freeze:
            return self._count("hang", FaultKind.HANG)
        order = _MNS_ORDER if can_hang else _MNS_ORDER[:2]
        return self._decide(order)

    def decide_token(self) -> FaultKind:
        """Roll the dice for one token API request; the `token_*_next` counters win."""
        return self._decide(_TOKEN_ORDER)

    def error_status(self) -> int:
        """500 or 503, at random, for an ERROR fault."""
        return 500 if self._random.random() < 0.5 else 503

    def _decide(self, order: tuple[tuple[str, FaultKind], ...]) -> FaultKind:
        s = self._settings
        for name, kind in order:
            left = getattr(s, name + "_next")
            if left:
                self._settings = replace(s, **{name + "_next": left - 1})
                return self._count(name, kind)
        for name, kind in order:
            rate = getattr(s, name + "_rate")
            if rate and self._random.random() < rate:
                return self._count(name, kind)
        return FaultKind.NONE

    def _count(self, name: str, kind: FaultKind) -> FaultKind:
        self.injected[name] += 1
        return kind
