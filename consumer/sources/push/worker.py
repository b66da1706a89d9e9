"""`alicom-receipts push-worker`: runs the push pipeline (consumer.sources.push.pipeline) on
threads.

The push server (consumer.sources.push.server) appends every pushed receipt to a Redis stream;
this command
drains it as a consumer group with `[push] consumers` threads through the same decoding,
dedup, handlers, outcome rules and dead letters as the MNS worker. The first SIGTERM/SIGINT
lets each thread finish its batch; a second exits at once (unsettled entries stay pending
and are re-taken after `reclaim_idle_s`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import structlog

from consumer.clients.redis_client import connect_at_start
from consumer.clients.redis_guard import guard
from consumer.errors import ConfigError
from consumer.handlers.plugins import close_handlers, handler_dispatcher, load_handlers
from consumer.pipeline.deadletter_store import RedisDeadLetterStore
from consumer.pipeline.dedup import RedisDedupStore, replication_of
from consumer.pipeline.outcome import RetryPolicy
from consumer.pipeline.stats import Stats
from consumer.settings import PushSettings, Settings
from consumer.sources.push.pipeline import PushWorker

__all__ = ["build_push_worker", "serve"]

log = structlog.get_logger("alicom_receipts.push_worker")


def build_push_worker(settings: Settings, push: PushSettings, stats: Stats | None = None,
                      ) -> tuple[PushWorker, Callable[[], None]]:
    """The worker and a `close()` for what it opened; ConfigError on a bad setup."""
    if settings.worker.handler_deadline_s >= push.reclaim_idle_s - 0.5:
        raise ConfigError("push.reclaim_idle_s (%s) must exceed worker.handler_deadline_s "
                          "(%s) by more than 0.5 s: an entry still being handled would be "
                          "re-taken" % (push.reclaim_idle_s, settings.worker.handler_deadline_s))
    client = connect_at_start(settings.redis_url, socket_timeout_s=push.block_s + 5,
                              connect_timeout_s=5, health_check_interval_s=30)
    guard(client, "push-worker", allow_eviction=settings.redis_allow_eviction)
    routes = load_handlers(settings.handlers)
    dispatcher = handler_dispatcher(routes, settings)
    ack = settings.ack
    worker = PushWorker(
        client, push, RedisDedupStore(client, settings.dedup),
        RedisDeadLetterStore(client, settings.deadletter, replication_of(settings.dedup)),
        dispatcher,
        RetryPolicy(ack.retry_base_s, ack.retry_max_s, ack.max_dequeue_count),
        settings.dedup.completed_ttl_s, stats, key_of=settings.key_function())

    def close() -> None:
        try:
            close_handlers(dispatcher.routes)
            dispatcher.close()
        finally:
            client.close()

    return worker, close


def serve(worker: PushWorker, consumer_base: str, budget_s: float) -> int:
    """Runs the consumer threads until SIGTERM/SIGINT; a second signal exits at once.

    Each thread finishes its batch (bounded by the handler deadline, and by Redis answering
    for a completion it holds); what is not settled within `budget_s` stays pending and is
    re-taken after reclaim_idle_s.
    """
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if worker.stop.is_set():
            log.warning("second_signal_exit_now", signal=signum)
            os._exit(1)
        log.info("stopping", signal=signum)
        worker.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    names = ["%s-%d" % (consumer_base, i) for i in range(worker.push.consumers)]
    threads = [threading.Thread(target=worker.run, args=(name,), name=name, daemon=True)
               for name in names]
    for thread in threads:
        thread.start()
    threading.Thread(target=worker.keep_leases, name="push-leases", daemon=True).start()
    log.info("push_worker_started", stream=worker.push.stream, group=worker.push.group,
             consumers=names)
    while not worker.stop.wait(1.0):
        pass
    deadline = time.monotonic() + budget_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        # The budget ran out (e.g. completions waiting for Redis): they give up now, each
        # logged as completion_unrecorded, and the threads leave.
        worker.abort.set()
        for thread in threads:
            thread.join(5.0)
    drained = not any(t.is_alive() for t in threads)
    if drained:
        for name in names:
            worker.forget(name)
    log.info("push_worker_stopped", drained=drained, **worker.stats.snapshot())
    return 0
