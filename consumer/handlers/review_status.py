"""`review-status`: the current review state of every signature and template
(`consumer.reports.reviews`)."""

from __future__ import annotations

from collections.abc import Sequence

from consumer.clients.redis_client import RedisClient
from consumer.clients.redis_scripts import ScriptPlan
from consumer.handlers import PlannedRedisHandler, require_number, require_text
from consumer.receipts import Receipt
from consumer.reports.reviews import DEFAULT_PREFIX, ReviewStore


class ReviewStatus(PlannedRedisHandler):
    """Keeps the latest state (approving, approved, rejected with its reason) of each
    signature and template, with its history, from SignSmsReport / TemplateSmsReport.

    Options: `url` (redis://, required; a password in it never appears in errors), `prefix`
    (default "alicom:reviews"), `history` (reviews kept per item, default 50), `timeout_s`.
    One script call per batch; a Redis failure retries the batch (a repeat changes nothing).
    """

    name = "review-status"
    types: tuple[str, ...] | None = ("SignSmsReport", "TemplateSmsReport")

    def __init__(self, url: str | RedisClient, prefix: str = DEFAULT_PREFIX, history: int = 50,
                 timeout_s: float = 5.0) -> None:
        require_text(self.name, "prefix", prefix)
        require_number(self.name, "history", history, at_least=1, whole=True)
        require_number(self.name, "timeout_s", timeout_s, above=0)
        self.store = ReviewStore(self._connect(url, timeout_s), prefix, history)

    def plan(self, receipts: Sequence[Receipt]) -> ScriptPlan[int]:
        """The batch's reviews: a script call each."""
        return self.store.record_plan(receipts)
