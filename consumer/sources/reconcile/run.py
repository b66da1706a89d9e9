"""`alicom-receipts reconcile [--config FILE] [--grace 15m]`: recover lost SmsReport receipts.

The platform says receipts can be lost. Sends recorded with `consumer.reports.tracking.SendTracker`
and still pending after the grace period are looked up one by one with Dysmsapi
`QuerySendDetails` (official SDK, the long-lived AccessKey of `consumer.clients.credentials`; every
page; a token bucket of `qps` requests a second; throttled and transient answers retried
with tenacity's random exponential backoff). For each send:

* SendStatus 2 (failed) or 3 (delivered): the answer goes through the one lifecycle
  (consumer.pipeline.lifecycle) in batches over `ReconcileTransport`: an SmsReport receipt is
  built from it (`parse_object`, meta source "reconcile"), claimed, handled by the
  configured handlers behind the crash guard, decided by `outcome.classify`, then recorded,
  dead-lettered or released with the one Redis retry policy. A receipt that came through MNS
  too, before or after, has the same dedup key (`SmsReport:<biz_id>:<phone>`), so it is
  applied once. Applied, duplicate and dead-lettered sends stop being tracked (the
  transport's acknowledge); a retried one stays tracked for the next run (its hand back).
* SendStatus 1 (waiting for the carrier), no record yet, or a receipt a worker is handling
  right now: stays pending.
* Sent more than `window_days` (30) ago, which QuerySendDetails no longer covers: reported,
  dead-lettered with reason "beyond_query_window", and no longer tracked.

Exit status: 0 when every pending send was settled or legitimately left pending; 1 when a
lookup failed (after its retries) or a handler asked for a retry; 2 for a configuration error.
One summary line goes to stdout; logs (structlog) to stderr.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from consumer.clients.redis_client import RedisClient, connect, transient_from_redis
from consumer.clients.redis_lease import hold, holder_of
from consumer.errors import AlicomReceiptsError, AuthError, TransientError
from consumer.handlers.plugins import close_handlers, handler_dispatcher, load_handlers
from consumer.pipeline.deadletter import DeadLetter, message_letter_id
from consumer.pipeline.deadletter_store import RedisDeadLetterStore
from consumer.pipeline.decode import parse_object
from consumer.pipeline.dedup import DedupStore, RedisDedupStore, replication_of
from consumer.pipeline.lifecycle import Dispatch, Lifecycle, LifecycleParts, Work
from consumer.pipeline.outcome import Decision, RetryPolicy
from consumer.pipeline.stats import Stats
from consumer.receipts import Receipt, ReceiptMeta
from consumer.reports.tracking import SendTracker, TrackedSend
from consumer.settings import (
    ReconcileSettings,
    Settings,
    TrackingSettings,
)
from consumer.sources.reconcile.query import DetailsClient, ThrottledError

log = structlog.get_logger("alicom_receipts.reconcile")

_DAY_S = 86400.0
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": _DAY_S}


def parse_duration(text: str) -> float:
    """Seconds of "900", "90s", "15m", "2h" or "1d"; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 900s, 15m, 2h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def receipt_object(send: TrackedSend, detail: Mapping[str, Any]) -> dict[str, Any]:
    """The SmsReport body a final QuerySendDetails answer stands for (no sms_size, err_msg:
    the answer has neither)."""
    delivered = int(detail.get("SendStatus") or 0) == 3
    return {
        "phone_number": str(detail.get("PhoneNum") or send.phone_number),
        "send_time": str(detail.get("SendDate") or ""),
        "report_time": str(detail.get("ReceiveDate") or ""),
        "success": delivered,
        "err_code": str(detail.get("ErrCode") or ("DELIVERED" if delivered else "")),
        "biz_id": send.biz_id,
        "out_id": str(detail.get("OutId") or send.out_id),
    }


@dataclass(slots=True, eq=False, kw_only=True)
class Found(Work):
    """A send whose final status was found, and the receipt body it stands for."""

    send: TrackedSend
    obj: dict[str, Any]


