"""Fault injection for the sandbox: latency, 5xx answers, dropped connections, hung long polls.

Settings can be given at start (CLI flags) and changed at run time (admin API). A rate is a
probability per request in [0, 1]; a `*_next` count makes exactly the next N requests fail,
which lets a test provoke one failure without depending on chance.

The faults apply to MNS requests (everything under `/queues`); the admin API is never
faulted. The token API (`alicom_sandbox.dybase`) may call `Faults.decide` itself.
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
    HANG = "hang"  # never answer (only receive requests hang)


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

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "hang_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        for name in ("latency_ms", "error_next", "drop_next", "hang_next"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

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
            typed[name] = int(value) if name.endswith("_next") else float(value)
        return replace(self, **typed)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class Faults:
    """The live fault settings of one sandbox, and the dice that apply them.

    Not locked: it lives in the sandbox's single asyncio thread.
    """

    def __init__(self, settings: FaultSettings | None = None, seed: int | None = None) -> None:
        self._settings = settings or FaultSettings()
        # Not a security use: a seeded generator makes a faulty run reproducible.
        self._random = random.Random(seed)  # noqa: S311 - fault dice, not cryptography
        self.injected: dict[str, int] = {"latency": 0, "error": 0, "drop": 0, "hang": 0}

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

    def note_latency(self) -> None:
        self.injected["latency"] += 1

    def decide(self, *, can_hang: bool) -> FaultKind:
        """Roll the dice for one request; the `*_next` counters win over the rates."""
        s = self._settings
        if s.drop_next or s.error_next or (can_hang and s.hang_next):
            return self._take_next(can_hang=can_hang)
        if not (s.drop_rate or s.error_rate or (can_hang and s.hang_rate)):
            return FaultKind.NONE
        roll = self._random.random
        if s.drop_rate and roll() < s.drop_rate:
            return self._count(FaultKind.DROP)
        if s.error_rate and roll() < s.error_rate:
            return self._count(FaultKind.ERROR)
        if can_hang and s.hang_rate and roll() < s.hang_rate:
            return self._count(FaultKind.HANG)
        return FaultKind.NONE

    def error_status(self) -> int:
        """500 or 503, at random, for an ERROR fault."""
        return 500 if self._random.random() < 0.5 else 503

    def _take_next(self, *, can_hang: bool) -> FaultKind:
        s = self._settings
        if s.drop_next:
            self._settings = replace(s, drop_next=s.drop_next - 1)
            return self._count(FaultKind.DROP)
        if s.error_next:
            self._settings = replace(s, error_next=s.error_next - 1)
            return self._count(FaultKind.ERROR)
        if can_hang and s.hang_next:
            self._settings = replace(s, hang_next=s.hang_next - 1)
            return self._count(FaultKind.HANG)
        return FaultKind.NONE

    def _count(self, kind: FaultKind) -> FaultKind:
        self.injected[kind.value] += 1
        return kind
