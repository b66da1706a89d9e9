"""The worker: a thin driver over named steps, one process per queue.

Threads, in Dramatiq's shape:
- pollers (several, each with its own SDK client) reserve room in the in-flight window,
  receive a batch, prepare and claim it (one script call), and route each message:
  claimed ones to the work queue, the rest straight to the acks queue;
- runners take a claimed batch from the work queue, run the handlers on it and try the
  completion records at once;
- ackers settle groups (records held until Redis takes them, dead letters, releases,
  batch deletes, hand backs);
- the heartbeat extends the visibility of messages still in our hands
  (consumer.sources.mns.ack).
Every stage is the one lifecycle's (consumer.pipeline.lifecycle) over the MNS transport
(consumer.sources.mns.transport); this module only runs them on threads. Receiving never
waits for handlers: only a full window stops a poller, and after a failed claim a poller
waits until Redis answers before it receives again (a receive it cannot claim would only
burn a delivery of each message, towards `max_dequeue_count`).

`_poll_iteration` is one turn of a poller: receive -> prepare -> claim -> route.
"""

from __future__ import annotations

import itertools
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import structlog

from consumer.errors import AlicomReceiptsError, AuthError, TransientError
from consumer.keys import dedup_key
from consumer.pipeline.backoff import Backoff
from consumer.pipeline.deadletter_store import RedisDeadLetterStore
from consumer.pipeline.dedup import DedupStore
from consumer.pipeline.dispatch import WEDGED_AFTER_DEADLINES, Dispatcher
from consumer.pipeline.lifecycle import Lifecycle, LifecycleParts
from consumer.pipeline.outcome import Decision, RetryPolicy, Verdict
from consumer.pipeline.poison import CrashLedger, PoisonGuard
from consumer.pipeline.stats import Stats
from consumer.receipts import Receipt
from consumer.sources.mns.ack import STOP, AckConfig, Heartbeat, collect
from consumer.sources.mns.gate import Gate
from consumer.sources.mns.inflight import InFlight, Window
from consumer.sources.mns.queue import QueueClient
from consumer.sources.mns.transport import MnsTransport

log = structlog.get_logger("alicom_receipts.worker")

# Claim owners: a random prefix, the pid and a counter, so every claimed batch has its own
# token without a getrandom() call (a system call releases the GIL: a costly handoff here).
_OWNER_PREFIX = secrets.token_hex(6)
_owner_serial = itertools.count(1)

