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
- Every batch goes through the daemon's one lifecycle (`consumer.pipeline.lifecycle`:
  prepare, claim, run on the real dispatcher, record, settle, with `outcome.classify`
  deciding), with Redis and the queue replaced by `consumer.testing.memory`: dedup records
  in a dict, dead letters in a dict, and a queue that delivers a retried receipt again with
  its delivery count raised (the backoff is recorded, not slept) until it is applied or
  dead-lettered (`max_deliveries`: the global `ack.max_dequeue_count`).
- A receipt whose dedup key already completed is a duplicate and runs nothing (the key
  function is the daemon's, with the `[dedup_keys]` overrides given as `dedup_keys`).
- Completion is per handler, as in the daemon: when one handler fails, the handlers that
  finished the receipt are not run again on its redelivery.

Samples are the documented bodies (`consumer/testing/samples/*.json`: Alibaba Cloud's
documentation's examples, phone numbers masked as there), decoded by the daemon's decoder:
`sample(name, **json_overrides)`, `every_sample()` (one per documented body: every class),
`platform_duplicate(receipt)` (the same body under a new MessageId).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

from structlog.testing import capture_logs

from consumer.handler_api import HandlerPolicy
from consumer.handlers.plugins import close_handlers, load_handlers
from consumer.keys import make_key_function
from consumer.pipeline.decode import parse_object
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.lifecycle import Lifecycle, LifecycleParts
from consumer.pipeline.outcome import RetryPolicy, Verdict
from consumer.pipeline.selection import COMPLETED_BEFORE
from consumer.pipeline.stats import Stats
from consumer.receipts import Receipt, ReceiptMeta
from consumer.settings import HandlerSpec
from consumer.testing.memory import KitTransport, KitWork, MemoryDeadLetters, MemoryDedupStore

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
    """What `HandlerTest.deliver` saw: one `Settled` per delivered receipt, in order, how
    often each handler was called and succeeded per dedup key, and the structlog lines
    logged meanwhile (`logs`: the daemon's `receipt_settled` per delivery, the handlers')."""

    settled: list[Settled]
    calls: Counter[tuple[str, str]]
    successes: Counter[tuple[str, str]]
    keys: list[str]
    logs: list[MutableMapping[str, Any]] = field(default_factory=list)

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
        lifecycle = Lifecycle(LifecycleParts(
            MemoryDedupStore(), MemoryDeadLetters(), dispatcher, self._retry,
            completed_ttl_s=7 * 86400.0, key_of=self._key_of), Stats(), threading.Event())
        transport = KitTransport()
        pending = [KitWork(index=i, given=r) for i, r in enumerate(first)]
        try:
            # structlog's lines (the daemon's receipt_settled, the handlers' own) go to
            # `run.logs` instead of the test's output
            with capture_logs() as run.logs:
                while pending:  # every round is one received batch, as MNS would hand it out
                    transport.again = []
                    lifecycle.process(pending, transport, f"kit{next(_owners)}", _LEASE_S)
                    for work in pending:
                        _count(run, work)
                    pending = transport.again
        finally:
            dispatcher.close()
        run.settled = [_settled(transport.settled[i]) for i in range(len(first))]
        return run

    def close(self) -> None:
        """Closes the handlers (their `close()`), as the daemon does at shutdown."""
        close_handlers(self.routes)


_LEASE_S = 3600.0  # nothing else runs: a claim outlives the test
_owners = itertools.count(1)
_OUTCOMES: Mapping[str, Outcome] = {"handled": "applied", "duplicate": "duplicate",
                                    "dead_letter": "dead_letter"}


def _count(run: Run, work: KitWork) -> None:
    """How often each handler ran (and succeeded) with this delivery's receipt."""
    key = run.keys[work.index]
    for outcome in work.outcomes:
        if outcome.reason == COMPLETED_BEFORE or not outcome.handler:
            continue
        run.calls[(outcome.handler, key)] += 1
        if outcome.kind == "ok":
            run.successes[(outcome.handler, key)] += 1


def _settled(work: KitWork) -> Settled:
    decision = work.decision
    assert decision is not None  # settled means decided
    reason = f"{decision.reason}: {decision.detail}" if decision.verdict is Verdict.DEAD_LETTER \
        else ""
    return Settled(work.given, _OUTCOMES[decision.outcome], work.deliveries, reason,
                   work.delays_s, {o.handler: o.kind for o in work.outcomes if o.handler})
