"""Why a delivery failed, as far as it says something about the *number*, and what to do then.

A failed SmsReport (or a reconciled answer) is classified by an ordered table of rules; the
first rule whose `code` list holds the receipt's err_code (case-insensitive) or whose `msg`
pattern is found in its err_msg gives the reason. A failure no rule matches says nothing
about the number (a template problem, a rate limit, an unknown carrier code) and is left out.

The default rules use only documented meanings (`DEFAULT_RULES`, see `consumer.reports
.err_codes` for the sources):

| reason           | err_msg contains (the receipt's own text)           | err_code        |
|------------------|-----------------------------------------------------|-----------------|
| `empty_number`   | 空号, 号码不存在, 号码无效, "not exist", "vacant"    |                 |
| `stopped`        | 停机, 欠费, 销号, "suspend"                           |                 |
| `powered_off`    | 关机, "power off", "powered off"                      |                 |
| `blacklisted`    | 黑名单, "blacklist", "black list"                    |                 |
| `rejected`       | 拒收, 退订, "unsubscrib"                              | REJECTD (CMPP)  |
| `invalid_number` |                                                | isv.MOBILE_NUMBER_ILLEGAL |
| `undeliverable`  |                                                     | UNDELIV (CMPP)  |
| `expired`        |                                                     | EXPIRED (CMPP)  |

Text rules come first: a carrier code such as `MK:0005` has no published meaning, but the
platform's err_msg beside it ("用户手机号码不存在") does; and "UNDELIV" with "用户停机" is
the more precise `stopped`.

A `Policy` per reason decides when a number is *suppressed* (not to be sent to): after
`after` failures of that reason spanning at least `over_days` days; the suppression ends
`expire_days` after the last failure (0: never) or, with `on_delivery`, when a later
delivery to the number succeeds. Reasons without a policy are recorded, never suppressed.
`manual` is the reason of `numbers add`: never lifted by a delivery, no expiry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from consumer.errors import ConfigError

__all__ = ["DEFAULT_POLICIES", "DEFAULT_RULES", "MANUAL", "Classifier", "Policy", "Rule",
           "parse_policies", "parse_rules"]

MANUAL = "manual"
_REASON = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Rule:
    """`reason` when err_code is one of `codes` (case-insensitive) or `msg` is found in err_msg."""

    reason: str
    codes: tuple[str, ...] = ()
    msg: str = ""

    def __post_init__(self) -> None:
        if not _REASON.match(self.reason):
            raise ConfigError("number rule: reason must be lowercase a-z0-9_ (at most 32), "
                              "got %r" % self.reason)
        if not self.codes and not self.msg:
            raise ConfigError("number rule %r: needs codes or msg" % self.reason)
        try:
            re.compile(self.msg)
        except re.error as exc:
            raise ConfigError("number rule %r: msg is not a regular expression (%s)"
                              % (self.reason, exc)) from exc


@dataclass(frozen=True)
class Policy:
    """When failures of one reason suppress a number, and when that ends."""

    after: int = 1
    over_days: float = 0.0
    expire_days: float = 0.0
    on_delivery: bool = True

    def __post_init__(self) -> None:
        if self.after < 1 or self.over_days < 0 or self.expire_days < 0:
            raise ConfigError("number policy: need after >= 1, over_days >= 0, expire_days >= 0")


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("empty_number", msg=r"空号|号码不存在|号码无效|(?i:not exist|vacant)"),
    Rule("stopped", msg=r"停机|欠费|销号|(?i:suspend)"),
    Rule("powered_off", msg=r"关机|(?i:powere?d? off)"),
    Rule("blacklisted", msg=r"黑名单|(?i:black ?list)"),
    Rule("rejected", codes=("REJECTD",), msg=r"拒收|退订|(?i:unsubscrib)"),
    Rule("invalid_number", codes=("isv.MOBILE_NUMBER_ILLEGAL",)),
    Rule("undeliverable", codes=("UNDELIV",)),
    Rule("expired", codes=("EXPIRED",)),
)

DEFAULT_POLICIES: Mapping[str, Policy] = MappingProxyType({
    # The number does not exist or is malformed: one failure is proof enough. Numbers are
    # reassigned after a while, hence the expiry.
    "empty_number": Policy(after=1, expire_days=90),
    "invalid_number": Policy(after=1, expire_days=365),
    "blacklisted": Policy(after=1, expire_days=30),
    # Service stopped / phone off / refused: temporary states, so only repeated failures on
    # different days count, and the suppression lapses.
    "stopped": Policy(after=2, over_days=1, expire_days=30),
    "rejected": Policy(after=2, over_days=1, expire_days=30),
    "powered_off": Policy(after=3, over_days=2, expire_days=7),
    "undeliverable": Policy(after=5, over_days=3, expire_days=14),
    "expired": Policy(after=5, over_days=3, expire_days=14),
    MANUAL: Policy(after=1, on_delivery=False),
})


class Classifier:
    """The reason of a failure by the rule table (cached per (code, msg): receipts repeat)."""

    def __init__(self, rules: Sequence[Rule] = DEFAULT_RULES) -> None:
        self._ordered: list[tuple[Rule, re.Pattern[str] | None]] = [
            (r, re.compile(r.msg) if r.msg else None) for r in rules]
        self.reason = lru_cache(maxsize=4096)(self._reason)

    def _reason(self, code: str, msg: str) -> str | None:
        folded = code.casefold()
        for rule, pattern in self._ordered:
            if pattern is not None and msg and pattern.search(msg):
                return rule.reason
            if folded and any(folded == c.casefold() for c in rule.codes):
                return rule.reason
        return None


def parse_rules(raw: Iterable[Mapping[str, Any]] | None, defaults: bool = True) -> tuple[Rule,
                                                                                         ...]:
    """`rules` option (list of {reason, codes, msg}) tried before the defaults (or alone)."""
    rules = []
    for item in raw or ():
        unknown = set(item) - {"reason", "codes", "msg"}
        if unknown:
            raise ConfigError("number rule: unknown key(s) %s" % ", ".join(sorted(unknown)))
        codes = item.get("codes", ())
        if isinstance(codes, str):
            codes = (codes,)
        rules.append(Rule(str(item.get("reason", "")), tuple(str(c) for c in codes),
                          str(item.get("msg", ""))))
    return (*rules, *(DEFAULT_RULES if defaults else ()))


def parse_policies(raw: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Policy]:
    """`policies` option (reason -> {after, over_days, expire_days, on_delivery}) over the
    defaults; `{}` for a reason (or `after = 0`) turns its suppression off."""
    out = dict(DEFAULT_POLICIES)
    for reason, values in (raw or {}).items():
        if not values or values.get("after") == 0:
            out.pop(reason, None)
            continue
        unknown = set(values) - {"after", "over_days", "expire_days", "on_delivery"}
        if unknown:
            raise ConfigError("number policy %r: unknown key(s) %s"
                              % (reason, ", ".join(sorted(unknown))))
        out[reason] = Policy(int(values.get("after", 1)), float(values.get("over_days", 0)),
                             float(values.get("expire_days", 0)),
                             bool(values.get("on_delivery", True)))
    return out
