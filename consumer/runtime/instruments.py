"""The metric catalogue: every metric any process of alicom-receipts writes, in one table.

All names start with `alicom_receipts_`; the receipt type is always the label `message_type`
(never a queue name, which holds the account id). No phone number, credential, token or URL
is ever a label or value.

Summing across hosts: every counter and histogram counts an event in exactly one process, so
`sum()` over hosts is the true total. Gauges say how to aggregate in their help text: `livesum`
ones (in flight, processes) add up; the few that describe *shared* state (a Redis stream's
length, pending entries, tracked sends) are the same value on every host, marked "(shared:
aggregate with max)"; timestamps aggregate with max (or min for token expiry).

Counters are created with their labels at start-up where the label values are known, so a
series exists (at 0) before its first event and `rate()` sees its first increase.
"""

from __future__ import annotations

import importlib.metadata
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from consumer.clients.redis_client import RedisClient
from consumer.clients.redis_guard import memory
from consumer.pipeline.stats import COUNTERS
from consumer.receipts import SmsReport
from consumer.reports.delivery_stats import MAX_DELAY_S, observe
from consumer.reports.reviews import review_state

if TYPE_CHECKING:
    from consumer.receipts import Receipt

PREFIX: Final = "alicom_receipts_"
OTHER_CODE: Final = "other"
_ERR_CODE_MAX_LEN: Final = 64

#: Handler durations run from a cache write (~1 ms) to the default 30 s deadline.
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                           2.5, 5.0, 10.0, 30.0, 60.0)
#: Queue lag: a healthy worker takes a message within a second; an outage leaves hours.
LAG_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                      3600.0, 14400.0, 86400.0)
#: Delivery delay (report_time - send_time, whole seconds): the stats handler's bounds.
DELAY_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                        3600.0)
#: Push answer time: the platform gives up after 700 ms.
ANSWER_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.7, 1.0,
                         2.5)


