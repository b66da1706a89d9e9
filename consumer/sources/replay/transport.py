"""Dead-letter replay as a source of the one lifecycle (consumer.pipeline.lifecycle).

`alicom-receipts dead-letters replay` runs letters through the same stages as a fresh
delivery, in the calling process: decode, dedup claim, the configured handlers behind the
crash guard, `outcome.classify`, the completion record (held until Redis takes it), with the
one Redis retry policy. The receipt queues belong to Alibaba's account (customers may only
receive and delete), so nothing is sent back to MNS; the dead-letter store is the source:

* acknowledge: a letter whose receipt was applied (or already was) is removed;
* dead letter again (a decode error, a handler's permanent failure): the same letter is
  updated in place (same id, the new reason), never stored twice;
* hand back (a retry) and leave (a worker is on it right now): the letter stays.

A replay is a fresh attempt: its delivery count is 1, so a letter dead-lettered for
`max_dequeue_count` runs again instead of being refused before its handlers.

Only the handlers that failed run: those the letter names (`DeadLetter.handlers`), narrowed
to `chosen` (`--handler NAME`) when given; a handler that finished the receipt never runs
again (its dedup record says so). A handler left out stays failed: the letter stays, naming
it.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from consumer.pipeline.deadletter import DeadLetter
from consumer.pipeline.deadletter_store import RedisDeadLetterStore
from consumer.pipeline.decode import decode_body, parse_json
from consumer.pipeline.lifecycle import Lifecycle, Work
from consumer.pipeline.outcome import Decision, Verdict
from consumer.pipeline.selection import Selection
from consumer.receipts import Receipt, ReceiptMeta

__all__ = ["ReplayTransport", "Replayed", "replay"]

_BATCH = 50


@dataclass(slots=True, eq=False, kw_only=True)
class Replayed(Work):
    """One letter on its way through the lifecycle; `removed` once it left the store."""

    letter: DeadLetter
    removed: bool = False

    @property
    def ok(self) -> bool:
        """Applied now or before, and gone from the store."""
        return self.removed

    def summary(self) -> str:
        """What happened, for the command's one line per letter."""
        d = self.decision
        if d is None:
            return "not replayed"
        if d.verdict is Verdict.ACK:
            if not self.removed:
                return "applied, but its letter could not be removed (%s)" % self.key
            return ("applied (%s)" if d.ran_handlers else "already applied (%s)") % self.key
        if d.verdict is Verdict.LEAVE:
            return "being handled by a worker right now (%s)" % self.key
        if d.verdict is Verdict.RETRY:
            return "retry again: %s" % (d.reason or "retry")
        return "still dead: %s: %s" % (d.reason, d.detail)


class ReplayTransport:
    """`Transport[Replayed]` over the dead-letter store."""

    source = "replay"

    def __init__(self, store: RedisDeadLetterStore, lifecycle: Lifecycle) -> None:
        self._store = store
        self._lifecycle = lifecycle

    def decode(self, work: Replayed) -> Receipt:
        return receipt_of(work.letter)

    def dead_letter(self, work: Replayed, decision: Decision, now_ms: int) -> DeadLetter:
        return dataclasses.replace(work.letter, reason=decision.reason, detail=decision.detail,
                                   dead_at_ms=now_ms)

    def acknowledge(self, items: Sequence[Replayed]) -> None:
        for work in items:
            if work.decision is not None and work.decision.verdict is Verdict.ACK:
                letter_id = work.letter.id
                self._lifecycle.parts.redis_retry.call(
                    "dead-letter remove", lambda i=letter_id: self._store.remove(i),  # type: ignore[misc]
                    self._lifecycle.stop)
                work.removed = True

    def hand_back(self, items: Sequence[Replayed]) -> None:
        pass  # the letter stays in the store, to be replayed again

    def finish(self, items: Sequence[Replayed]) -> None:
        pass

    def log_fields(self, work: Replayed) -> dict[str, object]:
        return {"letter_id": work.letter.id, "queue": work.letter.queue}


def replay(letters: Sequence[DeadLetter], lifecycle: Lifecycle, store: RedisDeadLetterStore,
           lease_s: float, chosen: frozenset[str] | None = None) -> list[Replayed]:
    """Runs the letters through the lifecycle in batches; one `Replayed` per letter, in order.

    `lease_s` is the claim's lease (the handler deadline and a margin); `chosen`: the only
    handlers to run (see the module docstring). Raises TransientError when Redis does not
    answer a claim (nothing of that batch ran).
    """
    transport = ReplayTransport(store, lifecycle)
    out = [Replayed(letter=d, only=_to_run(d, chosen)) for d in letters]
    for start in range(0, len(out), _BATCH):
        lifecycle.process(out[start:start + _BATCH], transport, secrets.token_hex(8), lease_s)
    return out


def _to_run(letter: DeadLetter, chosen: frozenset[str] | None) -> Selection | None:
    """The handlers a replay of this letter runs; None: every one not finished."""
    failed = frozenset(letter.handlers) or None
    if failed is None:
        return None if chosen is None else Selection(chosen)
    return Selection(failed if chosen is None else failed & chosen, failed)


def receipt_of(d: DeadLetter) -> Receipt:
    meta = ReceiptMeta(source="replay", queue=d.queue, message_id=d.message_id,
                       dequeue_count=d.dequeue_count, enqueue_time_ms=d.enqueue_time_ms,
                       first_dequeue_time_ms=d.first_dequeue_time_ms)
    if d.source == "mns":
        return decode_body(d.message_type, d.body_bytes(), None, meta)
    # A pushed receipt's JSON text; a byte that is not UTF-8 becomes a lone surrogate,
    # which parse_json refuses as not_utf8.
    return parse_json(d.message_type, d.body_bytes().decode("utf-8", "surrogateescape"), meta)
