"""The worker: a thin driver over named steps, one process per queue.

Threads, in Dramatiq's shape:
- pollers (several, each with its own SDK client) reserve room in the in-flight window,
  receive a batch, decode it, claim it in Redis in one script call, and route each message:
  claimed ones to the work queue, the rest straight to the acks queue;
- runners take a claimed batch from the work queue and run the handlers on it;
- ackers complete, dead-letter, retry and delete in batches (consumer.sources.mns.ack);
- the heartbeat extends the visibility of slow messages.
Receiving never waits for handlers: only a full window stops a poller.

`_poll_iteration` is one turn of a poller: receive -> prepare -> claim -> route.
"""

from __future__ import annotations

import itertools
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import structlog

from consumer.errors import AlicomReceiptsError, AuthError, DecodeError, TransientError
from consumer.handler_api import HandlerOutcome
from consumer.keys import dedup_key
from consumer.pipeline.backoff import Backoff
from consumer.pipeline.deadletter import RedisDeadLetterStore
from consumer.pipeline.decode import decode_body
from consumer.pipeline.dedup import ClaimState, DedupStore
from consumer.pipeline.dispatch import DISPATCHER_CRASHED, NOT_STARTED, STUCK, Dispatcher
from consumer.pipeline.outcome import Decision, RetryPolicy, Verdict, classify, precheck
from consumer.pipeline.stats import Stats
from consumer.receipts import Receipt, ReceiptMeta
from consumer.sources.mns.ack import STOP, AckConfig, Acker, Heartbeat, Settled, log_outcome
from consumer.sources.mns.gate import Gate
from consumer.sources.mns.inflight import InFlight, Window
from consumer.sources.mns.queue import Delivery, QueueClient

log = structlog.get_logger("alicom_receipts.worker")

# Claim owners: a random prefix, the pid and a counter, so every claimed batch has its own
# token without a getrandom() call (a system call releases the GIL: a costly handoff here).
_OWNER_PREFIX = secrets.token_hex(6)
_owner_serial = itertools.count(1)
#: A receipt whose handler never started (the worker stops): back to MNS at once, as it came.
HANDED_BACK = Decision(Verdict.RETRY, "handed_back", NOT_STARTED, delay_s=1)