@dataclass(frozen=True)
class Spec:
    """One metric: `kind` counter / gauge / histogram; `mode` a gauge's multiprocess mode;
    `roles` the processes that write it (worker, push-server, push-worker, reconcile)."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    roles: frozenset[str]
    mode: str = ""
    buckets: tuple[float, ...] = ()


PIPELINE: Final = frozenset({"worker", "push-worker"})
REDIS_USERS: Final = frozenset({"worker", "push-worker", "push-server"})
ALL_ROLES: Final = frozenset({"worker", "push-server", "push-worker", "reconcile"})
MT: Final = ("message_type",)

#: Stats counters that outcomes_total{outcome} already counts (or that have labelled metrics
#: of their own): mirroring them as well would count each receipt twice on a dashboard.
NOT_MIRRORED: Final = frozenset({"handled", "duplicates", "retries", "dead_letters",
                                 "in_progress_skipped", "poll_errors", "token_refreshes"})

_COUNTER_HELP: Final[Mapping[str, str]] = {
    "received": "Messages taken off the queue (MNS) or the stream (push)",
    "empty_polls": "Receive calls that returned no message",
    "decode_errors": "Bodies that could not become a receipt (also dead-lettered)",
    "deleted": "Messages deleted from the queue",
    "delete_failures": "Delete entries the queue refused",
    "lost_claims": "Completions refused because the claim had moved to another delivery",
    "visibility_extensions": "Visibility timeouts extended for slow messages",
    "handed_back": "Messages handed back at shutdown or when the pipeline could not take them",
    "redis_errors": "Redis calls that failed after their retries",
    "completion_unrecorded": "Receipts whose handlers ran but whose completion could not be "
                             "recorded before exit: they may run again",
}

MIRRORED: Final = tuple(name for name in COUNTERS if name not in NOT_MIRRORED)


def _mirrored() -> list[Spec]:
    return [Spec(name, "counter", _COUNTER_HELP.get(name, name.replace("_", " ")), MT, PIPELINE)
            for name in MIRRORED]


CATALOGUE: Final[tuple[Spec, ...]] = (
    Spec("build_info", "gauge", "1 per host, role and version of alicom-receipts running",
         ("version", "role"), ALL_ROLES, mode="livemax"),
    Spec("processes", "gauge", "Live processes of a role on this host", ("role", "message_type"),
         ALL_ROLES - {"reconcile"}, mode="livesum"),
    *_mirrored(),
    Spec("outcomes", "counter", "Receipt deliveries settled, by outcome (handled, duplicate, "
         "retry, dead_letter, in_progress)", ("message_type", "outcome"), PIPELINE),
    Spec("handler_duration_seconds", "histogram", "Wall time of handler calls",
         ("message_type", "handler"), PIPELINE, buckets=DURATION_BUCKETS),
    Spec("queue_lag_seconds", "histogram", "Age of a delivery when it settled: now - "
         "EnqueueTime (MNS) or now - arrival at the push server", ("message_type", "source"),
         PIPELINE, buckets=LAG_BUCKETS),
    Spec("delivery_delay_seconds", "histogram", "SmsReport delivery delay, report_time - "
         "send_time, of handled receipts", MT, PIPELINE, buckets=DELAY_BUCKETS),
    Spec("sms_deliveries", "counter", "SmsReport receipts handled, by delivery success and "
         "err_code (codes past the per-process limit count as \"other\")",
         ("message_type", "success", "err_code"), PIPELINE),
    Spec("review_results", "counter", "Signature and template review results handled, by "
         "state (approving, approved, rejected; anything else as other)",
         ("message_type", "state"), PIPELINE),
    Spec("in_flight", "gauge", "Receipts at the handlers", MT, PIPELINE, mode="livesum"),
    Spec("stuck_handler_threads", "gauge", "Handler threads still busy past the deadline", MT,
         PIPELINE, mode="livesum"),
    Spec("poll_errors", "counter", "Receive calls that failed, by kind (auth, transient, "
         "other)", ("message_type", "kind"), frozenset({"worker"})),
    Spec("token_refreshes", "counter", "Temporary MNS tokens fetched", MT, frozenset({"worker"})),
    Spec("token_refresh_failures", "counter", "Token fetches that gave up after their retries",
         MT, frozenset({"worker"})),
    Spec("token_expiry_timestamp_seconds", "gauge", "When the current MNS token expires "
         "(epoch s; aggregate with min)", MT, frozenset({"worker"}), mode="livemin"),
    Spec("last_receive_timestamp_seconds", "gauge", "When a receive call last succeeded, "
         "messages or not (epoch s; aggregate with max)", MT, PIPELINE, mode="livemax"),
    Spec("redis_used_memory_bytes", "gauge", "Memory Redis uses (INFO used_memory; shared: "
         "aggregate with max)", (), REDIS_USERS, mode="livemax"),
    Spec("redis_maxmemory_bytes", "gauge", "Redis's maxmemory, 0 for no limit (headroom: "
         "this minus used memory; shared: aggregate with max)", (), REDIS_USERS, mode="livemax"),
    Spec("push_requests", "counter", "HTTP requests to the push server, by status",
         ("message_type", "status"), frozenset({"push-server"})),
    Spec("push_answer_seconds", "histogram", "Push server answer time (the platform gives up "
         "at 0.7 s)", MT, frozenset({"push-server"}), buckets=ANSWER_BUCKETS),
    Spec("push_stream_length", "gauge", "Entries in the push stream (shared: aggregate with "
         "max)", (), frozenset({"push-server"}), mode="livemax"),
    Spec("push_pending", "gauge", "Stream entries delivered to a push worker and not yet "
         "acknowledged (shared: aggregate with max)", (), frozenset({"push-worker"}),
         mode="livemax"),
    Spec("push_reclaimed", "counter", "Stream entries taken over after reclaim_idle_s (retries "
         "due, or a dead consumer's)", (), frozenset({"push-worker"})),
    Spec("reconcile_pending", "gauge", "Tracked sends without a receipt past the grace period "
         "at the last reconcile run (shared: aggregate with max)", (),
         frozenset({"reconcile"}), mode="mostrecent"),
    Spec("reconcile_recovered", "counter", "Lost receipts found by QuerySendDetails and "
         "applied", (), frozenset({"reconcile"})),
    Spec("reconcile_api_errors", "counter", "QuerySendDetails calls that failed, by kind "
         "(throttled, auth, transient, permanent)", ("kind",), frozenset({"reconcile"})),
    Spec("reconcile_quota_waits", "counter", "Times reconcile waited for its QuerySendDetails "
         "rate limit", (), frozenset({"reconcile"})),
    Spec("reconcile_last_run_timestamp_seconds", "gauge", "When the last reconcile run "
         "finished (epoch s)", (), frozenset({"reconcile"}), mode="mostrecent"),
)

BY_NAME: Final[Mapping[str, Spec]] = {spec.name: spec for spec in CATALOGUE}


def exposed_names(spec: Spec) -> tuple[str, ...]:
    """The sample names `spec` shows on /metrics (a counter's `_total`, a histogram's parts)."""
    full = PREFIX + spec.name
    if spec.kind == "counter":
        return (full + "_total",)
    if spec.kind == "histogram":
        return (full + "_bucket", full + "_sum", full + "_count")
    return (full,)


class _ErrCodes:
    """Bounds the `err_code` label: the first `limit` distinct codes, then "other"."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def label(self, code: str) -> str:
        code = code.strip()[:_ERR_CODE_MAX_LEN] or "none"
        with self._lock:
            if code in self._seen:
                return code
            if len(self._seen) < self._limit:
                self._seen.add(code)
                return code
        return OTHER_CODE


