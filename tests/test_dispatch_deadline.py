"""The dispatcher past the deadline, at close and when handlers crash: a receipt whose
handler still runs is never handed back, its late result is kept, and crashes are loud."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from prometheus_client import CollectorRegistry, Gauge
from structlog.testing import capture_logs

from consumer.handler_api import HandlerOutcome, HandlerPolicy, RoutedHandler
from consumer.pipeline.dispatch import NOT_STARTED, STUCK, WEDGED_AFTER_DEADLINES, Dispatcher
from consumer.receipts import Receipt
from tests.test_dispatch import WAIT_S, Blocker, report

SHORT_S = 0.5  # the deadline of the tests that exceed one


@pytest.fixture
def blockers() -> Iterator[list[Blocker]]:
    made: list[Blocker] = []
    yield made
    for blocker in made:  # no handler thread outlives its test
        blocker.release.set()


def blocker(blockers: list[Blocker], *biz_ids: str) -> Blocker:
    made = Blocker(set(biz_ids))
    blockers.append(made)
    return made


def make(routes: dict[str, Sequence[object]], deadline_s: float = SHORT_S,
         max_workers: int = 2, **kwargs: object) -> Dispatcher:
    return Dispatcher(routes, deadline_s, max_workers, **kwargs)  # type: ignore[arg-type]


class Late:
    """Collects `late` callbacks."""

    def __init__(self) -> None:
        self.got: list[tuple[int, HandlerOutcome]] = []
        self.event = threading.Event()

    def __call__(self, index: int, outcome: HandlerOutcome) -> None:
        self.got.append((index, outcome))
        self.event.set()


def test_without_late_a_stuck_handler_is_waited_for_and_its_success_kept(
        blockers: list[Blocker]) -> None:
    slow = blocker(blockers, "biz-2")
    registry = CollectorRegistry()
    gauge = Gauge("stuck", "stuck handler threads", registry=registry)
    dispatcher = make({"SmsReport": [slow]}, stuck_gauge=gauge)
    seen: list[float | None] = []

    def release_once_stuck() -> None:
        for _ in range(int(WAIT_S / 0.01)):
            if dispatcher.stuck_threads == 1:
                seen.append(registry.get_sample_value("stuck"))
                break
            threading.Event().wait(0.01)
        slow.release.set()

    threading.Thread(target=release_once_stuck).start()
    with capture_logs() as logs:
        outcomes = dispatcher.dispatch([report(1), report(2), report(3)])

    assert [o.kind for o in outcomes] == ["ok", "ok", "ok"]  # the late success counts
    assert seen == [1.0]
    assert dispatcher.stuck_threads == 0 and registry.get_sample_value("stuck") == 0
    events = [e["event"] for e in logs]
    assert events.count("handler_stuck") == 1 and events.count("late_handler_finished") == 1
    dispatcher.close()


def test_with_late_the_stuck_receipt_is_reported_stuck_and_its_outcome_comes_later(
        blockers: list[Blocker]) -> None:
    slow = blocker(blockers, "biz-2")
    dispatcher = make({"SmsReport": [slow]}, chunk_target_s=60.0)
    dispatcher.dispatch([report(0)])  # measured: fast, so 1-4 below form one run
    late = Late()

    outcomes = dispatcher.dispatch([report(1), report(2), report(3), report(4)], late)

    assert [(o.kind, o.reason) for o in outcomes] == [
        ("ok", ""), ("retry", STUCK), ("ok", ""), ("ok", "")]
    assert slow.finished == ["biz-0", "biz-1", "biz-3", "biz-4"]  # the run's tail moved on
    assert [(r.meta.message_id, h) for r, h, _ in dispatcher.running()] == [
        ("msg-2", "blocker")]
    assert late.got == []
    slow.release.set()
    assert late.event.wait(WAIT_S)
    [(index, outcome)] = late.got
    assert (index, outcome.kind, outcome.handler) == (1, "ok", "blocker")
    assert dispatcher.running() == []
    dispatcher.close()


class BlocksWhenArmed:
    """A batch handler that returns at once until `armed`, then blocks until `release`."""

    name = "armed"

    def __init__(self) -> None:
        self.armed, self.release = False, threading.Event()

    def handle_batch(self, receipts: Sequence[Receipt]) -> None:
        if self.armed:
            self.release.wait(WAIT_S)


def test_a_handler_stuck_in_a_shared_task_does_not_hold_the_handlers_after_it() -> None:
    first, after = BlocksWhenArmed(), Blocker(set())
    dispatcher = make({"SmsReport": [first, after]}, chunk_target_s=60.0)
    dispatcher.dispatch([report(0)])  # both measured fast: one task from now on
    first.armed = True
    late = Late()
    try:
        with capture_logs() as logs:
            outcomes = dispatcher.dispatch([report(1), report(2)], late)

        assert [(o.kind, o.reason, o.handler) for o in outcomes] == [
            ("retry", STUCK, "armed")] * 2
        assert after.finished == ["biz-0", "biz-1", "biz-2"]  # moved on past the deadline
        [stuck] = [e for e in logs if e["event"] == "handler_stuck"]
        assert (stuck["handler"], stuck["deadline_s"], stuck["receipts"]) == ("armed", SHORT_S, 2)
    finally:
        first.release.set()
    assert late.event.wait(WAIT_S)
    for _ in range(int(WAIT_S / 0.01)):
        if len(late.got) == 2:
            break
        threading.Event().wait(0.01)
    assert sorted((i, o.kind) for i, o in late.got) == [(0, "ok"), (1, "ok")]
    dispatcher.close()


def test_a_shorter_deadline_after_a_longer_one_in_a_shared_task_is_noticed_by_its_own(
        ) -> None:
    # One task runs several handlers (the bulk sender's three), each with its own deadline:
    # the second one starting must not be judged by the first one's longer deadline.
    first, second = BlocksWhenArmed(), BlocksWhenArmed()
    routes = {"SmsReport": [RoutedHandler(first, "long", HandlerPolicy(deadline_s=WAIT_S)),
                            RoutedHandler(second, "short", HandlerPolicy(deadline_s=SHORT_S))]}
    dispatcher = make(routes, deadline_s=WAIT_S, chunk_target_s=60.0)
    dispatcher.dispatch([report(0)])  # both measured fast: one task from now on
    second.armed = True
    try:
        with capture_logs() as logs:
            outcomes = dispatcher.dispatch([report(1)], Late())
        [stuck] = [e for e in logs if e["event"] == "handler_stuck"]
    finally:
        second.release.set()  # only now: the stuck line's running_s was measured while hung
    assert [(o.kind, o.reason, o.handler) for o in outcomes] == [("retry", STUCK, "short")]
    assert (stuck["handler"], stuck["deadline_s"]) == ("short", SHORT_S)
    assert stuck["running_s"] < WAIT_S / 2  # its own deadline, not the long one's
    dispatcher.close()


def _one_worker_busy_with_biz_1(blockers: list[Blocker]) -> tuple[
        Blocker, Dispatcher, Late, list[HandlerOutcome], threading.Thread]:
    """A one-thread dispatcher running biz-1 (blocked) while biz-2 waits in its queue; the
    batch's outcomes land in the returned list once the dispatching thread is done."""
    slow = blocker(blockers, "biz-1")
    dispatcher = make({"SmsReport": [slow]}, max_workers=1)
    late = Late()
    result: list[HandlerOutcome] = []
    thread = threading.Thread(target=lambda: result.extend(
        dispatcher.dispatch([report(1), report(2)], late)))
    thread.start()
    assert slow.entered.wait(WAIT_S)
    return slow, dispatcher, late, result, thread


