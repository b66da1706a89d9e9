"""The `receipt_settled` line: one log line and one outcome metric per decided receipt.

`Lifecycle.settle` calls `report_settled` once per batch, after every step of the batch was
carried out (or failed), so each decided item is reported exactly once, whatever failed; an
item without a decision is not reported. The line carries the receipt's business ids and
masked phone (`consumer.keys.log_fields`), the source's own fields (`Transport.log_fields`),
the receipt's handler, outcome, reason and duration, and `handlers` (`_handler_fields`) only
when it says more than those. It is logged under the lifecycle's logger name
(`alicom_receipts.lifecycle`), as before this module was split from `lifecycle`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import structlog

from consumer.handler_api import HandlerOutcome
from consumer.keys import log_fields
from consumer.pipeline.stats import Stats
from consumer.pipeline.work import Transport, Work

log = structlog.get_logger("alicom_receipts.lifecycle")
W = TypeVar("W", bound=Work)


def report_settled(items: Sequence[W], transport: Transport[W], stats: Stats) -> None:
    """One `receipt_settled` line and one `Stats.outcome` per decided item, in order."""
    # One `handlers` entry per outcome object: a batch handler's call gives all its
    # receipts the same one. Keyed by id: the items keep their outcomes alive meanwhile.
    entries: dict[int, dict[str, object]] = {}
    for work in items:
        decision = work.decision
        if decision is None:
            continue
        # The receipt's business ids and masked phone, then the source's own fields.
        fields: dict[str, object] = {**log_fields(work.receipt),
                                     **transport.log_fields(work)}
        log.info("receipt_settled", source=transport.source, **fields,
                 dequeue_count=work.deliveries, dedup_key=work.key,
                 handler=work.handler or None, outcome=decision.outcome,
                 reason=decision.reason or None, duration_ms=milliseconds(work.duration_s),
                 handlers=_handler_fields(work.outcomes, entries))
        stats.outcome(decision.outcome, work.handler, work.duration_s, work.receipt)


def _handler_fields(outcomes: Sequence[HandlerOutcome], entries: dict[int, dict[str, object]],
                    ) -> list[dict[str, object]] | None:
    """The `handlers` of a `receipt_settled` line; None when no handler ran, or when one
    did and simply succeeded: the line's own handler, outcome and duration say it all
    (the common case; its nested list was a sixth of the instructions encoding the line).
    `entries` holds the entry of each outcome already written (by `id`), for reuse: the
    lines are encoded at once and nothing changes an entry."""
    if len(outcomes) == 1:
        o = outcomes[0]
        if not o.handler or (o.kind == "ok" and not o.reason):
            return None
    out: list[dict[str, object]] = []
    for o in outcomes:  # a plain loop: this runs per receipt and handler
        if o.handler:
            entry = entries.get(id(o))
            if entry is None:
                entry = entries[id(o)] = {"handler": o.handler, "outcome": o.kind,
                                          "duration_ms": milliseconds(o.duration_s)}
                if o.reason:
                    entry["reason"] = o.reason
            out.append(entry)
    return out or None


def milliseconds(seconds: float) -> float:
    """A duration in a log line: milliseconds to two decimals (round(x, 2) costs twice as
    much, and this runs per receipt and handler)."""
    return int(seconds * 100000 + 0.5) / 100