# prometheus_client's Gauge types multiprocess_mode as a Literal; the catalogue's modes are
# plain strings checked by the test that builds every role's instruments.
class Instruments:
    """The catalogue's metrics for one process role, created unregistered (values go to the
    mmap files only), with the series whose labels are known at start-up created at 0."""

    def __init__(self, role: str, message_type: str) -> None:
        # Imported here, after setup_metrics chose the value class (consumer.runtime.metrics).
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415

        self.metrics: dict[str, Any] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        for spec in CATALOGUE:
            if role not in spec.roles:
                continue
            name, labels = PREFIX + spec.name, list(spec.labels)
            if spec.kind == "counter":
                metric: Any = Counter(name, spec.help, labels, registry=None)
            elif spec.kind == "histogram":
                metric = Histogram(name, spec.help, labels, buckets=spec.buckets, registry=None)
            else:
                metric = Gauge(name, spec.help, labels, registry=None,
                               multiprocess_mode=spec.mode)  # type: ignore[arg-type]
            self.metrics[spec.name] = metric
            if labels == ["message_type"]:
                metric.labels(message_type)  # the series exists from the start
            elif not labels and spec.kind == "counter":
                metric.inc(0)
        self.get("build_info", version=_version(), role=role).set(1)
        if "processes" in self.metrics:
            self.get("processes", role=role, message_type=message_type).set(1)

    def get(self, name: str, **labels: str) -> Any:
        """The (labelled) child of catalogue metric `name`; KeyError if this role lacks it.

        Children are cached: prometheus_client's labels() validates and locks on every call,
        and several are looked up per receipt."""
        key = (name, *labels.items())
        child = self._children.get(key)
        if child is None:
            metric = self.metrics[name]
            child = metric.labels(**labels) if labels else metric
            self._children[key] = child  # a benign race: both threads get the same child
        return child


