"""Composition root: Settings in, a running worker out. The only place that wires the
SDK clients, Redis, the token service and the plugins together.

The command itself is `consumer.cli.worker` (`alicom-receipts worker --queue SmsReport`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog

from consumer.clients.credentials import load_access_key
from consumer.clients.redis_client import RedisClient, connect_at_start
from consumer.clients.redis_guard import guard
from consumer.clients.tokens import TokenService
from consumer.errors import AlicomReceiptsError, ConfigError
from consumer.handler_api import RoutedHandler
from consumer.handlers.plugins import (
    close_handlers,
    deadline_problems,
    handler_dispatcher,
    load_handlers,
)
from consumer.pipeline.deadletter_store import RedisDeadLetterStore
from consumer.pipeline.dedup import RedisDedupStore, replication_of
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.outcome import RetryPolicy
from consumer.pipeline.poison import CrashLedger
from consumer.pipeline.stats import Stats
from consumer.receipts import MESSAGE_TYPES
from consumer.runtime.instruments import redis_memory_sampler
from consumer.runtime.metrics import MetricsHandle, setup_metrics
from consumer.settings import Settings
from consumer.sources.mns.ack import AckConfig
from consumer.sources.mns.queue import MnsQueueClient, QueueClient
from consumer.sources.mns.worker import Pipeline, Worker, WorkerConfig

log = structlog.get_logger("alicom_receipts.app")
#: How long the worker waits for its handlers' and clients' close() before it exits anyway.
CLOSE_TIMEOUT_S = 1.0


def worker_config(settings: Settings, message_type: str) -> WorkerConfig:
    """The driver's knobs, derived once from the settings."""
    poll, ack, work = settings.poll, settings.ack, settings.worker
    return WorkerConfig(
        message_type=message_type,
        pollers=poll.pollers,
        # Runners only wait on the handler pool. An acker makes one MNS round trip per 16
        # messages (BatchDeleteMessage), as a poller does per receive: as many of each.
        runners=max(2, poll.pollers),
        ackers=max(2, poll.pollers),
        batch_size=poll.batch_size,
        wait_seconds=poll.wait_seconds,
        in_flight_max=work.in_flight_max,
        adaptive_concurrency=work.adaptive_concurrency,
        shutdown_budget_s=work.shutdown_budget_s,
        max_receipts=work.max_receipts,
        max_rss_mb=work.max_rss_mb,
        retry=RetryPolicy(ack.retry_base_s, ack.retry_max_s, ack.max_dequeue_count),
        ack=AckConfig(
            delete_batch_max=ack.delete_batch_max,
            delete_flush_s=ack.delete_flush_s,
            completed_ttl_s=settings.dedup.completed_ttl_s,
            visibility_timeout_s=ack.visibility_timeout_s,
            extend_before_s=ack.extend_before_s,
            max_in_flight_s=ack.max_in_flight_s,
        ),
    )


class _TokenStats:
    """Counts token events in the worker's stats object (consumer.clients.tokens.TokenObserver)."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def token_refreshed(self, message_type: str, lifetime_s: float) -> None:
        self._stats.incr("token_refreshes")
        self._stats.event("token_refreshed", time.time() + lifetime_s)

    # TokenService logs both already (token_fetch_retry / token_fetch_gave_up,
    # token_invalidated); a second line each would only repeat them.
    def token_fetch_failed(self, message_type: str, error: AlicomReceiptsError) -> None:
        self._stats.event("token_fetch_failed")

    def token_invalidated(self, message_type: str) -> None:
        pass


@dataclass
class Resources:
    """What `build_worker` opened; `close()` releases it all, crashes in it only logged."""

    redis: RedisClient
    tokens: TokenService
    dispatcher: Dispatcher
    metrics: MetricsHandle | None = None

    def close(self) -> None:
        try:
            close_handlers(self.dispatcher.routes)
            self.dispatcher.close()
        finally:
            self.redis.close()
            if self.metrics is not None:
                self.metrics.close()


def _checked_handlers(settings: Settings, metrics: MetricsHandle | None,
                      ) -> dict[str, list[RoutedHandler]]:
    """The configured handlers by receipt class, loaded, with deadlines that cannot outlast
    `ack.max_in_flight_s` (else a ConfigError naming them); `metrics` is closed when they
    fail, as the worker that would close it is never built."""
    try:
        routes = load_handlers(settings.handlers)
    except BaseException:
        if metrics is not None:
            metrics.close()
        raise
    problems = deadline_problems(routes, settings.ack.max_in_flight_s)
    if problems:
        close_handlers(routes)
        if metrics is not None:
            metrics.close()
        raise ConfigError("; ".join(problems))
    return routes


def build_worker(settings: Settings, message_type: str, env: dict[str, str],
                 stats: Stats | None = None) -> tuple[Worker, Resources]:
    """Builds every collaborator of one worker process; raises ConfigError on a bad setup."""
    if message_type not in MESSAGE_TYPES:
        raise ConfigError("--queue must be one of %s, got %r"
                          % (", ".join(sorted(MESSAGE_TYPES)), message_type))
    stats = stats or Stats()
    access_key = load_access_key(env, settings.preset)
    abort = threading.Event()  # the worker's "leave now": cuts token retry sleeps short too
    tokens = TokenService.from_settings(settings, access_key, observer=_TokenStats(stats),
                                        stop=abort)
    provider = tokens.credentials_provider(message_type)
    queue_name = settings.queue_name(message_type)

    def client_factory() -> QueueClient:
        return MnsQueueClient(settings.endpoints.mns_endpoint, queue_name, provider,
                              settings.poll.socket_timeout_s)

    client = connect_at_start(settings.redis_url, socket_timeout_s=5, connect_timeout_s=5,
                              health_check_interval_s=30)
    guard(client, "worker", allow_eviction=settings.redis_allow_eviction)
    # Before the plugins: a plugin's own prometheus metrics must see multiprocess mode.
    metrics = setup_metrics(settings.metrics, message_type, stats)
    if metrics is not None:
        metrics.add_sampler(redis_memory_sampler(metrics, client))
    routes = _checked_handlers(settings, metrics)
    dispatcher = handler_dispatcher(routes, settings,
                                    stuck_gauge=metrics.stuck_gauge if metrics else None)
    dedup = RedisDedupStore(client, settings.dedup)
    pipeline = Pipeline(
        client_factory=client_factory,
        dedup=dedup,
        dead_letters=RedisDeadLetterStore(client, settings.deadletter,
                                          replication_of(settings.dedup)),
        dispatcher=dispatcher,
        on_auth_error=provider.on_auth_error,
        stats=stats,
        key_of=settings.key_function(),
        crashes=CrashLedger(client, dedup.redis_key),
    )
    return Worker(worker_config(settings, message_type), pipeline, abort), Resources(
        client, tokens, dispatcher, metrics)