def test_queued_calls_wait_for_a_free_worker_instead_of_failing(
        blockers: list[Blocker]) -> None:
    slow, dispatcher, late, result, thread = _one_worker_busy_with_biz_1(blockers)
    threading.Event().wait(SHORT_S * 3)  # well past the deadline: biz-2 still waits
    assert result == [] and "biz-2" not in slow.finished

    slow.release.set()
    thread.join(WAIT_S)
    assert [o.kind for o in result] == ["ok", "ok"]  # in time after all: nothing deferred
    assert late.got == []
    dispatcher.close()


def test_close_ends_queued_calls_not_started_and_leaves_running_ones_alone(
        blockers: list[Blocker]) -> None:
    slow, dispatcher, late, result, thread = _one_worker_busy_with_biz_1(blockers)

    dispatcher.close()
    thread.join(WAIT_S)

    assert [(o.kind, o.reason) for o in result] == [("retry", STUCK), ("retry", NOT_STARTED)]
    slow.release.set()
    assert late.event.wait(WAIT_S)
    assert [(i, o.kind) for i, o in late.got] == [(0, "ok")]
    assert slow.finished == ["biz-1"]  # biz-2 never ran


def newest_start(dispatcher: Dispatcher) -> tuple[float, float]:
    """Bounds of the monotonic time the newest running call started: `running()` reads the
    clock somewhere between the two reads around it (the test thread may be descheduled
    for a while on either side, on a busy machine)."""
    before = time.monotonic()
    running_s = min(s for _receipt, _handler, s in dispatcher.running())
    after = time.monotonic()
    return before - running_s, after - running_s


