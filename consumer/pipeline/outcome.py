"""The one place that decides what happens to a message: acknowledge, retry later,
dead-letter, or leave it to MNS.

Every stage reports what it saw (a decode error, a dedup claim state, a handler outcome) and
`classify` turns that into a `Decision`; the acker carries decisions out. Keeping the rules
here means a reader can check the whole delivery contract in one screen.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from consumer.clients.retry import exponential_delay
from consumer.errors import DecodeError
from consumer.handler_api import HandlerOutcome
from consumer.pipeline.dedup import ClaimState


class Verdict(enum.Enum):
    ACK = "ack"                  # record completion (if we ran it), then delete
    RETRY = "retry"              # release the claim, hand back with a backoff
    DEAD_LETTER = "dead_letter"  # store raw body + reason, release the claim, delete
    LEAVE = "leave"              # another delivery is on it: touch nothing, MNS re-delivers


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff through the visibility timeout, keyed on the delivery count."""

    retry_base_s: float = 5.0
    retry_max_s: float = 3600.0
    max_dequeue_count: int = 20

    def delay_s(self, dequeue_count: int) -> int:
        """base * 2^(n-1), capped, with up to 10% jitter so retries of a batch spread out.

        Whole seconds; `_classify_handler` clamps them to MNS's 1-43200.
        """
        delay = exponential_delay(dequeue_count, self.retry_base_s, self.retry_max_s)
        delay += random.uniform(0, delay * 0.1)  # noqa: S311 - jitter, not cryptography
        return int(delay)  # the caller clamps to MNS's range, handler delays included


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    outcome: str          # the label of the receipt's log line and metric
    reason: str = ""
    detail: str = ""
    delay_s: int = 0
    ran_handlers: bool = False


StepResult = DecodeError | ClaimState | HandlerOutcome


def classify(result: StepResult, dequeue_count: int, policy: RetryPolicy) -> Decision:
    """Decides the fate of one message from what its last stage reported."""
    if isinstance(result, DecodeError):
        return Decision(Verdict.DEAD_LETTER, "dead_letter", result.reason, result.detail)
    if isinstance(result, ClaimState):
        if result is ClaimState.COMPLETED:
            return Decision(Verdict.ACK, "duplicate")
        if result is ClaimState.IN_PROGRESS:
            return Decision(Verdict.LEAVE, "in_progress")
        raise ValueError("a CLAIMED message goes to the handlers, not to classify")
    return _classify_handler(result, dequeue_count, policy)


def _classify_handler(result: HandlerOutcome, dequeue_count: int,
                      policy: RetryPolicy) -> Decision:
    if result.kind == "ok":
        return Decision(Verdict.ACK, "handled", ran_handlers=True)
    if result.kind == "permanent":
        return Decision(Verdict.DEAD_LETTER, "dead_letter", "permanent_failure",
                        "%s: %s" % (result.handler, result.reason))
    if dequeue_count >= policy.max_dequeue_count:
        detail = "delivered %d times; last: %s: %s" % (dequeue_count, result.handler, result.reason)
        return Decision(Verdict.DEAD_LETTER, "dead_letter", "max_dequeue_count", detail)
    delay = int(result.delay_s) if result.delay_s is not None else policy.delay_s(dequeue_count)
    return Decision(Verdict.RETRY, "retry", result.reason, delay_s=max(1, min(delay, 43200)))


def precheck(dequeue_count: int, policy: RetryPolicy) -> Decision | None:
    """A message delivered more often than allowed is dead-lettered before any handler runs.

    This is what stops a body that crashes the whole process (so no handler outcome is ever
    recorded) from looping forever.
    """
    if dequeue_count > policy.max_dequeue_count:
        detail = "delivered %d times (limit %d) without an outcome; the process may crash on it" % (
            dequeue_count, policy.max_dequeue_count)
        return Decision(Verdict.DEAD_LETTER, "dead_letter", "max_dequeue_count", detail)
    return None