class ReconcileTransport:
    """`Transport[Found]`: acknowledging stops tracking the send, handing back tracks it
    again (the send-tracker handler may have cleared a send another handler failed on)."""

    source = "reconcile"

    def __init__(self, tracker: SendTracker, client: RedisClient, lifecycle: Lifecycle) -> None:
        self._tracker, self._client, self._lifecycle = tracker, client, lifecycle

    def decode(self, work: Found) -> Receipt:
        return parse_object("SmsReport", work.obj, ReceiptMeta(source="reconcile"))

    def dead_letter(self, work: Found, decision: Decision, now_ms: int) -> DeadLetter:
        send = work.send
        return DeadLetter.create(
            queue="", message_type="SmsReport", source="reconcile", reason=decision.reason,
            detail=decision.detail, raw_body=json.dumps(work.obj, ensure_ascii=False),
            dead_at_ms=now_ms, letter_id=_letter_id(send))

    def acknowledge(self, items: Sequence[Found]) -> None:
        keys = [(w.send.biz_id, w.send.phone_number) for w in items]
        self._tracked("tracker clear", lambda: self._tracker.clear_many(keys))

    def hand_back(self, items: Sequence[Found]) -> None:
        self._tracked("tracker record", lambda: self._tracker.record_many(
            [w.send for w in items]))

    def finish(self, items: Sequence[Found]) -> None:
        pass

    def log_fields(self, work: Found) -> dict[str, object]:
        return {"biz_id": work.send.biz_id, "out_id": work.send.out_id}

    def _tracked(self, what: str, fn: Callable[[], list[bool]]) -> None:
        def call() -> list[bool]:
            try:
                return fn()
            except redis.RedisError as exc:
                raise transient_from_redis(exc, what, self._client) from exc

        self._lifecycle.parts.redis_retry.call(what, call, self._lifecycle.stop)


class Reconciler:
    """One reconcile run over the lifecycle; `counts` says what happened."""

    def __init__(self, settings: Settings, rs: ReconcileSettings, tracker: SendTracker,
                 details: DetailsClient, dispatcher: Dispatch, dedup: DedupStore,
                 dead_letters: RedisDeadLetterStore, client: RedisClient) -> None:
        self._settings, self._rs = settings, rs
        self._tracker, self._details = tracker, details
        self._dead = dead_letters
        ack = settings.ack
        self.stats = Stats()
        self.lifecycle = Lifecycle(LifecycleParts(
            dedup, dead_letters, dispatcher,
            RetryPolicy(ack.retry_base_s, ack.retry_max_s, ack.max_dequeue_count),
            settings.dedup.completed_ttl_s, settings.key_function()),
            self.stats, threading.Event())
        self._transport = ReconcileTransport(tracker, client, self.lifecycle)
        self.counts: Counter[str] = Counter()

    def run(self, grace_s: float) -> Counter[str]:
        sends = self._tracker.pending(grace_s, self._rs.max_sends)
        self.counts["pending"] = len(sends)
        horizon = time.time() - self._rs.window_days * _DAY_S
        self._expire([s for s in sends if s.sent_at < horizon])
        batch: list[Found] = []
        for send in (s for s in sends if s.sent_at >= horizon):
            found = self._look_up(send)
            if found is not None:
                batch.append(found)
            if len(batch) >= self._rs.batch_size:
                self._apply(batch)
                batch = []
        self._apply(batch)
        self.counts["quota_waits"] = self._details.quota_waits
        snap = self.stats.snapshot()
        for name, counter in (("recovered", "handled"), ("duplicates", "duplicates"),
                              ("in_progress", "in_progress_skipped"),
                              ("dead_lettered", "dead_letters"), ("retry_later", "retries"),
                              ("lost_claims", "lost_claims"),
                              ("unrecorded", "completion_unrecorded")):
            self.counts[name] = snap[counter]
        return self.counts

    def _look_up(self, send: TrackedSend) -> Found | None:
        try:
            detail = self._details.final_detail(send)
        except AlicomReceiptsError as exc:
            self.counts["lookup_errors"] += 1
            self.counts["api_errors:" + api_error_kind(exc)] += 1
            log.warning("lookup_failed", biz_id=send.biz_id, error=str(exc))
            return None
        if detail is None:
            self.counts["not_found"] += 1
            return None
        if int(detail.get("SendStatus") or 0) not in (2, 3):
            self.counts["waiting"] += 1
            return None
        return Found(send=send, obj=receipt_object(send, detail))

    def _expire(self, sends: list[TrackedSend]) -> None:
        """Sends QuerySendDetails no longer covers: no receipt to apply, a letter each."""
        if not sends:
            return
        letters = []
        for s in sends:
            body = {"biz_id": s.biz_id, "phone_number": s.phone_number, "send_date": s.send_date,
                    "out_id": s.out_id}
            detail = ("sent %s, more than %d days ago: QuerySendDetails no longer covers it"
                      % (s.send_date, self._rs.window_days))
            letters.append(DeadLetter.create(
                queue="", message_type="SmsReport", source="reconcile",
                reason="beyond_query_window", detail=detail,
                raw_body=json.dumps(body, ensure_ascii=False), letter_id=_letter_id(s)))
            log.warning("send_beyond_query_window", biz_id=s.biz_id, send_date=s.send_date,
                        out_id=s.out_id)
        self._dead.put_many(letters)
        self._tracker.clear_many([(s.biz_id, s.phone_number) for s in sends])
        self.counts["expired"] += len(sends)

    def _apply(self, batch: list[Found]) -> None:
        """One batch through the lifecycle (the worker's order of steps)."""
        if not batch:
            return
        self.lifecycle.process(batch, self._transport, secrets.token_hex(8),
                               self._settings.worker.handler_deadline_s + 5)


