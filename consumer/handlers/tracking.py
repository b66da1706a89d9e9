"""`send-tracker`: clears a tracked send (`consumer.reports.tracking`) when its SmsReport
arrives, and moves the number of its send task (`consumer.reports.tasks`) to its outcome."""

from __future__ import annotations

import time
from collections.abc import Sequence

from consumer.clients.redis_client import RedisClient
from consumer.clients.redis_scripts import ScriptPlan
from consumer.handlers import PlannedRedisHandler, require_number, require_text
from consumer.handlers.number_hygiene import receipt_day
from consumer.receipts import Receipt, SmsReport, shanghai_day
from consumer.reports.number_rules import Classifier
from consumer.reports.tracking import SendTracker as Tracker
from consumer.reports.tracking import TrackingSettings


class SendTracker(PlannedRedisHandler):
    """Stops tracking each send whose delivery report (success or failure) arrived, so that
    `alicom-receipts reconcile` only asks about sends still without one.

    Options: `url` (redis://, required; may hold a password, which never appears in errors),
    `key_prefix`, `tasks_prefix`, `hash_numbers` (as in `[tracking]`), `timeout_s`.
    One round trip per batch (a script call per send call: a second round trip only for a
    send tracked on another day than its receipt's send time says); a receipt whose send was
    never tracked is fine (nothing to clear or move). A failure's reason in the task is the
    number rules' default classification (`consumer.reports.number_rules`). International reports
    (`IntlSmsReport`) have no BizId and are passed over. A Redis failure retries the batch:
    clearing and moving are idempotent.
    """

    name = "send-tracker"
    types: tuple[str, ...] | None = ("SmsReport", "IntlSmsReport")

    def __init__(self, url: str | RedisClient, key_prefix: str = TrackingSettings.key_prefix,
                 tasks_prefix: str = TrackingSettings.tasks_prefix,
                 hash_numbers: bool = False, timeout_s: float = 5.0) -> None:
        require_text(self.name, "key_prefix", key_prefix)
        require_text(self.name, "tasks_prefix", tasks_prefix)
        require_number(self.name, "timeout_s", timeout_s, above=0)
        self._tracker = Tracker(self._connect(url, timeout_s), TrackingSettings(
            key_prefix=key_prefix, tasks_prefix=tasks_prefix,
            hash_numbers=hash_numbers))
        self._classify = Classifier().reason

    def plan(self, receipts: Sequence[Receipt]) -> ScriptPlan[list[bool]]:
        """The batch's clearing and settling: one script call."""
        number_of, classify = self._tracker.ids.of, self._classify
        # A receipt without a readable send time: today is the best guess.
        today = shanghai_day(time.time())
        sends = []
        for r in receipts:
            if not isinstance(r, SmsReport):
                continue
            biz, phone = r.biz_id, r.phone_number
            if biz and phone and "|" not in biz and "|" not in phone:
                ok = r.success
                sends.append((biz, phone, number_of(phone), receipt_day(r.send_time, today), ok,
                              r.err_code, "" if ok else classify(r.err_code, r.err_msg) or ""))
        return self._tracker.settle_plan(sends)
