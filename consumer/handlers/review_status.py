"""`review-status`: the current review state of every signature and template
(`consumer.reports.reviews`)."""

from __future__ import annotations

from collections.abc import Sequence

from consumer.clients.redis_client import RedisClient, connect_option
from consumer.clients.redis_scripts import ScriptPlan
from consumer.handler_api import BatchResult
from consumer.handlers import require_number, require_text, write_plans
from consumer.receipts import Receipt
from consumer.reports.reviews import DEFAULT_PREFIX, ReviewStore


class ReviewStatus:
    """Keeps the latest state (approving, approved, rejected with its reason) of each
    signature and template, with its history, from SignSmsReport / TemplateSmsReport.

    Options: `url` (redis://, required; a password in it never appears in errors), `prefix`
    (default "alicom:reviews"), `history` (reviews kept per item, default 50), `timeout_s`.
    One script call per batch; a Redis failure retries the batch (a repeat changes nothing).
    """

    name = "review-status"
    types: tuple[str, ...] | None = ("SignSmsReport", "TemplateSmsReport")

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, history: int = 50,
                 timeout_s: float = 5.0) -> None:
        require_text(self.name, "prefix", prefix)
        require_number(self.name, "history", history, at_least=1, whole=True)
        require_number(self.name, "timeout_s", timeout_s, above=0)
        self._client = connect_option("review-status handler", url, timeout_s)
        self.store = ReviewStore(self._client, prefix, history)

    @property
    def client(self) -> RedisClient:
        """The Redis client the reviews are written with."""
        return self._client

    def plan(self, receipts: Sequence[Receipt]) -> ScriptPlan[int]:
        """The batch's reviews (a script call each), for `write_plans` to send."""
        return self.store.record_plan(receipts)

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """Records the batch's reviews in one round trip."""
        return write_plans("review status", self._client, [self.plan(receipts)])

    def close(self) -> None:
        """Closes the connection pool."""
        self._client.close()
