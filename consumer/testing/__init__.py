"""A testing kit for handler authors: run handlers on sample receipts, in-process.

No Redis, no MNS, no sandbox: `HandlerTest.deliver` does to a list of receipts what the
daemon does to what it receives, with the daemon's own parts where they decide something::

    from consumer.testing import HandlerTest, every_sample, platform_duplicate, sample

    def test_my_handler_applies_each_report_once() -> None:
        report = sample("SmsReport")
        run = HandlerTest(MyHandler, options={"prefix": "x"}).deliver(
            [report, platform_duplicate(report), sample("SmsReport-failed")])
        assert run.outcomes() == ["applied", "duplicate", "applied"]
        assert run.applied_once()

- Handlers are built by the real plugin loader (options, `types` and the annotation check,
  names, per-handler policy), so what loads here loads in the daemon.
- Each receipt is routed by class and run on the real dispatcher (thread pool, deadline).
- A receipt whose dedup key already completed is a duplicate and runs nothing (the key
  function is the daemon's, with the `[dedup_keys]` overrides given as `dedup_keys`).
- The real `consumer.pipeline.outcome.classify` decides: a retry is delivered again with
  its delivery count raised (the backoff is recorded, not slept), until it is applied or
  dead-lettered (`max_deliveries`, the global `ack.max_dequeue_count`).
- Completion is per handler, as in the daemon: when one handler fails, the handlers that
  finished the receipt are not run again on its redelivery.

Samples are the documented bodies (`consumer/testing/samples/*.json`: Alibaba Cloud's
documentation's examples, phone numbers masked as there), decoded by the daemon's decoder:
`sample(name, **json_overrides)`, `every_sample()` (one per documented body: every class),
`platform_duplicate(receipt)` (the same body under a new MessageId).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

from consumer.handler_api import HandlerOutcome, HandlerPolicy, handler_tag, worst
from consumer.handlers.plugins import close_handlers, load_handlers
from consumer.keys import make_key_function
from consumer.pipeline.decode import parse_object
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.outcome import RetryPolicy, Verdict, classify
from consumer.pipeline.selection import COMPLETED_BEFORE
from consumer.receipts import Receipt, ReceiptMeta
from consumer.settings import HandlerSpec

__all__ = [
    "HandlerTest",
    "Run",
    "Settled",
    "every_sample",
    "platform_duplicate",
    "sample",
    "sample_body",
    "sample_names",
]

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
Outcome = Literal["applied", "duplicate", "dead_letter"]
#: (position in the delivered list, the receipt, its delivery number, backoffs so far)
_Pending = tuple[int, Receipt, int, tuple[int, ...]]


@cache
def sample_names() -> tuple[str, ...]:
    """The documented single-receipt bodies: "SmsReport", "SmsReport-failed",
    "SmsReport-intl", "SmsUp", ... (the `push-*` array bodies are left out)."""
    return tuple(sorted(p.stem for p in SAMPLES_DIR.glob("*.json")
                        if not p.stem.startswith("push-")))


def sample_body(name: str) -> str:
    """The documented JSON text of sample `name` (`push-<Type>` names a push array)."""
    path = SAMPLES_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no sample {name!r}; known: {', '.join(sample_names())}")
    return path.read_text("utf-8").strip()


def sample(name: str = "SmsReport", *, message_id: str | None = None, dequeue_count: int = 1,
           source: str = "mns", **json_overrides: Any) -> Receipt:
    """The receipt the daemon decodes from sample `name`'s body, with keys of the JSON
    object replaced by `json_overrides` (e.g. `phone_number="1390000****"`)."""
    message_type = name.split("-", maxsplit=1)[0]
    obj = {**json.loads(sample_body(name)), **json_overrides}
    meta = ReceiptMeta(source, f"Alicom-Queue-0-{message_type}" if source == "mns" else "",
                       message_id or f"sample-{name}", dequeue_count)
    return parse_object(message_type, obj, meta)


def every_sample() -> list[Receipt]:
    """One receipt per documented body: every receipt class, SmsReport twice (delivered and
    failed)."""
    return [sample(name) for name in sample_names()]


def platform_duplicate(receipt: Receipt, message_id: str | None = None) -> Receipt:
    """The same receipt delivered again under another MessageId, as the platform may."""
    return replace(receipt, meta=replace(
        receipt.meta, message_id=message_id or receipt.meta.message_id + "-dup"))


@dataclass(frozen=True)
class Settled:
    """How one delivered receipt ended.

    `deliveries`: how often it was delivered (1 when applied at once). `reason`: why it was
    dead-lettered ("" otherwise). `delays_s`: the backoff before each redelivery.
    `handlers`: each handler's last outcome kind ("ok", "retry", "permanent").
    """

    receipt: Receipt
    outcome: Outcome
    deliveries: int
    reason: str = ""
    delays_s: tuple[int, ...] = ()
    handlers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Run:
    """What `HandlerTest.deliver` saw: one `Settled` per delivered receipt, in order, and
    how often each handler was called and succeeded per dedup key."""

    settled: list[Settled]
    calls: Counter[tuple[str, str]]
    successes: Counter[tuple[str, str]]
    keys: list[str]

    def outcomes(self) -> list[Outcome]:
        return [s.outcome for s in self.settled]

    def outcome(self, receipt: Receipt) -> Settled:
        """The Settled of this very receipt object (the first one given)."""
        for settled in self.settled:
            if settled.receipt is receipt:
                return settled
        raise KeyError(f"receipt {receipt.meta.message_id!r} was not delivered in this run")

    def calls_of(self, handler: str) -> dict[str, int]:
        """Dedup key -> how often `handler` was called with it (retries included)."""
        return {key: n for (name, key), n in self.calls.items() if name == handler}

    def applied_once(self) -> bool:
        """True when every handler succeeded exactly once per key it succeeded for: no
        duplicate, retry or other handler's failure ran a finished handler again."""
        return all(n == 1 for n in self.successes.values())


