"""The one receipt lifecycle: prepare -> claim -> run -> record -> settle, for every source.

Every path that applies receipts (the MNS worker, the push worker, reconcile, dead-letter
replay) goes through `Lifecycle`; only what differs per source sits behind `Transport` (in
the spirit of Dramatiq's `broker.Consumer` and Powertools' persistence layer): how a body
becomes a receipt, what a dead letter of it looks like, and how it is acknowledged or handed
back at its source. `dedup.claim`, the completion record and the release are called here
and nowhere else.

    prepare   precheck (past max deliveries: dead letter without running), decode (a decode
              error: dead letter with the raw body), dedup key
    claim     one script call per batch (CLAIMED runs; COMPLETED is a duplicate: ack;
              IN_PROGRESS: leave it, another delivery is on it)
    run       the dispatcher, behind a crash guard (a crash retries the whole batch), and
              `outcome.classify`, the one decision function; a handler stuck past its
              deadline is decided when it returns (`late`), one never started (the process
              stops) is handed back
    record    one try at the completion record right after the handlers returned (shrinks
              the crash window to one round trip); `settle` holds what this could not write
    settle    dead letters stored, completions recorded, claims of retried/dead-lettered
              receipts released; only then acknowledged or handed back at the source; one
              `receipt_settled` line and one outcome metric per receipt
              (`consumer.pipeline.settled_line`)

The contract of `settle`:

* Nothing is acknowledged without its completion record or its stored dead letter.
* Once a handler returned, its result is held by this process until the completion is
  recorded: while Redis does not answer, the completion is retried (quietly, one log line
  when the hold starts and one when it ends) for as long as `stop` is not set. The items
  stay in hand at their source meanwhile with nothing asked of the transport (the MNS
  heartbeat keeps extending the visibility of every message in hand; the push worker's
  leases keep its entries pending to it and out of reclaims), so no other copy of the
  receipt runs meanwhile. When `stop` ends the wait (the shutdown budget ran out),
  each receipt still held is logged as one `completion_unrecorded` line (key, handler) and
  counted: exactly those may run again.
* A completion found already COMPLETED (a retry after a lost reply) counts as handled, not
  as a lost claim.
* Every other Redis step (dead letters, releases) has the one bounded retry policy,
  `RedisRetry`; when it gives up, nothing of that step is acknowledged and the source
  delivers again later (dead-letter ids are stable per message, so a body is stored once).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar, cast

import structlog

from consumer.errors import AlicomReceiptsError, DecodeError, TransientError
from consumer.handler_api import HandlerOutcome, handler_tag, worst
from consumer.keys import key_names
from consumer.pipeline.deadletter import DeadLetter
from consumer.pipeline.dedup import ClaimState, Completion
from consumer.pipeline.dispatch import DISPATCHER_CRASHED, NOT_STARTED, STUCK
from consumer.pipeline.outcome import Decision, Verdict, classify, precheck
from consumer.pipeline.settled_line import report_settled
from consumer.pipeline.stats import Stats
from consumer.pipeline.work import Dispatch, LifecycleParts, RedisRetry, Transport, Work
from consumer.receipts import Receipt

__all__ = ["Dispatch", "Lifecycle", "LifecycleParts", "RedisRetry", "Transport", "Work"]

log = structlog.get_logger("alicom_receipts.lifecycle")
W = TypeVar("W", bound=Work)
#: A receipt whose handler never started (the process stops): back to its source at once.
HANDED_BACK = Decision(Verdict.RETRY, "handed_back", NOT_STARTED, delay_s=1)
#: A claim with less of its lease left than this is confirmed before it runs (`confirm`).
CONFIRM_MARGIN_S = 1.0


class Lifecycle:
    """The stages over batches of `Work`; thread-safe (each call works on its own items).

    `stop` ends every retry and every held completion (set when the shutdown budget ran out).
    """

    def __init__(self, parts: LifecycleParts, stats: Stats, stop: threading.Event) -> None:
        self.parts = parts
        self.stats = stats
        self.stop = stop
        self._retry = parts.redis_retry

    # -- prepare, claim, run, record ---------------------------------------------------

    def prepare(self, items: Sequence[W], transport: Transport[W]) -> list[W]:
        """precheck, decode, key; returns the items to claim (the others have a decision)."""
        claimable: list[W] = []
        policy, key_of = self.parts.policy, self.parts.key_of
        for work in items:
            early = precheck(work.deliveries, policy)
            if early is not None:
                work.decision = early
                continue
            try:
                work.receipt = transport.decode(work)
            except DecodeError as exc:
                self.stats.incr("decode_errors")
                work.decision = classify(exc, work.deliveries, policy)
                continue
            work.key, work.legacy = key_names(key_of, work.receipt)
            claimable.append(work)
        return claimable

    def claim(self, items: Sequence[W], owner: str, lease_s: float) -> list[W]:
        """One script call; returns the CLAIMED items (to run), the others get a decision.

        Raises TransientError when Redis does not answer: nothing was claimed or run, the
        caller lets its source deliver them again.
        """
        if not items:
            return []
        for work in items:
            work.owner = owner
        return self._claimed(items, owner, lease_s, again=False)

    def confirm(self, items: Sequence[W], lease_s: float) -> tuple[list[W], list[W]]:
        """(the items still ours to run, the items it decided not to run: to settle), each in
        order; call it right before they run.

        An item that waited (for a runner, for the isolation gate) past its lease while the
        heartbeat could not renew it (Redis away, its visibility extension refused) may have
        lost its claim: its message became visible again, another delivery of it (in this
        process or another) claimed the lapsed record and runs it. Such an item is claimed
        again under its owner first (the bounded Redis retry): one another live delivery
        holds is left (LEAVE), a completed one is a duplicate, and one Redis cannot confirm
        runs nothing (LEAVE: the message comes back). A fresh lease costs nothing.
        """
        now = time.monotonic()
        stale = [w for w in items if w.lease_until - now < CONFIRM_MARGIN_S]
        for owner, group in _by_owner(stale).items():
            try:
                self._retry.call("dedup confirm",
                                 partial(self._claimed, group, owner, lease_s, again=True),
                                 self.stop)
            except TransientError as exc:
                for work in group:
                    work.claimed = False
                    work.decision = Decision(Verdict.LEAVE, "in_progress", "claim_unconfirmed",
                                             str(exc))
        if not stale:
            return list(items), []
        return ([w for w in items if w.decision is None],
                [w for w in items if w.decision is not None])

    def _claimed(self, items: Sequence[W], owner: str, lease_s: float, again: bool) -> list[W]:
        """Claims `items` for `owner` (again: a confirmation, which keeps `suspect`)."""
        began = time.monotonic()
        try:
            # The old clear-text names too: records written before keys were hashed still
            # catch their duplicates until they expire (consumer.keys).
            legacy = [w.legacy for w in items if w.legacy is not None]
            claims = self.parts.dedup.claim_each(
                [str(w.key) for w in items], owner, lease_s,
                legacy=legacy if len(legacy) == len(items) else ())
        except TransientError:
            self.stats.incr("redis_errors")
            raise
        to_run: list[W] = []
        policy = self.parts.policy
        for work, claim in zip(items, claims, strict=True):
            # The same receipt twice in one batch is CLAIMED once and IN_PROGRESS after (the
            # DedupStore contract): the first copy runs, the other waits for its outcome.
            if claim.state is ClaimState.CLAIMED:
                work.claimed, work.done = True, work.done | claim.done
                work.lease_until = began + lease_s
                if not again:
                    work.suspect = work.deliveries > 1 and not claim.settled_before
                to_run.append(work)
            else:
                work.claimed = False
                work.decision = classify(claim.state, work.deliveries, policy)
        return to_run

    def run(self, items: Sequence[W],
            late: Callable[[list[W]], None] | None = None) -> list[W]:
        """The handlers not finished before, behind the crash guard; each receipt is decided
        from the worst of its handlers' outcomes, gets its `done` handlers, and its
        completion is tried at once (`record`). Returns the items decided now, in order.

        With `late`, a receipt whose handler is stuck past its deadline stays undecided (its
        message stays ours); once the handler returned it is decided, recorded and passed
        to `late`. A receipt whose handler never started (the dispatcher was closed: the
        process stops) is handed back as it came (outcome "handed_back").
        """
        if not items:
            return []
        self.stats.add_in_flight(len(items))
        began = time.monotonic()
        for work in items:
            work.running_since = began  # its lease is held while it runs (`Work`)
        receipts = [cast(Receipt, w.receipt) for w in items]
        try:
            per_handler = self.parts.dispatcher.dispatch_each(
                receipts, [w.done for w in items],
                late=None if late is None else partial(self._late, items, late),
                only=[w.only for w in items])
        except Exception:  # a dispatcher crash must not lose the batch: it is retried
            log.exception("dispatch_crashed", receipts=len(items))
            per_handler = [[DISPATCHER_CRASHED]] * len(items)
        done: list[W] = []
        for work, outcomes in zip(items, per_handler, strict=True):
            outcome = worst(outcomes)
            if outcome.reason != STUCK:
                done.append(self._decide(work, outcomes, outcome))
        self.stats.add_in_flight(-len(done))
        self.record(done)
        return done

    def _late(self, items: Sequence[W], late: Callable[[list[W]], None], index: int,
              outcomes: list[HandlerOutcome]) -> None:
        work = self._decide(items[index], outcomes)
        self.stats.add_in_flight(-1)
        self.record([work])
        late([work])

    def _decide(self, work: W, outcomes: list[HandlerOutcome],
                outcome: HandlerOutcome | None = None) -> W:
        """Decides `work` from its handlers' `outcomes` (`outcome`: their worst, if known)."""
        outcome = outcome or worst(outcomes)
        work.running_since = None
        work.decision = HANDED_BACK if outcome.reason == NOT_STARTED else classify(
            outcome, work.deliveries, self.parts.policy)
        work.handler, work.duration_s = outcome.handler, outcome.duration_s
        work.outcomes = tuple(outcomes)
        if work.decision.verdict is not Verdict.ACK:
            # Only a release writes them (`_release`): an acknowledged receipt's record is
            # COMPLETED whole, so a receipt with several handlers skips the set per receipt.
            work.done = work.done | {handler_tag(o.handler) for o in outcomes
                                     if o.kind == "ok" and o.handler}
        return work

    def record(self, items: Sequence[W]) -> None:
        """One try at the completion records right after the handlers returned; what Redis
        did not take now, `settle` holds and retries."""
        ran = [w for w in items if w.completed is None and w.decision is not None
               and w.decision.ran_handlers]
        for owner, group in _by_owner(ran).items():
            try:
                results = self.parts.dedup.complete([str(w.key) for w in group], owner,
                                                    self.parts.completed_ttl_s)
            except TransientError:
                continue
            _note(group, results)

    def process(self, items: Sequence[W], transport: Transport[W], owner: str,
                lease_s: float) -> None:
        """The whole lifecycle for one batch on the calling thread (push, reconcile, replay).

        Raises TransientError when the claim failed: nothing ran, nothing is settled.
        """
        to_claim = self.prepare(items, transport)
        self.run(self.claim(to_claim, owner, lease_s))
        self.settle(items, transport)

    # -- settle --------------------------------------------------------------------------

    def settle(self, items: Sequence[W], transport: Transport[W]) -> None:
        """Carries out every item's decision in the safe order (module docstring); each item
        is reported once and finished, whatever fails."""
        by: dict[Verdict, list[W]] = {v: [] for v in Verdict}
        for work in items:
            by[work.decision.verdict].append(work)  # type: ignore[union-attr]  # decided by now
        try:
            done = self._store_dead_letters(by[Verdict.DEAD_LETTER], transport)
            done += self._complete(by[Verdict.ACK], transport)
            self._release(by[Verdict.RETRY] + [w for w in by[Verdict.DEAD_LETTER] if w.claimed])
            self._carry_out(transport.acknowledge, done)
            if by[Verdict.RETRY]:
                self._carry_out(transport.hand_back, by[Verdict.RETRY])
                back = sum(1 for w in by[Verdict.RETRY] if w.decision is HANDED_BACK)
                self.stats.incr("handed_back", back)
                self.stats.incr("retries", len(by[Verdict.RETRY]) - back)
            if by[Verdict.LEAVE]:
                self.stats.incr("in_progress_skipped", len(by[Verdict.LEAVE]))
        finally:
            report_settled(items, transport, self.stats)
            transport.finish(items)

    def _carry_out(self, step: Callable[[Sequence[W]], None], items: list[W]) -> None:
        if not items:
            return
        try:
            step(items)
        except AlicomReceiptsError as exc:
            # The source delivers them again; their records (or letters) meet them then.
            log.error("settle_failed", step=step.__name__, error=str(exc),  # noqa: TRY400 - an outage
                      receipts=len(items))

    def _store_dead_letters(self, dead: list[W], transport: Transport[W]) -> list[W]:
        """Stores the letters (one transaction); returns the items whose letter is stored."""
        if not dead:
            return []
        now_ms = int(time.time() * 1000)
        letters = [_naming_failed(transport.dead_letter(w, w.decision, now_ms), w)  # type: ignore[arg-type]  # decided
                   for w in dead]
        try:
            self._retry.call("dead-letter put",
                             lambda: self.parts.dead_letters.put_many(letters), self.stop)
        except TransientError as exc:
            self.stats.incr("redis_errors")
            log.error("settle_failed", step="dead_letter", error=str(exc),  # noqa: TRY400 - an outage
                      receipts=len(dead))
            return []
        self.stats.incr("dead_letters", len(dead))
        return dead

    def _complete(self, acked: list[W], transport: Transport[W]) -> list[W]:
        """Completion records of the items that ran (held until recorded); returns the
        acknowledgeable ones, duplicates included."""
        ran = [w for w in acked if w.decision.ran_handlers]  # type: ignore[union-attr]
        done = [w for w in acked if not w.decision.ran_handlers]  # type: ignore[union-attr]
        self.stats.incr("duplicates", len(done))
        todo = [w for w in ran if w.completed is None]
        if todo:
            self._hold_until_recorded(todo, transport)
        for work in ran:
            if work.completed:
                done.append(work)
            elif work.completed is False:
                # Another delivery holds the claim now; it acknowledges its own copy.
                self.stats.incr("lost_claims")
                log.warning("claim_lost", dedup_key=work.key, **transport.log_fields(work))
        self.stats.incr("handled", sum(1 for w in ran if w.completed))
        return done

    def _hold_until_recorded(self, todo: list[W], transport: Transport[W]) -> None:
        for owner, group in _by_owner(todo).items():
            keys = [str(w.key) for w in group]

            def complete(keys: list[str] = keys, owner: str = owner) -> list[Completion]:
                return self.parts.dedup.complete(keys, owner, self.parts.completed_ttl_s)

            results: list[Completion] | None
            try:
                results = self._retry.call("dedup complete", complete, self.stop)
            except TransientError as exc:
                self.stats.incr("redis_errors")
                results = self._hold(group, complete, transport, exc)
            if results is not None:
                _note(group, results)

    def _hold(self, group: list[W], complete: Callable[[], list[Completion]],
              transport: Transport[W], error: TransientError) -> list[Completion] | None:
        """Retries the completion until Redis answers or `stop`; None when given up."""
        began = time.monotonic()
        log.warning("completion_held", receipts=len(group), error=str(error))
        try:
            results = self._retry.until_answered("dedup complete", complete, self.stop)
        except TransientError:
            for work in group:
                log.error("completion_unrecorded", dedup_key=work.key,  # noqa: TRY400 - an outage
                          handler=work.handler, **transport.log_fields(work))
            self.stats.incr("completion_unrecorded", len(group))
            return None
        log.info("completion_recorded_after_wait", receipts=len(group),
                 waited_s=round(time.monotonic() - began, 2))
        return results

    def _release(self, items: list[W]) -> None:
        """Claims of retried and dead-lettered receipts go, so the next delivery (or a
        replay) runs; the record keeps the handlers that finished (`Work.done`), so only
        the others run then. If Redis stays away the lease ends by itself."""
        for owner, group in _by_owner([w for w in items if w.claimed]).items():
            keys = [str(w.key) for w in group]
            done = [w.done for w in group]

            def release(keys: list[str] = keys, owner: str = owner,
                        done: list[frozenset[str]] = done) -> list[bool]:
                return self.parts.dedup.release(keys, owner, done, self.parts.completed_ttl_s)

            try:
                self._retry.call("dedup release", release, self.stop)
            except TransientError as exc:
                self.stats.incr("redis_errors")
                log.warning("release_failed", receipts=len(keys), error=str(exc))


def _naming_failed(letter: DeadLetter, work: Work) -> DeadLetter:
    """The letter with the handlers that failed the receipt (a replay runs only those)."""
    failed = tuple(sorted({o.handler for o in work.outcomes if o.kind != "ok" and o.handler}))
    return dataclasses.replace(letter, handlers=failed) if failed else letter


def _by_owner(items: Sequence[W]) -> dict[str, list[W]]:
    groups: dict[str, list[W]] = defaultdict(list)
    for work in items:
        groups[work.owner].append(work)
    return groups


def _note(group: Sequence[Work], results: Sequence[Completion]) -> None:
    for work, result in zip(group, results, strict=True):
        work.completed = result.done
