"""consumer.testing: a handler author's kit behaves like the daemon on what it decides."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from consumer import (
    BatchResult,
    IntlSmsReport,
    PermanentFailure,
    Receipt,
    RetryLater,
    SmsReport,
    SmsUp,
    handler,
)
from consumer.handler_api import HandlerPolicy
from consumer.handlers.plugins import HandlerSpec, PluginError
from consumer.receipts import RECEIPT_CLASSES
from consumer.testing import (
    HandlerTest,
    every_sample,
    platform_duplicate,
    sample,
    sample_body,
    sample_names,
)


class Collect:
    """A class handler with an option, remembering every call (thread-safe)."""

    name = "collect"

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.seen: list[Receipt] = []
        self._lock = threading.Lock()

    def handle(self, receipt: Receipt) -> None:
        with self._lock:
            self.seen.append(receipt)


def test_every_documented_body_becomes_a_receipt_of_every_class() -> None:
    receipts = every_sample()
    assert {type(r).__name__ for r in receipts} == set(RECEIPT_CLASSES)
    assert len(receipts) == len(sample_names()) == 9
    report = sample("SmsReport-failed")
    assert isinstance(report, SmsReport) and (report.success, report.err_code) == (
        False, "MK:0001")
    assert isinstance(sample("SmsReport-intl"), IntlSmsReport)
    assert sample("SmsReport", phone_number="1390000****").phone_number == "1390000****"
    assert sample_body("push-SmsUp").startswith("[")
    with pytest.raises(KeyError, match="no sample 'Nope'"):
        sample("Nope")


def test_each_receipt_is_applied_once_and_a_platform_duplicate_runs_nothing() -> None:
    seen: list[Receipt] = []

    @handler
    def anything(receipt: Receipt) -> None:
        seen.append(receipt)

    receipts = every_sample()
    run = HandlerTest(anything).deliver([*receipts, platform_duplicate(receipts[0])])

    assert run.outcomes() == ["applied"] * 9 + ["duplicate"]
    assert len(seen) == 9 and run.applied_once()


def test_a_class_is_built_with_its_options_and_routed_by_its_annotation() -> None:
    def typed(receipt: SmsUp) -> None: ...

    kit = HandlerTest(Collect, options={"label": "x"})
    [built] = {h.target for hs in kit.routes.values() for h in hs}
    assert isinstance(built, Collect) and built.label == "x"
    run = HandlerTest(typed).deliver([sample("SmsUp"), sample("SmsReport")])
    assert [(s.outcome, s.reason) for s in run.settled] == [
        ("applied", ""), ("dead_letter", "permanent_failure: : no_handler")]


def test_a_mismatched_declaration_fails_to_load_as_in_the_daemon() -> None:
    def typed(receipt: SmsReport) -> None: ...

    with pytest.raises(PluginError, match="do not match its annotation SmsReport"):
        HandlerTest(typed, types=["SmsReport", "IntlSmsReport"])


def test_a_retry_is_delivered_again_until_applied_with_the_backoff_recorded() -> None:
    attempts: dict[str, int] = {}

    @handler
    def twice(receipt: SmsUp) -> None:
        attempts[receipt.sequence_id] = attempts.get(receipt.sequence_id, 0) + 1
        if attempts[receipt.sequence_id] < 3:
            raise RetryLater("not yet")

    [settled] = HandlerTest(twice).deliver([sample("SmsUp")]).settled

    assert (settled.outcome, settled.deliveries, len(settled.delays_s)) == ("applied", 3, 2)
    assert all(d >= 1 for d in settled.delays_s)


def test_failures_dead_letter_with_their_reason() -> None:
    @handler
    def picky(receipt: SmsReport) -> None:
        if not receipt.success:
            raise PermanentFailure("unknown customer")

    @handler(max_attempts=2)
    def always_later(receipt: SmsUp) -> None:
        raise ValueError("db down")

    run = HandlerTest(picky, always_later).deliver(
        [sample("SmsReport"), sample("SmsReport-failed"), sample("SmsUp")])

    assert [(s.outcome, s.deliveries) for s in run.settled] == [
        ("applied", 1), ("dead_letter", 1), ("dead_letter", 2)]
    assert run.settled[1].reason == "permanent_failure: picky: unknown customer"
    assert run.settled[2].reason.endswith("max_attempts 2 reached: ValueError: db down")


def test_a_lone_handler_that_succeeded_is_the_line_itself_any_other_gets_handlers() -> None:
    @handler
    def picky(receipt: SmsReport) -> None:
        if not receipt.success:
            raise PermanentFailure("unknown customer")

    run = HandlerTest(picky).deliver([sample("SmsReport"), sample("SmsReport-failed")])

    ok, failed = [e for e in run.logs if e["event"] == "receipt_settled"]
    assert (ok["handler"], ok["outcome"], ok["handlers"]) == ("picky", "handled", None)
    assert [(h["handler"], h["outcome"]) for h in failed["handlers"]] == [
        ("picky", "permanent")]


def test_the_global_delivery_limit_dead_letters_an_endless_retry() -> None:
    @handler
    def never(receipt: SmsUp) -> None:
        raise RetryLater("never")

    [settled] = HandlerTest(never, max_deliveries=4).deliver([sample("SmsUp")]).settled
    assert (settled.outcome, settled.deliveries) == ("dead_letter", 4)
    assert settled.reason.startswith("max_dequeue_count: delivered 4 times")


def test_a_handler_that_finished_is_not_run_again_when_another_fails() -> None:
    calls: list[str] = []

    @handler
    def steady(receipt: SmsReport) -> None:
        calls.append(receipt.biz_id)

    @handler
    def flaky_first(receipt: SmsReport) -> None:
        if receipt.meta.dequeue_count == 1:
            raise RetryLater("first attempt")

    run = HandlerTest(steady, flaky_first).deliver([sample("SmsReport"),
                                                    sample("SmsReport-failed")])

    assert run.outcomes() == ["applied", "applied"]
    assert sorted(calls) == sorted({"12345********", "932702304080415357^0"})
    assert run.applied_once()
    assert set(run.calls_of("flaky_first").values()) == {2}
    second = [e for e in run.logs if e["event"] == "receipt_settled" and e["dequeue_count"] == 2]
    assert [{h["handler"]: (h["outcome"], h.get("reason")) for h in e["handlers"]}
            for e in second] == [{"steady": ("ok", "completed_before"),
                                  "flaky_first": ("ok", None)}] * 2


def test_a_batch_handler_and_a_config_policy_are_tested_the_same_way() -> None:
    class Store:
        name = "store"

        def handle_batch(self, receipts: Sequence[SmsReport | IntlSmsReport]) -> BatchResult:
            result = BatchResult()
            for receipt in receipts:
                if isinstance(receipt, IntlSmsReport):
                    result.fail(receipt, "no international table")
            return result

    run = HandlerTest(Store, policy=HandlerPolicy(max_attempts=1)).deliver(
        [sample("SmsReport"), sample("SmsReport-intl")])
    assert run.outcomes() == ["applied", "dead_letter"]
    assert HandlerTest(specs=[HandlerSpec("log")]).deliver(every_sample()).applied_once()