def _letter_id(send: TrackedSend) -> str:
    """One letter per tracked send, whichever step gives up on it: a put sent again (a run
    after one whose put was unconfirmed) rewrites it instead of adding a second."""
    return message_letter_id("reconcile", "", "%s|%s" % (send.biz_id, send.phone_number),
                             int(send.sent_at * 1000))


def api_error_kind(exc: AlicomReceiptsError) -> str:
    """throttled, auth, transient or permanent: the kinds of QuerySendDetails failures."""
    if isinstance(exc, ThrottledError):
        return "throttled"
    if isinstance(exc, AuthError):
        return "auth"
    return "transient" if isinstance(exc, TransientError) else "permanent"


def summary_line(counts: Counter[str]) -> str:
    c = counts
    return ("reconcile: %d pending past the grace period; %d recovered, %d already applied, "
            "%d still waiting, %d not found, %d in progress, %d beyond the 30-day window "
            "(dead-lettered), %d dead-lettered by handlers, %d to retry, %d lookup errors"
            % (c["pending"], c["recovered"], c["duplicates"], c["waiting"], c["not_found"],
               c["in_progress"], c["expired"], c["dead_lettered"], c["retry_later"],
               c["lookup_errors"]))


#: How long a crashed run keeps others out at most; a live one renews it every third of it.
LEASE_TTL_S = 60.0


class ReconcileBusy(Exception):  # noqa: N818 - an outcome, not an error: exit status 0
    """Another host (or process) holds the reconcile lease."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def lease_key(ts: TrackingSettings) -> str:
    """One lease per tracking store: two deployments sharing a Redis do not block each other."""
    return ts.key_prefix + ":reconcile-lease"


def run_once(settings: Settings, rs: ReconcileSettings, ts: TrackingSettings, grace_s: float,
             env: Mapping[str, str]) -> Counter[str]:
    """One reconcile run under the lease; ReconcileBusy when another run holds it."""
    details = DetailsClient.from_settings(settings, rs, env, threading.Event())
    client = connect(settings.redis_url, socket_timeout_s=10, connect_timeout_s=5)
    routes = load_handlers(settings.handlers)
    dispatcher = handler_dispatcher(routes, settings)
    try:
        with hold(client, lease_key(ts), LEASE_TTL_S) as lease:
            if lease is None:
                raise ReconcileBusy(holder_of(client, lease_key(ts)) or "a run just ending")
            reconciler = Reconciler(settings, rs, SendTracker(client, ts), details, dispatcher,
                                    RedisDedupStore(client, settings.dedup),
                                    RedisDeadLetterStore(client, settings.deadletter,
                                                         replication_of(settings.dedup)),
                                    client)
            return reconciler.run(grace_s)
    finally:
        close_handlers(routes)
        dispatcher.close()
        client.close()