ClientFactory = Callable[[], QueueClient]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What the driver needs, distilled from Settings at start-up (see consumer.runtime.app)."""

    message_type: str
    pollers: int = 4
    adaptive_concurrency: bool = True  # see consumer.sources.mns.gate
    runners: int = 4
    ackers: int = 2
    batch_size: int = 16
    wait_seconds: int = 10
    in_flight_max: int = 256
    shutdown_budget_s: float = 20.0
    max_receipts: int | None = None
    max_rss_mb: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ack: AckConfig = field(default_factory=AckConfig)


@dataclass
class Pipeline:
    """The collaborators a worker drives; built once by consumer.runtime.app."""

    client_factory: ClientFactory
    dedup: DedupStore
    dead_letters: RedisDeadLetterStore
    dispatcher: Dispatcher
    on_auth_error: Callable[[], None]  # invalidates the current token
    stats: Stats = field(default_factory=Stats)
    key_of: Callable[[Receipt], str] = dedup_key  # Settings.key_function()


class Worker:
    def __init__(self, config: WorkerConfig, pipeline: Pipeline,
                 abort: threading.Event | None = None) -> None:
        self.config = config
        self.p = pipeline
        self.stats = pipeline.stats
        self.window = Window(config.in_flight_max)
        self.poll_gate = Gate(config.pollers, config.adaptive_concurrency)
        # A delete per received batch, over the same round trip with less work around it:
        # as many ackers as pollers (and one to spare) keep up.
        self.ack_gate = Gate(config.ackers, config.adaptive_concurrency)
        self.poll_gate.lead(self.ack_gate, spare=1)
        self.work: queue.Queue[list[InFlight] | None] = queue.Queue()
        # Decisions travel in lists, one per received or dispatched batch: a handoff
        # between threads costs more than the work on one receipt.
        self.acks: queue.Queue[list[Settled] | None] = queue.Queue()
        self.stop_receiving = threading.Event()  # first signal: drain
        self.abort = abort or threading.Event()  # set when the drain ends: retries stop
        self.acks_closed = threading.Event()     # the ackers' STOPs are queued
        self._threads: dict[str, list[threading.Thread]] = {}
        self._clients: list[QueueClient] = []
        self.last_progress = time.monotonic()    # a poller finished a turn (watchdog)
        self.ready = threading.Event()           # a poll went through: MNS, token, Redis ok
        self.last_error: str | None = None       # the latest poll failure, None once healthy
        self.recycle_reason: str | None = None   # why the worker stops by itself, if it does

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        c = self.config
        self._spawn("poller", c.pollers, self._poll_loop, indexed=True)
        self._spawn("runner", c.runners, self._run_loop)
        self._spawn("acker", c.ackers, self._ack_loop, indexed=True)
        heartbeat = Heartbeat(self._client(), self.p.dedup, self.window, self.stats, c.ack)
        self._spawn("heartbeat", 1, lambda: heartbeat.run(self.abort))
        log.info("worker_started", message_type=c.message_type, pollers=c.pollers,
                 runners=c.runners, ackers=c.ackers, in_flight_max=c.in_flight_max)

    def request_stop(self) -> None:
        """Stop receiving and drain (a second signal is `serve`'s: it exits at once)."""
        self.stop_receiving.set()

    def recycle(self, reason: str) -> None:
        """Stop receiving to exit cleanly and be restarted (`serve` sees `recycle_reason`)."""
        if self.recycle_reason is None:
            self.recycle_reason = reason
            log.warning("recycling", reason=reason, **self.stats.snapshot())
        self.stop_receiving.set()

    def status(self) -> str:
        """One line for systemd's STATUS=: what the worker is doing or waiting for."""
        if self.stop_receiving.is_set():
            return "draining: %d in flight" % len(self.window)
        if self.last_error is not None:
            return "waiting: %s" % self.last_error[:200]
        if not self.ready.is_set():
            return "starting: first poll of %s" % self.config.message_type
        snap = self.stats.snapshot()
        return ("receiving %s (%d of %d pollers): %d in flight, %d handled, %d duplicates, "
                "%d dead letters" % (self.config.message_type, self.poll_gate.limit,
                                     self.config.pollers, len(self.window), snap["handled"],
                                     snap["duplicates"], snap["dead_letters"]))

    def should_recycle(self) -> str | None:
        """A reason to exit cleanly so systemd or `run` starts a fresh process, or None.

        Stuck handler threads end only with the process: once they reach the configured
        share of the pool, or one has held its message `ack.max_in_flight_s` (its visibility
        is extended while it runs), the worker recycles. The RSS limit is checked by the
        pollers before every receive.
        """
        c = self.config
        if self.recycle_reason is not None:
            return self.recycle_reason
        if c.max_receipts is not None and self.stats.snapshot()["received"] >= c.max_receipts:
            return "max_receipts"
        if self.p.dispatcher.wedged():
            return "stuck_handlers"
        longest = max((s for _, _, s in self.p.dispatcher.running()), default=0.0)
        return "max_in_flight_s" if longest > c.ack.max_in_flight_s else None

    def drain(self, deadline: float | None = None) -> bool:
        """Stops receiving, hands back what has not started, waits for running handlers
        until `deadline` (monotonic; default: the shutdown budget from now).

        Returns True when everything in flight was settled. A handler still running at the
        deadline keeps its message invisible: the process must exit now, which ends its
        thread (consumer.runtime.service.serve does, with os._exit).
        """
        self.stop_receiving.set()
        self.p.dispatcher.close()  # queued calls end NOT_STARTED: handed back by the ackers
        if deadline is None:
            deadline = time.monotonic() + self.config.shutdown_budget_s
        for t in self._threads.get("poller", []):
            t.join(max(0.0, deadline - time.monotonic()))
        drained = self.window.wait_empty(deadline)
        for _ in self._threads.get("runner", []):
            self.work.put(None)
        for _ in self._threads.get("acker", []):
            self.acks.put(STOP)
        self.acks_closed.set()  # parked ackers leave; the working ones meet a STOP
        for name in ("runner", "acker"):
            for t in self._threads.get(name, []):
                t.join(max(0.0, deadline - time.monotonic()))
        self.abort.set()  # ends the heartbeat and every retry
        for client in self._clients:
            client.close()
        log.info("worker_stopped", drained=drained, left_in_flight=len(self.window),
                 **self.stats.snapshot())
        return drained

    def _spawn(self, name: str, count: int, target: Callable[..., None],
               indexed: bool = False) -> None:
        """Starts `count` threads; `indexed` ones get their number as the argument."""
        threads = [threading.Thread(target=target, name="%s-%d" % (name, i), daemon=True,
                                    args=(i,) if indexed else ())
                   for i in range(count)]
        self._threads[name] = threads
        for t in threads:
            t.start()

    def _client(self) -> QueueClient:
        client = self.p.client_factory()
        self._clients.append(client)
        return client

    # -- pollers ------------------------------------------------------------------------

    def _poll_loop(self, index: int) -> None:
        client = self._client()
        backoff = Backoff()
        while not self.stop_receiving.is_set():
            try:
                self._gated_iteration(client, index)
                backoff.reset()
                self.last_error = None
                self.ready.set()
            except AuthError as exc:
                self.last_error = "token refused by MNS: %s" % exc
                log.warning("auth_refused", queue=client.queue_name, error=str(exc))
                self.p.on_auth_error()
                self.stats.incr("poll_errors")
                self.stats.event("poll_error", kind="auth")
                backoff.sleep(self.stop_receiving)
            except AlicomReceiptsError as exc:
                self.last_error = str(exc)
                log.warning("poll_failed", queue=client.queue_name, error=str(exc))
                self.stats.incr("poll_errors")
                self.stats.event("poll_error", kind="transient" if isinstance(
                    exc, TransientError) else "other")
                backoff.sleep(self.stop_receiving)
            self.last_progress = time.monotonic()

    def _gated_iteration(self, client: QueueClient, index: int) -> None:
        """One `_poll_iteration` once the poll gate (consumer.sources.mns.gate) lets it in."""
        if not self.poll_gate.wait_turn(index, self.stop_receiving):
            return
        timing = self._poll_iteration(client)
        if timing is not None:
            self.poll_gate.record(*timing)

    def _poll_iteration(self, client: QueueClient) -> tuple[float, float] | None:
        """receive -> prepare -> claim -> route; raises on a failed receive or claim.

        Returns (round trip, work after it) in seconds when messages came, else None.
        """
        c = self.config
        if c.max_rss_mb is not None and _rss_mb() > c.max_rss_mb:  # between batches
            self.recycle("max_rss_mb")
            return None
        if not self.window.reserve(c.batch_size, self.stop_receiving):
            return None
        began = time.monotonic()
        try:
            deliveries = client.receive(c.batch_size, c.wait_seconds)
        except BaseException:
            self.window.unreserve(c.batch_size)
            raise
        received = time.monotonic()
        self.window.unreserve(c.batch_size - len(deliveries))
        if not deliveries:
            self.stats.incr("empty_polls")
            if c.wait_seconds and received - began < c.wait_seconds / 2:
                # MNS holds a long poll until a message comes or the wait ends; an empty
                # answer long before is its refusal (too many long polls on the queue):
                # polling again at once would flood it, so the poller backs off.
                raise TransientError("MNS answered a %d s long poll after %.2f s with no "
                                     "message: too many long polls on the queue?"
                                     % (c.wait_seconds, received - began))
            return None
        self.stats.incr("received", len(deliveries))
        items = [InFlight.of(d) for d in deliveries]
        self.window.track(items)
        rejected = self._prepare(items)
        claimable = [i for i in items if i not in rejected]  # decoded: receipt is set
        try:
            states = self._claim(claimable)
        except TransientError:
            self._give_up(claimable)
            self._route(rejected, [])
            raise
        self._route(rejected, list(zip(claimable, states, strict=True)))
        return received - began, time.monotonic() - received

    def _prepare(self, items: Sequence[InFlight]) -> dict[InFlight, Decision]:
        """Decodes every body; returns the messages that must not reach the handlers."""
        rejected: dict[InFlight, Decision] = {}
        for item in items:
            d = item.delivery
            early = precheck(d.dequeue_count, self.config.retry)
            if early is not None:
                rejected[item] = early
                continue
            try:
                item.receipt = decode_body(self.config.message_type, d.body, d.body_md5,
                                           _meta(d))
            except DecodeError as exc:
                self.stats.incr("decode_errors")
                rejected[item] = classify(exc, d.dequeue_count, self.config.retry)
                continue
            item.dedup_key = self.p.key_of(item.receipt)
        return rejected

    def _claim(self, items: list[InFlight]) -> list[ClaimState]:
        """One script call for the whole batch; the lease ends with the earliest visibility."""
        if not items:
            return []
        owner = "%s-%x-%x" % (_OWNER_PREFIX, os.getpid(), next(_owner_serial))  # fork-safe
        lease_s = max(1.0, min(i.next_visible_ms for i in items) / 1000 - time.time())
        for item in items:
            item.owner = owner
        try:
            return self.p.dedup.claim([str(i.dedup_key) for i in items], owner, lease_s)
        except TransientError:
            self.stats.incr("redis_errors")
            raise

    def _route(self, rejected: dict[InFlight, Decision],
               claimed: list[tuple[InFlight, ClaimState]]) -> None:
        to_ack = [Settled(item, decision) for item, decision in rejected.items()]
        to_run: list[InFlight] = []
        for item, state in claimed:
            # The same receipt twice in one batch is CLAIMED once and IN_PROGRESS after (the
            # DedupStore contract): the first copy runs, the other waits for its outcome.
            if state is ClaimState.CLAIMED:
                to_run.append(item)
                continue
            decision = classify(state, item.delivery.dequeue_count, self.config.retry)
            if decision.verdict is Verdict.LEAVE:
                self._leave(item, decision)
            else:
                to_ack.append(Settled(item, decision))
        if to_ack:
            self.acks.put(to_ack)
        if to_run:
            self.stats.add_in_flight(len(to_run))
            self.work.put(to_run)

    def _leave(self, item: InFlight, decision: Decision) -> None:
        """Another live delivery holds the claim: MNS brings this copy back later."""
        self.stats.incr("in_progress_skipped")
        self.stats.outcome(decision.outcome, "", 0.0, item.receipt)
        self.window.settle(item)
        log_outcome(Settled(item, decision))

    def _give_up(self, items: list[InFlight]) -> None:
        """Redis is away: let MNS re-deliver these later; nothing was claimed or run."""
        self.stats.incr("handed_back", len(items))
        self.window.settle_many(items)

    # -- runners and ackers -------------------------------------------------------------

    def _run_loop(self) -> None:
        while True:
            batch = self.work.get()
            if batch is None:
                return
            receipts = [cast(Receipt, i.receipt) for i in batch]
            try:
                # A receipt past its deadline comes back STUCK: its message stays ours (the
                # heartbeat extends it) until the handler returns and `late` settles it.
                outcomes = self.p.dispatcher.dispatch(receipts, late=partial(self._late, batch))
            except Exception:
                log.exception("dispatch_crashed", messages=len(batch))
                outcomes = [DISPATCHER_CRASHED] * len(batch)
            self._settle([(item, outcome) for item, outcome in zip(batch, outcomes, strict=True)
                          if outcome.reason != STUCK])

    def _late(self, batch: list[InFlight], index: int, outcome: HandlerOutcome) -> None:
        self._settle([(batch[index], outcome)])

    def _settle(self, done: list[tuple[InFlight, HandlerOutcome]]) -> None:
        """Decides for receipts whose handlers finished (or never started), records the
        completions at once and queues the rest of the work for the ackers."""
        if not done:
            return
        self.stats.add_in_flight(-len(done))
        retry = self.config.retry
        settled = [
            Settled(item, HANDED_BACK if outcome.reason == NOT_STARTED else classify(
                outcome, item.delivery.dequeue_count, retry), outcome.handler, outcome.duration_s)
            for item, outcome in done]
        self._record_completions(settled)
        self.acks.put(settled)

    def _record_completions(self, settled: list[Settled]) -> None:
        """Writes the completion records right after the handlers returned.

        Doing it here, not in the acker, shrinks the one window in which a crash makes a
        handler run twice (handler returned, completion not yet recorded) to one Redis round
        trip. One script call: a runner batch is one received batch, so one claim owner.
        If Redis fails, the acker writes them with its retries.
        """
        ran = [s.item for s in settled if s.decision.ran_handlers]
        if not ran:
            return
        keys = [str(i.dedup_key) for i in ran]
        try:
            owned = self.p.dedup.complete(keys, ran[0].owner, self.config.ack.completed_ttl_s)
        except TransientError:
            return
        for item, ok in zip(ran, owned, strict=True):
            item.completed = ok

    def _ack_loop(self, index: int) -> None:
        """Settles groups from the acks queue, while the ack gate lets this acker work, until
        it meets STOP (or, parked, until the ackers are closed)."""
        acker = Acker(self._client(), self.p.dedup, self.p.dead_letters, self.window,
                      self.stats, self.config.ack, self.abort, self.config.message_type)
        while self.ack_gate.wait_turn(index, self.acks_closed):
            group = acker.collect(self.acks)
            if group is None:
                return
            acker.settle(group)  # never empty: only non-empty lists are queued


def _meta(d: Delivery) -> ReceiptMeta:
    return ReceiptMeta(source="mns", queue=d.queue, message_id=d.message_id,
                       dequeue_count=d.dequeue_count, enqueue_time_ms=d.enqueue_time_ms,
                       first_dequeue_time_ms=d.first_dequeue_time_ms)


def _rss_mb() -> float:
    """Resident set size of this process in MiB, from /proc (Linux)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
