"""Review status of signatures and templates, from SignSmsReport / TemplateSmsReport receipts.

Written by the `review-status` handler, read by `alicom-receipts reviews`, the dashboard and
the `alicom_review_items{kind,state}` metric. A signature is known by its `sign_name`, a
template by its `template_code` (else its name; else the review ticket, `order_id`). States
as the platform writes them: `approving` (in review), `approved`, `rejected` (with the
reason); any other value is kept as it came.

Redis layout under `prefix` (default `alicom:reviews`):

* `<prefix>:cur` hash `sign:<name>` / `template:<code>` -> JSON of the latest review;
* `<prefix>:h:<kind>:<name>` list of that item's reviews, newest first (at most `history`).

"Latest" is by the time the platform queued the receipt (MNS EnqueueTime; the time it was
handled when unknown), so a receipt that arrives late does not overwrite a newer state; it
still goes into the history. A receipt seen before (same ticket, state and reason) changes
nothing. One script call per batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from consumer.clients.redis_client import RedisClient, hash_tagged
from consumer.clients.redis_scripts import ScriptCall, ScriptPlan, raise_errors, run_plans
from consumer.receipts import Receipt, SignSmsReport, TemplateSmsReport

__all__ = ["DEFAULT_PREFIX", "STATES", "Review", "ReviewStore", "review_of", "review_state"]

DEFAULT_PREFIX = "alicom:reviews"
STATES = ("approving", "approved", "rejected")
"""The documented states; `alicom_review_items` always has these three."""
_MAX_TEXT = 500

# One call per review; keys only in KEYS, literally, under the family's hash tag (one slot):
# consumer.clients.redis_scripts. KEYS[1] current hash, KEYS[2] the item's history list.
# ARGV: history length, field, doc, at, sig.
# Both keys are read before anything is written: Redis does not undo a script's writes when
# a later command fails (a key of the wrong type), and a history written without the current
# state would make every retry skip the review as seen.
_APPLY = """
local keep, field, doc, at, sig = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local now = redis.call('HGET', KEYS[1], field)
for _, old in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if cjson.decode(old).sig == sig then return 0 end
end
redis.call('LPUSH', KEYS[2], doc)
redis.call('LTRIM', KEYS[2], 0, keep - 1)
if not now or cjson.decode(now).at <= at then redis.call('HSET', KEYS[1], field, doc) end
return 1
"""


@dataclass(frozen=True)
class Review:
    """One review result of a signature or template."""

    kind: str  # "sign" | "template"
    name: str
    state: str
    reason: str = ""
    order_id: str = ""
    at: float = 0.0
    label: str = ""  # a template's name beside its code; the sign source for a signature

    @property
    def field(self) -> str:
        return "%s:%s" % (self.kind, self.name)

    @property
    def sig(self) -> str:
        return "%s|%s|%s" % (self.order_id, self.state, self.reason)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "name": self.name, "state": self.state,
                           "reason": self.reason, "order_id": self.order_id, "at": self.at,
                           "label": self.label, "sig": self.sig}, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Review:
        d: dict[str, Any] = json.loads(raw)
        return cls(str(d["kind"]), str(d["name"]), str(d["state"]), str(d.get("reason", "")),
                   str(d.get("order_id", "")), float(d.get("at", 0)), str(d.get("label", "")))


def review_of(receipt: Receipt, now: float) -> Review | None:
    """The review a receipt reports (None for other types); `now` when its queue time is
    unknown."""
    enqueued = receipt.meta.enqueue_time_ms
    at = enqueued / 1000 if enqueued > 0 else now
    if isinstance(receipt, SignSmsReport):
        return Review("sign", (receipt.sign_name or receipt.order_id)[:_MAX_TEXT],
                      receipt.sign_status.strip().lower(), receipt.reason[:_MAX_TEXT],
                      receipt.order_id, at, receipt.sign_source[:_MAX_TEXT])
    if isinstance(receipt, TemplateSmsReport):
        name = receipt.template_code or receipt.template_name or receipt.order_id
        return Review("template", name[:_MAX_TEXT], receipt.template_status.strip().lower(),
                      receipt.reason[:_MAX_TEXT], receipt.order_id, at,
                      receipt.template_name[:_MAX_TEXT])
    return None


_REVIEW_TYPES = (SignSmsReport, TemplateSmsReport)


def review_state(receipt: Receipt) -> str | None:
    """A review receipt's state as a bounded label (a documented state, else "other");
    None for other receipt types."""
    if isinstance(receipt, SignSmsReport):
        state = receipt.sign_status.strip().lower()
    elif isinstance(receipt, TemplateSmsReport):
        state = receipt.template_status.strip().lower()
    else:
        return None
    return state if state in STATES else "other"


class ReviewStore:
    """Review states in Redis; thread-safe as its client. Errors: redis-py's."""

    def __init__(self, client: RedisClient, prefix: str = DEFAULT_PREFIX, history: int = 50,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prefix = hash_tagged(prefix)
        self._history = history
        self._clock = clock
        self._apply = client.register_script(_APPLY)

    def record(self, receipts: Sequence[Receipt]) -> int:
        """Records the reviews among `receipts`; how many there were."""
        return cast(int, run_plans(self._client, [self.record_plan(receipts)])[0])

    def record_plan(self, receipts: Sequence[Receipt]) -> ScriptPlan[int]:
        """`record` as a plan (`consumer.clients.redis_scripts.run_plans`): a script call per
        review; its finish raises the first error Redis answered with, else gives the count."""
        now = self._clock()
        calls = []
        # A bulk sender's batches are delivery reports: pass them over at the cost of a
        # type test each (review_of is a call per receipt).
        for receipt in [r for r in receipts if isinstance(r, _REVIEW_TYPES)]:
            review = review_of(receipt, now)
            if review is not None:
                calls.append(ScriptCall(
                    self._apply, [self._prefix + ":cur", self._prefix + ":h:" + review.field],
                    [self._history, review.field, review.to_json(), review.at, review.sig]))
        return ScriptPlan(calls, _counted)

    def current(self, state: str | None = None) -> list[Review]:
        """The latest review of every item (only those in `state` if given), by kind, name."""
        raw = cast(dict[bytes, bytes], self._client.hgetall(self._prefix + ":cur"))
        reviews = [Review.from_json(v) for v in raw.values()]
        return sorted((r for r in reviews if state is None or r.state == state),
                      key=lambda r: (r.kind, r.name))

    def history(self, kind: str, name: str) -> list[Review]:
        """An item's reviews, newest first."""
        raw = cast(list[bytes], self._client.lrange(
            "%s:h:%s:%s" % (self._prefix, kind, name), 0, -1))
        return sorted((Review.from_json(r) for r in raw), key=lambda r: -r.at)

    def state_counts(self) -> dict[tuple[str, str], int]:
        """(kind, state) -> how many items are in that state now (documented states at 0)."""
        counts = {(k, s): 0 for k in ("sign", "template") for s in STATES}
        for review in self.current():
            key = (review.kind, review.state)
            counts[key] = counts.get(key, 0) + 1
        return counts


def _counted(replies: list[Any]) -> int:
    raise_errors(replies)
    return len(replies)
