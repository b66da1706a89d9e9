"""The dispatcher's pool tasks: what one `dispatch` call owes, which handler calls it makes
(`plan`: routes by receipt class, leaving out what `selection.not_run` says), and how those
calls are grouped into tasks (`consumer.pipeline.dispatch` runs them and watches their
deadlines). Planning is pure: it reads the routes and a snapshot of the usual times, and
writes only the `Batch` it is given.

A pool task costs more than a fast handler call itself (a future, a thread wake-up, the
lock taken on each side), and a receipt class with several handlers would pay it per
handler. So calls whose usual duration is known (`Usual`: the shortest of a handler's
recent calls) are packed, in the order planned, into tasks of about `chunk_target_s` (the
dispatcher's grouping target): a single-receipt handler's receipts into runs (as many as
fit), and the runs and batch calls of several handlers into one task while their sum stays
under the target. A handler not yet measured gets a task of its own per call (per receipt
for a single-receipt one), and a slow one stays alone: handlers doing real work still run
in parallel.

Units of one task run one after another on one thread. Each keeps its own handler's
deadline: a unit past it counts as stuck and the units after it move to a new task
(`Dispatcher._mark_stuck`), so a handler that turns slow delays the others of its task by
at most its deadline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from consumer.handler_api import AnyHandler, HandlerOutcome, RoutedHandler, handler_tag
from consumer.pipeline.selection import Selection, not_run
from consumer.receipts import Receipt

if TYPE_CHECKING:
    from threading import Condition

#: `late(index, outcomes)`: the final outcomes (one per handler) of a receipt that
#: `dispatch_each` reported as STUCK.
Late = Callable[[int, list[HandlerOutcome]], None]


class Unit(NamedTuple):
    """One handler invocation: a batch handler's sub-batch, or one receipt of a
    single-receipt handler, as positions in the dispatched batch."""

    target: AnyHandler
    name: str
    is_batch: bool
    deadline_s: float
    indexes: list[int]


@dataclass(eq=False)
class Batch:
    """One `dispatch` call: per receipt its outcomes so far and the units still owed."""

    receipts: Sequence[Receipt]
    late: Late | None
    results: list[list[HandlerOutcome]]
    owed: list[int]
    deferred: set[int] = field(default_factory=set)  # reported STUCK; `late` owes them
    returned: bool = False
    #: What its `dispatch` call waits on (on the dispatcher's lock): woken for this batch's
    #: calls only.
    waiter: Condition | None = None


@dataclass(eq=False)
class Call:
    """One pool task: units run one after another on one thread.

    `started_at` is when the running unit started (None: not yet); `done` counts finished
    units. Every field is read and written under the dispatcher's lock.
    """

    units: list[Unit]
    batch: Batch
    done: int = 0
    started_at: float | None = None
    finished: bool = False
    stuck: bool = False  # the running unit passed its deadline
    future: object = None  # the pool's Future, kept for debugging

    def running(self) -> Unit | None:
        """The unit running now (or next), None once every unit finished."""
        return self.units[self.done] if self.done < len(self.units) else None

    @property
    def deadline_s(self) -> float:
        """The deadline of the running (or next) unit's handler."""
        unit = self.running()
        return unit.deadline_s if unit is not None else 0.0


#: Calls per window of `Usual` (it reads the shortest of the last one to two windows).
USUAL_WINDOW = 64


class Usual:
    """A handler's usual wall time per invocation, as packing reads it: the shortest of its
    last `USUAL_WINDOW` to 2 x `USUAL_WINDOW` calls (two windows, the older dropped when a
    new one is full), so one short call in that span makes it fast.

    Not the mean: a call's wall time also holds its waits for the GIL (a thread back from a
    Redis reply waits up to the 5 ms switch interval while another one runs Python) and for
    a CPU on a busy machine, and sharing a task adds none of those. Measured by their
    running mean, the bulk sender's handlers (one Redis round trip per batch) took 5-6 ms
    in the worker on a busy machine, so every batch went out as three pool tasks, one per
    handler, with their wake-ups and hand-offs of the GIL: a third of the worker's CPU per
    receipt. A handler slow by nature (an HTTP call, a sleep) has no short calls and stays
    alone; one that is only sometimes slow shares a task and delays the units after it by
    that call (a stuck one at most by its deadline: `Dispatcher._mark_stuck`).
    Not thread-safe: the dispatcher updates it under its lock.
    """

    __slots__ = ("_calls", "_newer", "_older", "value")

    def __init__(self, took_s: float) -> None:
        self.value = self._older = self._newer = took_s
        self._calls = 1

    def add(self, took_s: float) -> None:
        """One more call's wall time."""
        self._newer = min(self._newer, took_s)
        self._calls += 1
        if self._calls >= USUAL_WINDOW:
            self._older, self._newer, self._calls = self._newer, math.inf, 0
        self.value = min(self._older, self._newer)


