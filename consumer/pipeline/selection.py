"""Which of a receipt's handlers run on this delivery: not those that finished it before, and
in a dead-letter replay only those selected (consumer.pipeline.dispatch applies this)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from consumer.handler_api import HandlerOutcome

#: The reason of a handler's "ok" for a receipt it had finished on an earlier delivery.
COMPLETED_BEFORE = "completed_before"
#: The reason of a handler left out of a replay (`--handler`): the receipt stays dead for it.
NOT_SELECTED = "not_selected"


@dataclass(frozen=True)
class Selection:
    """Which handlers a dead-letter replay runs for one receipt: `run` (names). `failed`:
    the handlers its letter names as failed, or None when it names none; a handler outside
    both `run` and `failed` finished the receipt before (it is not run, and reports ok);
    one in `failed` but not in `run` stays failed (NOT_SELECTED)."""

    run: frozenset[str]
    failed: frozenset[str] | None = None

    def finished(self, name: str) -> bool:
        return self.failed is not None and name not in self.failed


def not_run(name: str, tag: str, completed: Collection[str] | None,
            chosen: Selection | None) -> HandlerOutcome | None:
    """None when handler `name` (`tag`: its handler_tag) is to run for a receipt whose
    finished handlers' tags are `completed`; else the outcome it reports without running."""
    finished = completed is not None and tag in completed
    if chosen is None:
        return HandlerOutcome("ok", name, COMPLETED_BEFORE, None, 0.0) if finished else None
    if name in chosen.run:
        return None
    if finished or chosen.finished(name):
        return HandlerOutcome("ok", name, COMPLETED_BEFORE, None, 0.0)
    return HandlerOutcome("permanent", name, NOT_SELECTED, None, 0.0)