class HandlerTest:
    """Builds handlers as the daemon does and delivers receipts to them (see the module).

    `targets`: handler functions, classes or objects (each built like a `[[handlers]]`
    entry; give several to test them together). `options`, `types`, `name`, `policy` apply
    to every target (use one HandlerTest per differently configured handler, or `specs`
    for `[[handlers]]` entries by `use` name). `deadline_s`: the global handler deadline.
    """

    def __init__(self, *targets: object, options: Mapping[str, Any] | None = None,
                 types: Sequence[str] | None = None, name: str | None = None,
                 policy: HandlerPolicy | None = None, specs: Iterable[HandlerSpec] = (),
                 deadline_s: float = 30.0, max_deliveries: int = 20,
                 dedup_keys: Mapping[str, Sequence[str]] | None = None) -> None:
        given = {f"<test target {i}>": target for i, target in enumerate(targets)}
        all_specs = [HandlerSpec(use, None if types is None else tuple(types),
                                 dict(options or {}), name, policy or HandlerPolicy())
                     for use in given]
        self.routes = load_handlers([*all_specs, *specs], given)
        self._retry = RetryPolicy(max_dequeue_count=max_deliveries)
        self._deadline_s = deadline_s
        self._key_of: Callable[[Receipt], str] = make_key_function(dedup_keys)

    def deliver(self, receipts: Iterable[Receipt]) -> Run:
        """Delivers the receipts as one batch, redelivers retries until each settled."""
        first = list(receipts)
        run = Run([], Counter(), Counter(), [self._key_of(r) for r in first])
        dispatcher = Dispatcher(self.routes, self._deadline_s, retry=self._retry)
        try:
            _Delivery(self, dispatcher, run).go(first)
        finally:
            dispatcher.close()
        return run

    def close(self) -> None:
        """Closes the handlers (their `close()`), as the daemon does at shutdown."""
        close_handlers(self.routes)


@dataclass
class _Delivery:
    """One `deliver` call: the in-memory dedup records and the redelivery loop."""

    test: HandlerTest
    dispatcher: Dispatcher
    run: Run
    completed: set[str] = field(default_factory=set)
    finished_by: dict[str, set[str]] = field(default_factory=dict)

    def go(self, first: list[Receipt]) -> None:
        pending: list[_Pending] = [(index, receipt, 1, ()) for index, receipt in enumerate(first)]
        settled: dict[int, Settled] = {}
        while pending:
            pending = self._round(pending, settled)
        self.run.settled = [settled[i] for i in range(len(first))]

    def _round(self, pending: list[_Pending], settled: dict[int, Settled]) -> list[_Pending]:
        todo: list[_Pending] = []
        later: list[_Pending] = []
        claimed: set[str] = set()
        for item in pending:
            index, receipt, delivery, delays = item
            key = self.run.keys[index]
            if key in self.completed:
                settled[index] = Settled(receipt, "duplicate", delivery, "", delays)
            elif key in claimed:  # in progress in this batch: MNS brings it back later
                later.append((index, receipt, delivery + 1, delays))
            else:
                claimed.add(key)
                todo.append(item)
        as_delivered = [replace(r, meta=replace(r.meta, dequeue_count=d))
                        for _, r, d, _ in todo]
        results = self.dispatcher.dispatch_each(
            as_delivered, [self.finished_by.get(self.run.keys[i], set()) for i, *_ in todo])
        for (index, receipt, delivery, delays), outcomes in zip(todo, results, strict=True):
            again = self._settle(index, receipt, delivery, delays, outcomes, settled)
            if again is not None:
                later.append(again)
        return later

    def _settle(self, index: int, receipt: Receipt, delivery: int, delays: tuple[int, ...],
                outcomes: list[HandlerOutcome], settled: dict[int, Settled]) -> _Pending | None:
        key = self.run.keys[index]
        for outcome in outcomes:
            if outcome.reason == COMPLETED_BEFORE or not outcome.handler:
                continue
            self.run.calls[(outcome.handler, key)] += 1
            if outcome.kind == "ok":
                self.run.successes[(outcome.handler, key)] += 1
                self.finished_by.setdefault(key, set()).add(handler_tag(outcome.handler))
        decision = classify(worst(outcomes), delivery, self.test._retry)
        kinds = {o.handler: o.kind for o in outcomes if o.handler}
        if decision.verdict is Verdict.RETRY:
            return index, receipt, delivery + 1, (*delays, decision.delay_s)
        if decision.verdict is Verdict.ACK:
            self.completed.add(key)
            settled[index] = Settled(receipt, "applied", delivery, "", delays, kinds)
        else:
            settled[index] = Settled(receipt, "dead_letter", delivery,
                                     f"{decision.reason}: {decision.detail}", delays, kinds)
        return None
