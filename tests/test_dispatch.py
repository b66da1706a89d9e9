"""The handler API and the dispatcher: routing, signals, batches, the deadline."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import ClassVar

import pytest
from structlog.testing import capture_logs

from consumer.errors import ConfigError, PermanentFailure, RetryLater
from consumer.handler_api import (
    BatchHandler,
    BatchResult,
    FunctionHandler,
    Handler,
    HandlerOutcome,
    handler,
    worst,
)
from consumer.pipeline.dispatch import NOT_STARTED, Dispatcher
from consumer.receipts import Receipt, ReceiptMeta, SmsReport, SmsUp

WAIT_S = 30.0  # an upper bound for "eventually", never a speed expectation
# Long enough that a handler that merely appends to a list never hits it, even on a busy
# machine; only the handlers blocked on an Event exceed it.
SHORT_S = 1.0  # the deadline of the tests that exceed one


def report(n: int) -> SmsReport:
    phone, biz_id = f"1380000{n:04d}", f"biz-{n}"
    raw = {"phone_number": phone, "biz_id": biz_id, "success": True}
    return SmsReport(raw=raw, meta=ReceiptMeta("mns", "q", f"msg-{n}", 1),
                     phone_number=phone, biz_id=biz_id, success=True)


def uplink(n: int) -> SmsUp:
    raw = {"phone_number": "139", "content": f"hi {n}", "send_time": "2017-01-01 00:00:00",
           "dest_code": "1", "sequence_id": str(n)}
    return SmsUp(raw=raw, meta=ReceiptMeta("mns", "q-up", f"up-{n}", 1),
                 phone_number="139", content=raw["content"], send_time=raw["send_time"],
                 dest_code="1", sequence_id=str(n))


class Recorder:
    """A single-receipt handler that remembers what it was given (thread-safe)."""

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.seen: list[Receipt] = []
        self._lock = threading.Lock()

    def handle(self, receipt: Receipt) -> None:
        with self._lock:
            self.seen.append(receipt)


class Raiser:
    def __init__(self, exc: Exception, name: str = "raiser") -> None:
        self.name = name
        self.exc = exc

    def handle(self, receipt: Receipt) -> None:
        raise self.exc


class Blocker:
    """Blocks on receipts whose biz_id is in `block` until released; others pass at once."""

    def __init__(self, block: set[str]) -> None:
        self.name = "blocker"
        self.block = block
        self.release = threading.Event()
        self.entered = threading.Event()
        self.finished: list[str] = []

    def handle(self, receipt: Receipt) -> None:
        assert isinstance(receipt, SmsReport)
        if receipt.biz_id in self.block:
            self.entered.set()
            self.release.wait(WAIT_S)
        self.finished.append(receipt.biz_id)


def make(dispatchers: list[Dispatcher], routes: dict[str, Sequence[object]],
         deadline_s: float = WAIT_S, max_workers: int = 4, **kwargs: object) -> Dispatcher:
    dispatcher = Dispatcher(routes, deadline_s, max_workers, **kwargs)  # type: ignore[arg-type]
    dispatchers.append(dispatcher)
    return dispatcher


def test_receipts_are_routed_to_the_handlers_of_their_type(dispatchers: list[Dispatcher]) -> None:
    reports, uplinks = Recorder("reports"), Recorder("uplinks")
    dispatcher = make(dispatchers, {"SmsReport": [reports], "SmsUp": [uplinks]})
    batch: list[Receipt] = [report(1), uplink(1), report(2)]

    outcomes = dispatcher.dispatch(batch)

    assert [o.kind for o in outcomes] == ["ok", "ok", "ok"]
    assert [o.handler for o in outcomes] == ["reports", "uplinks", "reports"]
    assert sorted(r.meta.message_id for r in reports.seen) == ["msg-1", "msg-2"]
    assert [r.meta.message_id for r in uplinks.seen] == ["up-1"]


@pytest.mark.parametrize(("exc", "kind", "reason", "delay_s"), [
    (RetryLater("db busy", delay_s=30), "retry", "db busy", 30),
    (RetryLater(), "retry", "retry_later", None),
    (PermanentFailure("unknown customer"), "permanent", "unknown customer", None),
    (ValueError("boom\nsecond line"), "retry", "ValueError: boom second line", None),
])
def test_each_handler_signal_gives_its_outcome(dispatchers: list[Dispatcher], exc: Exception,
                                               kind: str, reason: str,
                                               delay_s: float | None) -> None:
    dispatcher = make(dispatchers, {"SmsReport": [Raiser(exc)]})

    [outcome] = dispatcher.dispatch([report(1)])

    assert (outcome.kind, outcome.handler, outcome.reason, outcome.delay_s) == (
        kind, "raiser", reason, delay_s)


def test_an_unexpected_exception_is_logged_with_its_traceback(
        dispatchers: list[Dispatcher]) -> None:
    dispatcher = make(dispatchers, {"SmsReport": [Raiser(KeyError("x"))]})

    with capture_logs() as logs:
        dispatcher.dispatch([report(7)])

    [entry] = [e for e in logs if e["event"] == "handler_raised"]
    assert entry["handler"] == "raiser"
    assert entry["message_ids"] == ["msg-7"]
    assert isinstance(entry["exc_info"], KeyError)


def test_a_receipt_type_without_a_handler_is_permanent_no_handler(
        dispatchers: list[Dispatcher]) -> None:
    dispatcher = make(dispatchers, {"SmsReport": [Recorder()]})

    outcomes = dispatcher.dispatch([uplink(1), report(1)])

    assert [(o.kind, o.reason) for o in outcomes] == [("permanent", "no_handler"), ("ok", "")]


def test_the_worst_outcome_across_a_types_handlers_wins(dispatchers: list[Dispatcher]) -> None:
    ok, retry = Recorder("ok"), Raiser(RetryLater("later"), "retry")
    permanent = Raiser(PermanentFailure("never"), "permanent")
    dispatcher = make(dispatchers, {"SmsReport": [ok, retry, permanent], "SmsUp": [ok, retry]})

    outcomes = dispatcher.dispatch([report(1), uplink(1)])
    each = dispatcher.dispatch_each([report(1), uplink(1)])

    assert [(o.kind, o.handler) for o in outcomes] == [("permanent", "permanent"),
                                                       ("retry", "retry")]
    assert sorted((o.handler, o.kind) for o in each[0]) == [
        ("ok", "ok"), ("permanent", "permanent"), ("retry", "retry")]
    assert len(ok.seen) == 4  # every handler ran, whatever its siblings did


def test_worst_prefers_the_longest_retry_delay() -> None:
    short = HandlerOutcome("retry", "a", "x", 5.0, 0.1)
    long = HandlerOutcome("retry", "b", "y", 60.0, 0.1)
    ok = HandlerOutcome("ok", "c", "", None, 9.0)

    assert worst([short, ok, long]) is long


def test_worst_of_several_successes_is_the_slowest() -> None:
    fast, slow = HandlerOutcome("ok", "a", "", None, 0.1), HandlerOutcome("ok", "b", "", None, 2.0)

    assert worst([fast, slow, fast]) is slow
    assert worst([slow, HandlerOutcome("permanent", "c", "bad", None, 0.0)]).kind == "permanent"


class Batcher:
    """Records each sub-batch; fails the receipts named in `retry` / `fail`."""

    name = "batcher"

    def __init__(self, retry: Sequence[str] = (), fail: Sequence[str] = ()) -> None:
        self.calls: list[list[str]] = []
        self.retry, self.fail = retry, fail

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        self.calls.append([r.meta.message_id for r in receipts])
        result = BatchResult()
        for receipt in receipts:
            if receipt.meta.message_id in self.retry:
                result.retry(receipt, "not yet", delay_s=12)
            elif receipt.meta.message_id in self.fail:
                result.fail(receipt, "bad data")
        return result


def test_a_batch_handler_gets_the_whole_sub_batch_of_its_type_in_order(
        dispatchers: list[Dispatcher]) -> None:
    batcher = Batcher()
    dispatcher = make(dispatchers, {"SmsReport": [batcher], "SmsUp": [Recorder()]})

    outcomes = dispatcher.dispatch([report(1), uplink(1), report(2), report(3)])

    assert batcher.calls == [["msg-1", "msg-2", "msg-3"]]
    assert [o.kind for o in outcomes] == ["ok"] * 4


def test_a_partial_batch_result_fails_only_the_listed_receipts(
        dispatchers: list[Dispatcher]) -> None:
    dispatcher = make(dispatchers, {"SmsReport": [Batcher(retry=["msg-2"], fail=["msg-3"])]})

    outcomes = dispatcher.dispatch([report(1), report(2), report(3)])

    assert [(o.kind, o.reason, o.delay_s) for o in outcomes] == [
        ("ok", "", None), ("retry", "not yet", 12), ("permanent", "bad data", None)]


def test_a_batch_result_matches_receipts_by_identity_not_equality(
        dispatchers: list[Dispatcher]) -> None:
    first, twin = report(1), report(1)  # equal values: the same receipt delivered twice
    assert first == twin

    class FailFirst:
        name = "fail-first"

        def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
            result = BatchResult()
            result.retry(receipts[0])
            return result

    outcomes = make(dispatchers, {"SmsReport": [FailFirst()]}).dispatch([first, twin])

    assert [o.kind for o in outcomes] == ["retry", "ok"]


@pytest.mark.parametrize(("exc", "kind"), [
    (RetryLater("store down"), "retry"), (PermanentFailure("schema"), "permanent"),
    (RuntimeError("bug"), "retry")])
def test_a_raising_batch_handler_gives_its_signal_to_every_receipt(
        dispatchers: list[Dispatcher], exc: Exception, kind: str) -> None:
    class Failing:
        name = "failing"

        def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
            raise exc

    outcomes = make(dispatchers, {"SmsReport": [Failing()]}).dispatch([report(1), report(2)])

    assert [o.kind for o in outcomes] == [kind, kind]


def test_a_batch_handler_returning_none_succeeds_and_garbage_is_retried(
        dispatchers: list[Dispatcher]) -> None:
    class ReturnsNone:
        name = "none"

        def handle_batch(self, receipts: Sequence[Receipt]) -> None:
            return None

    class ReturnsGarbage:
        name = "garbage"

        def handle_batch(self, receipts: Sequence[Receipt]) -> object:
            return [True] * len(receipts)

    dispatcher = make(dispatchers, {"SmsReport": [ReturnsNone()], "SmsUp": [ReturnsGarbage()]})

    outcomes = dispatcher.dispatch([report(1), uplink(1)])

    assert [(o.kind, o.reason) for o in outcomes] == [("ok", ""), ("retry", "bad_batch_result")]


def test_a_fast_handlers_receipts_run_as_one_task_once_it_was_measured(
        dispatchers: list[Dispatcher]) -> None:
    threads: list[int] = []
    fast = FunctionHandler(lambda r: threads.append(threading.get_ident()), "fast", None)
    # A target far above any handler call: grouping cannot depend on the machine's speed.
    dispatcher = make(dispatchers, {"SmsReport": [fast]}, max_workers=4, chunk_target_s=60.0)
    dispatcher.dispatch([report(0)])  # the first call measures it
    threads.clear()

    outcomes = dispatcher.dispatch([report(n) for n in range(1, 17)])

    assert [o.kind for o in outcomes] == ["ok"] * 16
    assert len(threads) == 16 and len(set(threads)) == 1


class Overlap:
    """Two batch handlers: `first` waits up to `wait_s` for `second` to start (which it does
    on another thread when the two are separate pool tasks, and never while `first` waits
    when both run in one task)."""

    def __init__(self) -> None:
        self.wait_s = WAIT_S  # "it starts alongside": bounded only to end a hung test
        self.second_started = threading.Event()
        self.overlapped: list[bool] = []
        self.threads: list[int] = []

    def handlers(self) -> list[BatchHandler]:
        overlap = self

        class First:
            name = "first"

            def handle_batch(self, receipts: Sequence[Receipt]) -> None:
                overlap.threads.append(threading.get_ident())
                overlap.overlapped.append(overlap.second_started.wait(overlap.wait_s))

        class Second:
            name = "second"

            def handle_batch(self, receipts: Sequence[Receipt]) -> None:
                overlap.threads.append(threading.get_ident())
                overlap.second_started.set()

        return [First(), Second()]


def test_the_calls_of_several_fast_handlers_share_one_task_once_measured(
        dispatchers: list[Dispatcher]) -> None:
    overlap = Overlap()
    # A target far above any handler call: grouping cannot depend on the machine's speed.
    dispatcher = make(dispatchers, {"SmsReport": overlap.handlers()}, max_workers=4,
                      chunk_target_s=60.0)
    dispatcher.dispatch([report(0)])  # unmeasured: a task each, run side by side
    assert overlap.overlapped == [True]
    overlap.second_started.clear()
    overlap.threads.clear()
    overlap.wait_s = 0.2  # in one task `second` cannot start while `first` waits: any wait

    outcomes = dispatcher.dispatch_each([report(n) for n in range(1, 5)])

    assert overlap.overlapped == [True, False]  # one after the other now
    assert len(set(overlap.threads)) == 1  # in one pool task
    assert [[o.handler for o in each] for each in outcomes] == [["first", "second"]] * 4


def test_a_slow_handlers_receipts_still_run_in_parallel(dispatchers: list[Dispatcher]) -> None:
    together = threading.Barrier(4, timeout=WAIT_S)  # passes only with 4 calls at once

    def slow(receipt: Receipt) -> None:
        threading.Event().wait(0.05)  # far above the 2 ms grouping target
        together.wait()

    dispatcher = make(dispatchers, {"SmsReport": [FunctionHandler(slow, "slow", None)]},
                      max_workers=4)

    for round_ in range(2):  # unmeasured, then measured as slow
        outcomes = dispatcher.dispatch([report(round_ * 10 + n) for n in range(4)])
        assert [o.kind for o in outcomes] == ["ok"] * 4


def test_concurrent_dispatches_each_get_their_own_outcomes(dispatchers: list[Dispatcher]) -> None:
    recorder = Recorder()
    retrying = Raiser(RetryLater("odd"), "odd")
    dispatcher = make(dispatchers, {"SmsReport": [recorder], "SmsUp": [retrying]})
    results: dict[int, list[HandlerOutcome]] = {}

    def run(worker: int) -> None:
        batch: list[Receipt] = [report(worker * 100 + i) if i % 2 == 0 else uplink(i)
                                for i in range(16)]
        results[worker] = dispatcher.dispatch(batch)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)

    for outcomes in results.values():
        assert [o.kind for o in outcomes] == ["ok", "retry"] * 8
    assert len(results) == 6
    assert len({r.meta.message_id for r in recorder.seen}) == 6 * 8


class CountingCondition(threading.Condition):
    """A condition that counts, per thread, how often a wait returned on a condition the
    dispatcher made (not those of the pool's threads starting, or of events)."""

    woken: ClassVar[dict[int, int]] = {}

    def __init__(self, lock: threading.Lock | threading.RLock | None = None) -> None:
        super().__init__(lock)
        self._dispatchers = sys._getframe(1).f_globals["__name__"] == Dispatcher.__module__

    def wait(self, timeout: float | None = None) -> bool:
        try:
            return super().wait(timeout)
        finally:
            if self._dispatchers:
                me = threading.get_ident()
                CountingCondition.woken[me] = CountingCondition.woken.get(me, 0) + 1


def test_a_waiting_dispatch_is_not_woken_by_other_dispatches_finishing(
        dispatchers: list[Dispatcher], monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()

    def blocked(receipt: Receipt) -> None:
        started.set()
        release.wait(WAIT_S)

    monkeypatch.setattr(CountingCondition, "woken", {})
    monkeypatch.setattr(threading, "Condition", CountingCondition)
    dispatcher = make(dispatchers, {"SmsReport": [FunctionHandler(blocked, "blocked", None)],
                                    "SmsUp": [Recorder("fast")]})
    waiting: list[int] = []
    outcomes: list[HandlerOutcome] = []

    def slow_dispatch() -> None:
        waiting.append(threading.get_ident())
        outcomes.extend(dispatcher.dispatch([report(1)]))

    slow = threading.Thread(target=slow_dispatch)
    slow.start()
    assert started.wait(WAIT_S)
    for n in range(20):  # each finishes while the slow one waits
        assert [o.kind for o in dispatcher.dispatch([uplink(n)])] == ["ok"]
    release.set()
    slow.join(WAIT_S)

    assert [o.kind for o in outcomes] == ["ok"]
    # Woken once, when its own call finished (a shared condition woke it 20 times more).
    assert CountingCondition.woken[waiting[0]] == 1


def test_dispatch_after_close_hands_every_receipt_back(dispatchers: list[Dispatcher]) -> None:
    dispatcher = make(dispatchers, {"SmsReport": [Recorder()]})
    dispatcher.close(wait=True)

    outcomes = dispatcher.dispatch([report(1), report(2)])

    assert [(o.kind, o.reason) for o in outcomes] == [("retry", NOT_STARTED)] * 2


@pytest.mark.parametrize(("deadline_s", "max_workers"), [(0, 4), (-1, 4), (1.0, 0)])
def test_a_bad_deadline_or_pool_size_is_a_config_error(deadline_s: float,
                                                       max_workers: int) -> None:
    with pytest.raises(ConfigError):
        Dispatcher({}, deadline_s, max_workers)


def test_the_handler_decorator_makes_a_function_a_handler() -> None:
    seen: list[SmsReport] = []

    @handler(types=["SmsReport"])
    def on_report(receipt: SmsReport) -> None:
        """Doc of on_report."""
        seen.append(receipt)

    @handler
    def anything(receipt: Receipt) -> None:
        seen.append(receipt)  # type: ignore[arg-type]  # the test only counts calls

    @handler(types="SmsUp", name="uplinks")
    def on_up(receipt: SmsUp) -> None: ...

    assert isinstance(on_report, FunctionHandler) and isinstance(on_report, Handler)
    assert not isinstance(on_report, BatchHandler)
    assert (on_report.name, on_report.types, on_report.__doc__) == (
        "on_report", ("SmsReport",), "Doc of on_report.")
    assert (anything.name, anything.types) == ("anything", None)
    assert (on_up.name, on_up.types) == ("uplinks", ("SmsUp",))
    on_report(report(1))  # still callable as a plain function
    on_report.handle(report(2))
    assert [r.biz_id for r in seen] == ["biz-1", "biz-2"]


def test_a_decorated_function_dispatches_like_any_handler(dispatchers: list[Dispatcher]) -> None:
    @handler(types=["SmsReport"])
    def flaky(receipt: SmsReport) -> None:
        if receipt.biz_id == "biz-2":
            raise RetryLater("second one", delay_s=3)

    outcomes = make(dispatchers, {"SmsReport": [flaky]}).dispatch([report(1), report(2)])

    assert [(o.kind, o.handler, o.delay_s) for o in outcomes] == [
        ("ok", "flaky", None), ("retry", "flaky", 3)]
