"""The building blocks of every settings section: documented number ranges, one-line problems.

A section is a frozen dataclass deriving from `Section`. Each numeric field is declared with
`number(default, low, high)`, which records its documented range in the field's metadata;
constructing the section then refuses any value that is not finite or lies outside it, and
runs the section's own `rules()` (settings that tie two of its fields together) once every
field is in range. Problems are one line each, named "<section>.<key>", and raised together
as one `InvalidSettings`.
"""

from __future__ import annotations

import difflib
import math
import re
import urllib.parse
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from consumer.errors import ConfigError

_T = TypeVar("_T")


class InvalidSettings(ConfigError):  # noqa: N818 - reads as what it is; the base says Error
    """The configuration has one or more problems; `problems` lists them, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        if len(problems) == 1:
            text = problems[0]
        else:
            text = f"{len(problems)} problems in the configuration:\n  - " + "\n  - ".join(problems)
        super().__init__(text)


@dataclass(frozen=True)
class Range:
    """Where a number may lie: `low` to `high`, each end included unless marked open."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def text(self) -> str:
        """The range as the docs and the messages write it: "1-30", "> 0 and <= 600"."""
        lo, hi = _num(self.low), _num(self.high)
        if not self.low_open and not self.high_open:
            return f"{lo}-{hi}"
        return f"{'>' if self.low_open else '>='} {lo} and {'<' if self.high_open else '<='} {hi}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def number(default: _T, low: float, high: float, *, low_open: bool = False,
           high_open: bool = False, why: str = "") -> _T:
    """A numeric field with its documented range (None, for an optional field, always
    passes); `why` explains a range that is not obvious, in the refusal's message."""
    value: _T = field(default=default,
                      metadata={"range": Range(low, high, low_open, high_open, why)})
    return value


def number_problems(section: Any, name: str) -> list[str]:
    """One line for each numeric field of `section` that is not finite or out of its range."""
    out: list[str] = []
    for f in fields(section):
        rule = f.metadata.get("range")
        value = getattr(section, f.name)
        if not isinstance(rule, Range) or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.append(f"{name}.{f.name} must be a number, got {value!r}")
        elif not rule.admits(value):
            why = f" ({rule.why})" if rule.why else ""
            out.append(f"{name}.{f.name} must be {rule.text()}{why}, got {value!r}")
    return out


class Section:
    """Base of the section dataclasses: validates on construction (see the module docstring).

    `SECTION` is the table's name in the file ("poll" for `[poll]`).
    """

    __slots__ = ()
    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        problems = number_problems(self, self.SECTION)
        if not problems:
            problems = self.rules()
        if problems:
            raise InvalidSettings(problems)

    def rules(self) -> list[str]:
        """Rules that tie this section's fields together; one line per broken rule."""
        return []


def did_you_mean(word: str, candidates: list[str]) -> str:
    """' (did you mean "x"?)' for the closest candidate, or "" when nothing is close."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_address(address: str, setting: str, *, min_port: int = 1) -> tuple[str, int]:
    """("host", port) of "host:port", ":port" (every interface) or "[v6]:port"; ConfigError
    naming `setting` otherwise. The one parser of listen addresses (metrics, push); port 0
    (any free port, for tests) only where `min_port` is 0."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not min_port <= int(port) <= 65535:
        raise ConfigError(f"{setting} must be host:port (or :port, port {min_port}-65535), "
                          f"got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":port" asks for every interface


def redact_url(url: str) -> str:
    """`url` with any password (in the user-info or a `password=` query) replaced by ***."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = re.sub(r"(?i)(^|&)(\w*password=)[^&]*", r"\1\2***", parts.query)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
