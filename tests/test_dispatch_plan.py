"""How the dispatcher packs handler calls into pool tasks: by each handler's usual time, the
shortest of its recent calls, so waits for the GIL or a CPU do not split a batch's tasks."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.dispatch_plan import USUAL_WINDOW, Usual
from consumer.receipts import Receipt
from tests.test_dispatch import Overlap, make, report


def test_the_usual_time_is_the_shortest_recent_call() -> None:
    usual = Usual(0.005)
    for _ in range(USUAL_WINDOW):
        usual.add(0.006)
    usual.add(0.0004)  # one short call among waits for the GIL
    usual.add(0.007)

    assert usual.value == 0.0004


def test_a_handler_that_turned_slow_is_slow_again_after_two_windows() -> None:
    usual = Usual(0.0004)
    for _ in range(USUAL_WINDOW):
        usual.add(0.05)
    assert usual.value == 0.0004  # the short call is still in the older window

    for _ in range(USUAL_WINDOW):
        usual.add(0.05)

    assert usual.value == 0.05


def test_a_handler_slow_once_shares_the_task_after_a_short_call(
        dispatchers: list[Dispatcher]) -> None:
    overlap = Overlap()
    first, second = overlap.handlers()
    delays = [0.5]  # its first call waits (as for the GIL, or a CPU on a busy machine)

    class SlowOnce:
        name = "slow-once"

        def handle_batch(self, receipts: Sequence[Receipt]) -> None:
            if delays:
                threading.Event().wait(delays.pop())
            first.handle_batch(receipts)

    dispatcher = make(dispatchers, {"SmsReport": [SlowOnce(), second]}, chunk_target_s=0.25)
    dispatcher.dispatch([report(0)])  # unmeasured: a task each
    overlap.second_started.clear()
    dispatcher.dispatch([report(1)])  # measured slow: still alone, and short this time
    assert overlap.overlapped == [True, True]
    overlap.second_started.clear()
    overlap.wait_s = 0.2  # in one task `second` cannot start while `first` waits

    outcomes = dispatcher.dispatch_each([report(2)])

    assert overlap.overlapped == [True, True, False]  # one after the other: one task
    assert [o.handler for o in outcomes[0]] == ["slow-once", "second"]