def _version() -> str:
    try:
        return importlib.metadata.version("alicom-receipts")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class StatsListener:
    """Mirrors Stats events into the instruments; ignores them once the handle is closed."""

    def __init__(self, instruments: Instruments, message_type: str, max_err_codes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._m = instruments
        self.message_type = message_type
        self._codes = _ErrCodes(max_err_codes)
        self._clock = clock
        self.closed = False

    def __call__(self, name: str, amount: int) -> None:
        if self.closed:
            return
        if name in MIRRORED:
            self._m.get(name, message_type=self.message_type).inc(amount)
        if name in ("received", "empty_polls"):  # a receive call went through
            self._m.get("last_receive_timestamp_seconds",
                        message_type=self.message_type).set(self._clock())

    def on_event(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        """Labelled events (consumer.pipeline.stats.Stats.event)."""
        if self.closed:
            return
        m, t = self._m, self.message_type
        if name == "poll_error":
            m.get("poll_errors", message_type=t, kind=labels.get("kind", "other")).inc()
        elif name == "token_refreshed":
            m.get("token_refreshes", message_type=t).inc()
            m.get("token_expiry_timestamp_seconds", message_type=t).set(value)
        elif name == "token_fetch_failed":
            m.get("token_refresh_failures", message_type=t).inc()
        elif name == "push_reclaimed":
            m.get("push_reclaimed").inc(value)

    def on_outcome(self, outcome: str, handler: str, duration_s: float,
                   receipt: Receipt | None) -> None:
        if self.closed:
            return
        # The receipt's own type: a push worker takes every type from one stream.
        m, t = self._m, receipt.message_type if receipt is not None else self.message_type
        m.get("outcomes", message_type=t, outcome=outcome).inc()
        if handler:
            m.get("handler_duration_seconds", message_type=t, handler=handler).observe(duration_s)
        if receipt is None:
            return
        now = self._clock()
        if receipt.meta.enqueue_time_ms > 0:
            m.get("queue_lag_seconds", message_type=t, source=receipt.meta.source).observe(
                max(0.0, now - receipt.meta.enqueue_time_ms / 1000))
        if outcome == "handled":
            self._delivery(receipt, now)
            state = review_state(receipt)
            if state is not None:
                m.get("review_results", message_type=t, state=state).inc()

    def _delivery(self, receipt: Receipt, now: float) -> None:
        """Counted once per receipt: duplicates and retries of it are not "handled"."""
        facts = delivery_facts(receipt, now)
        if facts is None:
            return
        success, code, delay_s = facts
        m, t = self._m, receipt.message_type
        m.get("sms_deliveries", message_type=t, success=success,
              err_code=self._codes.label(code)).inc()
        if delay_s is not None:
            m.get("delivery_delay_seconds", message_type=t).observe(delay_s)


def delivery_facts(receipt: Receipt, now: float) -> tuple[str, str, float | None] | None:
    """(success "true"/"false", err_code, delay in s or None) of a delivery report, None for
    other receipts and for an international status that is neither delivered nor failed.

    The same figures as consumer.reports.delivery_stats.observe; an SmsReport with both times
    in the platform's usual `yyyy-MM-dd HH:mm:ss` takes a fast path (this runs per receipt,
    and observe's general parsing costs ~25 us)."""
    if isinstance(receipt, SmsReport):
        sent, reported = receipt.send_time, receipt.report_time
        if len(sent) == 19 == len(reported) and sent[10] == " " == reported[10]:
            try:
                delay_s = (datetime.fromisoformat(reported)
                           - datetime.fromisoformat(sent)).total_seconds()
            except ValueError:
                pass
            else:
                delay = max(0.0, delay_s) if delay_s <= MAX_DELAY_S else None
                return ("true" if receipt.success else "false"), receipt.err_code, delay
    obs = observe(receipt, now)
    if obs is None or obs.outcome == "other":
        return None
    delay = None if obs.delay_ms is None else obs.delay_ms / 1000
    return ("true" if obs.outcome == "delivered" else "false"), obs.err_code, delay


class Recorder(Protocol):
    """What the recording helpers need of consumer.runtime.metrics.MetricsHandle."""

    def get(self, name: str, **labels: str) -> Any: ...


class PushRequests:
    """The push server's `request_answered` observer: requests by status, answer time."""

    def __init__(self, metrics: Recorder, known_types: Iterable[str]) -> None:
        self._m = metrics
        self._known = frozenset(known_types)

    def request_answered(self, message_type: str, status: int, seconds: float) -> None:
        # The type comes from the URL: anything else is one label value, not a new series.
        t = message_type if message_type in self._known else "unknown"
        self._m.get("push_requests", message_type=t, status=str(status)).inc()
        self._m.get("push_answer_seconds", message_type=t).observe(seconds)


def record_reconcile(metrics: Recorder, counts: Mapping[str, int],
                     clock: Callable[[], float] = time.time) -> None:
    """One reconcile run's counts (consumer.sources.reconcile.run) as metrics."""
    metrics.get("reconcile_pending").set(counts.get("pending", 0))
    metrics.get("reconcile_recovered").inc(counts.get("recovered", 0))
    metrics.get("reconcile_quota_waits").inc(counts.get("quota_waits", 0))
    for kind in ("throttled", "auth", "transient", "permanent"):
        metrics.get("reconcile_api_errors", kind=kind).inc(counts.get("api_errors:" + kind, 0))
    metrics.get("reconcile_last_run_timestamp_seconds").set(clock())


def redis_memory_sampler(metrics: Recorder, client: RedisClient) -> Callable[[], None]:
    """A MetricsHandle sampler of Redis's used memory and maxmemory (the headroom)."""
    def sample() -> None:
        used, limit = memory(client)
        if used is not None:
            metrics.get("redis_used_memory_bytes").set(used)
        if limit is not None:
            metrics.get("redis_maxmemory_bytes").set(limit)
    return sample


def redis_sampler(metrics: Recorder, name: str, read: Callable[[], int]) -> Callable[[], None]:
    """A MetricsHandle sampler setting gauge `name` to what `read()` answers (from Redis)."""
    def sample() -> None:
        metrics.get(name).set(read())
    return sample