ClientFactory = Callable[[], QueueClient]
#: After the drain's deadline, how long the ackers get to give up held completions (and log
#: them) before the worker returns; within consumer.runtime.service's DRAIN_GRACE_S.
_GIVE_UP_S = 0.7
#: Visibility extensions the heartbeat makes at once (a queue client each): a full window of
#: 256 at ~50 ms a call takes ~1.6 s a pass, well inside the default 10 s `extend_before_s`.
HEARTBEAT_CALLS = 8


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
    crashes: CrashLedger | None = None  # poison isolation (None: suspects run as usual)


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
        self.acks: queue.Queue[list[InFlight] | None] = queue.Queue()
        self.stop_receiving = threading.Event()  # first signal: drain
        # Set when the drain's budget ran out: retries stop, held completions are given up.
        self.abort = abort or threading.Event()
        self.lifecycle = Lifecycle(
            LifecycleParts(pipeline.dedup, pipeline.dead_letters, pipeline.dispatcher,
                           config.retry, config.ack.completed_ttl_s, pipeline.key_of),
            self.stats, self.abort)
        self.poison = PoisonGuard(pipeline.crashes, self._running_in_time,
                                  pipeline.dispatcher.longest_deadline_s,
                                  float(config.ack.visibility_timeout_s))
        self.acks_closed = threading.Event()     # the ackers' STOPs are queued
        self._threads: dict[str, list[threading.Thread]] = {}
        self._clients: list[QueueClient] = []
        self.last_progress = time.monotonic()    # a poller finished a turn (watchdog)
        self.ready = threading.Event()           # a poll went through: MNS, token, Redis ok
        self.redis_down = threading.Event()      # a claim failed: pollers wait for Redis
        self.last_error: str | None = None       # the latest poll failure, None once healthy
        self.recycle_reason: str | None = None   # why the worker stops by itself, if it does

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        c = self.config
        self._spawn("poller", c.pollers, self._poll_loop, indexed=True)
        self._spawn("runner", c.runners, self._run_loop)
        self._spawn("acker", c.ackers, self._ack_loop, indexed=True)
        hold_s = WEDGED_AFTER_DEADLINES * self.p.dispatcher.longest_deadline_s  # then: hung
        heartbeat = Heartbeat([self._client() for _ in range(HEARTBEAT_CALLS)], self.p.dedup,
                              self.window, self.stats, c.ack, running_hold_s=hold_s)
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
        """Stops receiving, hands back what has not started, waits for running handlers and
        for completions that wait for Redis until `deadline` (monotonic; default: the
        shutdown budget from now).

        Returns True when everything in flight was settled. At the deadline, completions
        still waiting for Redis are given up (`completion_unrecorded`, see
        consumer.pipeline.lifecycle) and their messages left to come back after their
        visibility; a handler still running keeps its message invisible: the process must
        exit now, which ends its thread (consumer.runtime.service.serve does, with os._exit).
        """
        self.stop_receiving.set()
        self.p.dispatcher.close()  # queued calls end NOT_STARTED: handed back by the ackers
        if deadline is None:
            deadline = time.monotonic() + self.config.shutdown_budget_s
        for t in self._threads.get("poller", []):
            t.join(max(0.0, deadline - time.monotonic()))
        drained = self.window.wait_empty(deadline)
        if not drained:
            self.abort.set()  # held completions and retries give up now
        for _ in self._threads.get("runner", []):
            self.work.put(None)
        for _ in self._threads.get("acker", []):
            self.acks.put(STOP)
        self.acks_closed.set()  # parked ackers leave; the working ones meet a STOP
        # Past the deadline, a moment for the ackers to log what they give up.
        until = max(deadline, time.monotonic() + (0 if drained else _GIVE_UP_S))
        for name in ("runner", "acker"):
            for t in self._threads.get(name, []):
                t.join(max(0.0, until - time.monotonic()))
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

    def _transport(self) -> MnsTransport:
        """A transport for the calling thread, on its own SDK client."""
        return MnsTransport(self._client(), self.config.message_type, self.window, self.stats,
                            self.abort, self.config.ack.delete_batch_max)

    def _poll_loop(self, index: int) -> None:
        transport = self._transport()
        client = transport.client
        backoff = Backoff()
        while not self.stop_receiving.is_set():
            try:
                if self.redis_down.is_set():  # receive nothing we cannot claim (docstring)
                    self.p.dedup.ping()
                    self.redis_down.clear()
                self._gated_iteration(transport, index)
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

    def _gated_iteration(self, transport: MnsTransport, index: int) -> None:
        """One `_poll_iteration` once the poll gate (consumer.sources.mns.gate) lets it in."""
        if not self.poll_gate.wait_turn(index, self.stop_receiving):
            return
        timing = self._poll_iteration(transport)
        if timing is not None:
            self.poll_gate.record(*timing)

    def _poll_iteration(self, transport: MnsTransport) -> tuple[float, float] | None:
        """receive -> prepare -> claim -> route; raises on a failed receive or claim.

        Returns (round trip, work after it) in seconds when messages came, else None.
        """
        c = self.config
        if not self.window.reserve(c.batch_size, self.stop_receiving):
            return None
        # Between batches, after the wait for room: what grew meanwhile counts.
        if c.max_rss_mb is not None and _rss_mb() > c.max_rss_mb:
            self.window.unreserve(c.batch_size)
            self.recycle("max_rss_mb")
            return None
        began = time.monotonic()
        try:
            deliveries = transport.client.receive(c.batch_size, c.wait_seconds)
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
        claimable = self.lifecycle.prepare(items, transport)
        owner = "%s-%x-%x" % (_OWNER_PREFIX, os.getpid(), next(_owner_serial))  # fork-safe
        # The lease ends with the batch's earliest visibility (the heartbeat renews both).
        lease_s = max(1.0, min((i.next_visible_ms for i in items), default=0) / 1000
                      - time.time())
        try:
            to_run = self.lifecycle.claim(claimable, owner, lease_s)
        except TransientError:
            self.redis_down.set()
            self._give_up(claimable)
            self._route(transport, [i for i in items if i.decision is not None], [])
            raise
        self._route(transport, [i for i in items if i.decision is not None], to_run)
        return received - began, time.monotonic() - received

    def _route(self, transport: MnsTransport, decided: list[InFlight],
               to_run: list[InFlight]) -> None:
        to_ack: list[InFlight] = []
        to_leave: list[InFlight] = []
        for item in decided:
            (to_leave if cast(Decision, item.decision).verdict is Verdict.LEAVE
             else to_ack).append(item)
        if to_leave:  # another live delivery holds the claim: MNS brings these back later
            self.lifecycle.settle(to_leave, transport)
        if to_ack:
            self.acks.put(to_ack)
        if to_run:
            self.work.put(to_run)

    def _give_up(self, items: list[InFlight]) -> None:
        """Redis is away: let MNS re-deliver these later; nothing was claimed or run."""
        self.stats.incr("handed_back", len(items))
        self.window.settle_many(items)

    # -- runners and ackers -------------------------------------------------------------

    def _run_loop(self) -> None:
        lifecycle, acks = self.lifecycle, self.acks
        while True:
            batch = self.work.get()
            if batch is None:
                return
            # A receipt past its deadline stays undecided: its message stays ours (the
            # heartbeat extends it) until its handler returns and reaches the ackers late.
            # A suspect of a crash runs alone (consumer.pipeline.poison).
            self.poison.run(lifecycle, batch, acks.put)

    def _running_in_time(self) -> int:
        """Handler calls running and not yet stuck: a suspect waits for these only (a stuck
        one may never return; waiting for it would stall every suspect by a deadline)."""
        dispatcher = self.p.dispatcher
        return sum(1 for _r, _h, running_s in dispatcher.running()
                   if running_s < dispatcher.longest_deadline_s)

    def _ack_loop(self, index: int) -> None:
        """Settles groups from the acks queue, while the ack gate lets this acker work, until
        it meets STOP (or, parked, until the ackers are closed)."""
        transport = self._transport()
        while self.ack_gate.wait_turn(index, self.acks_closed):
            group = collect(self.acks, self.config.ack)
            if group is None:
                return
            self.lifecycle.settle(group, transport)  # never empty: only non-empty lists


def _rss_mb() -> float:
    """Resident set size of this process in MiB, from /proc (Linux)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