def test_the_pool_is_wedged_once_calls_hung_a_further_deadline_hold_the_share(
        blockers: list[Blocker]) -> None:
    slow = blocker(blockers, "biz-1", "biz-2")
    dispatcher = make({"SmsReport": [slow]}, max_workers=4, stuck_share=0.5)
    late = Late()

    dispatcher.dispatch([report(1)], late)
    assert dispatcher.stuck_threads == 1
    dispatcher.dispatch([report(2)], late)  # returns once biz-2 too ran its deadline
    assert dispatcher.stuck_threads == 2
    # Judged at instants set from the newer call's start, not at whatever time the machine
    # reaches these lines: a whole deadline past its deadline, both calls are taken for hung.
    earliest, latest = newest_start(dispatcher)
    assert not dispatcher.wedged(now=earliest + WEDGED_AFTER_DEADLINES * SHORT_S - 0.05), \
        "only late: it may yet return"
    hung_at = latest + WEDGED_AFTER_DEADLINES * SHORT_S
    assert dispatcher.wedged(now=hung_at + 0.05)
    for _ in range(int(WAIT_S / 0.01)):  # and on the real clock, once that time came
        if dispatcher.wedged():
            break
        threading.Event().wait(0.01)
    assert dispatcher.wedged()

    slow.release.set()
    for _ in range(int(WAIT_S / 0.01)):
        if len(late.got) == 2:
            break
        threading.Event().wait(0.01)
    assert not dispatcher.wedged(now=hung_at + 3600)
    dispatcher.close()


def test_one_call_late_in_a_pool_of_one_is_not_a_wedge_until_a_further_deadline(
        blockers: list[Blocker]) -> None:
    # The CI failure: one handler thread, its call a little past its deadline on a starved
    # machine; the worker recycled at once (handing back its queue) though the call returned
    # half a second later. Late is not hung.
    slow = blocker(blockers, "biz-1")
    dispatcher = make({"SmsReport": [slow]}, max_workers=1, stuck_share=0.5)
    late = Late()

    dispatcher.dispatch([report(1)], late)
    assert dispatcher.stuck_threads == 1
    earliest, started = newest_start(dispatcher)
    assert not dispatcher.wedged(now=earliest + 1.5 * SHORT_S)
    assert dispatcher.wedged(now=started + WEDGED_AFTER_DEADLINES * SHORT_S + 0.05)
    slow.release.set()
    assert late.event.wait(WAIT_S)
    assert dispatcher.stuck_threads == 0
    assert not dispatcher.wedged(now=started + 3600)
    dispatcher.close()


class Exits:
    name = "exits"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def handle(self, receipt: Receipt) -> None:
        raise self.exc


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), BaseException("odd")])
def test_a_handler_leaving_by_a_base_exception_is_an_error_with_its_traceback(
        exc: BaseException) -> None:
    dispatcher = make({"SmsReport": [Exits(exc)]}, deadline_s=WAIT_S)

    with capture_logs() as logs:
        [outcome] = dispatcher.dispatch([report(5)])

    assert (outcome.kind, outcome.reason.split(":")[0]) == ("retry", type(exc).__name__)
    [entry] = [e for e in logs if e["event"] == "handler_crashed"]
    assert entry["log_level"] == "error" and entry["exc_info"] is exc
    assert entry["message_ids"] == ["msg-5"]
    dispatcher.close()


def test_a_malformed_batch_result_is_an_error() -> None:
    class Garbage:
        name = "garbage"

        def handle_batch(self, receipts: Sequence[Receipt]) -> object:
            return {"ok": True}

    dispatcher = make({"SmsReport": [Garbage()]}, deadline_s=WAIT_S)
    with capture_logs() as logs:
        [outcome] = dispatcher.dispatch([report(1)])

    assert (outcome.kind, outcome.reason) == ("retry", "bad_batch_result")
    [entry] = [e for e in logs if e["event"] == "bad_batch_result"]
    assert entry["log_level"] == "error" and entry["got"] == "dict"
    dispatcher.close()


def test_a_bad_stuck_share_is_a_config_error() -> None:
    from consumer.errors import ConfigError  # noqa: PLC0415

    for share in (0, 1.5):
        with pytest.raises(ConfigError, match="stuck_share"):
            make({}, stuck_share=share)