class Run(NamedTuple):
    """Consecutive units of one handler, and how long they should take (None: unknown)."""

    units: list[Unit]
    expected_s: float | None


def runs_of(target: AnyHandler, name: str, is_batch: bool, deadline_s: float,
            indexes: list[int], usual_s: float | None, chunk_target_s: float) -> list[Run]:
    """One handler's units for these receipts, cut into runs of about `chunk_target_s` by
    its usual time per invocation (`usual_s`, see `Usual`; None: not measured: one unit per
    run)."""
    if is_batch:
        return [Run([Unit(target, name, True, deadline_s, list(indexes))], usual_s)]
    units = [Unit(target, name, False, deadline_s, [i]) for i in indexes]
    if usual_s is None:
        return [Run([unit], None) for unit in units]
    size = max(1, min(len(units), int(chunk_target_s / max(usual_s, 1e-7))))
    return [Run(units[start:start + size], usual_s * len(units[start:start + size]))
            for start in range(0, len(units), size)]


def pack(runs: Iterable[Run], batch: Batch, chunk_target_s: float) -> list[Call]:
    """The pool tasks of these runs: measured runs share a task while their expected sum
    stays within `chunk_target_s`; an unmeasured or longer run is a task of its own."""
    calls: list[Call] = []
    open_call: Call | None = None
    open_s = 0.0
    for run in runs:
        if run.expected_s is None or run.expected_s > chunk_target_s:
            calls.append(Call(list(run.units), batch))
            continue
        if open_call is not None and open_s + run.expected_s <= chunk_target_s:
            open_call.units += run.units
            open_s += run.expected_s
            continue
        open_call, open_s = Call(list(run.units), batch), run.expected_s
        calls.append(open_call)
    return calls


def plan(batch: Batch, routes: Mapping[str, tuple[RoutedHandler, ...]],
         usual: Mapping[str, float], deadline_s: float, chunk_target_s: float,
         completed: Sequence[Collection[str]] | None,
         only: Sequence[Selection | None] | None) -> list[Call]:
    """The pool tasks of one `dispatch_each` call, in the order planned.

    Receipts go by class (`type(receipt).__name__`) to their `routes`; a class without a
    handler gets "permanent" with reason "no_handler" in `batch.results`, as does each
    handler `selection.not_run` leaves out (its outcome without a run). Every handler call
    planned counts in `batch.owed` of its receipts. `usual`: each handler's usual time per
    invocation (a snapshot of the dispatcher's `Usual`s, by name); `deadline_s`: the
    deadline of a handler without its own. Touches nothing but `batch`.
    """
    by_class: dict[str, list[int]] = {}
    for index, receipt in enumerate(batch.receipts):
        by_class.setdefault(type(receipt).__name__, []).append(index)
    runs: list[Run] = []
    if not any(completed or ()) and not any(only or ()):
        completed = only = None  # the usual first delivery: nothing to leave out
    for cls_name, indexes in by_class.items():
        handlers = routes.get(cls_name, ())
        if not handlers:
            for index in indexes:
                batch.results[index].append(
                    HandlerOutcome("permanent", "", "no_handler", None, 0.0))
            continue
        for bound in handlers:
            todo = indexes if completed is None and only is None else _to_run(
                bound.name, indexes, completed, only, batch.results)
            for index in todo:
                batch.owed[index] += 1
            if todo:
                runs += runs_of(bound.target, bound.name, bound.batch,
                                bound.policy.deadline_s or deadline_s, todo,
                                usual.get(bound.name), chunk_target_s)
    return pack(runs, batch, chunk_target_s)


def _to_run(name: str, indexes: list[int], completed: Sequence[Collection[str]] | None,
            only: Sequence[Selection | None] | None,
            results: list[list[HandlerOutcome]]) -> list[int]:
    """The receipts among `indexes` this handler is to run; the others get their outcome
    from `selection.not_run` (finished before, or not selected)."""
    tag = handler_tag(name)
    todo: list[int] = []
    for index in indexes:
        skipped = not_run(name, tag, None if completed is None else completed[index],
                          None if only is None else only[index])
        if skipped is None:
            todo.append(index)
        else:
            results[index].append(skipped)
    return todo
