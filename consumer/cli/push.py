"""`alicom-receipts push-server` and `alicom-receipts push-worker`: the HTTP batch push path.

    alicom-receipts push-server [--config FILE]
    alicom-receipts push-worker [--config FILE] [--consumer NAME]

The server (consumer.sources.push.server) answers the platform's POSTs once each batch is in
the Redis stream; the worker (consumer.sources.push.worker) drains the stream through dedup,
the handlers and the dead letters. Both read the `[push]` section; configuration errors and
a listen address in use are one line and an exit status (consumer.cli.runner).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import threading
from collections.abc import Sequence
from typing import NoReturn

import structlog

from consumer.cli.runner import CommandParser, add_config_argument, load
from consumer.clients.redis_client import connect_at_start
from consumer.clients.redis_guard import guard
from consumer.pipeline.stats import Stats
from consumer.receipts import MESSAGE_TYPES
from consumer.runtime import logs
from consumer.runtime.health import (
    DEFAULT_STALL_S,
    Beat,
    install,
    keep_beating,
    loop_checks,
)
from consumer.runtime.instruments import PushRequests, redis_memory_sampler, redis_sampler
from consumer.runtime.metrics import setup_metrics
from consumer.settings import PushSettings, Settings
from consumer.sources.push.server import RequestObserver, start_serving, stop_serving
from consumer.sources.push.worker import build_push_worker, serve

log = structlog.get_logger("alicom_receipts.push")


async def _serve_until_signalled(settings: PushSettings, redis_url: str,
                                 observer: RequestObserver | None, beat: Beat) -> None:
    """Serves until SIGTERM/SIGINT, beating the health while Redis answers, then stops
    gracefully (stop_serving: requests in progress finish)."""
    serving = await start_serving(settings, redis_url, observer)
    log.info("push_server_listening", port=serving.port,
             max_connections=serving.receiver.guard.max_connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    beating = asyncio.create_task(keep_beating(beat, serving.receiver.ping, stop))
    await stop.wait()
    await beating
    await stop_serving(serving)


def _server_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = CommandParser(
        prog="alicom-receipts push-server",
        description="Receive the platform's HTTP batch pushes on [push] listen, store each "
                    "batch in the Redis stream, then answer.")
    add_config_argument(parser)
    return parser.parse_args(list(argv))


def _guard_redis(settings: Settings) -> None:
    """A 200 promises the receipts are stored: refuse a Redis that may evict them or forget
    them on a restart (no AOF), unless allowed (consumer.clients.redis_guard)."""
    client = connect_at_start(settings.redis_url, socket_timeout_s=2, connect_timeout_s=2)
    try:
        guard(client, "push-server", allow_eviction=settings.redis_allow_eviction,
              needs_aof=True, allow_volatile=settings.push.allow_volatile)
    finally:
        client.close()


def server_main(argv: Sequence[str]) -> int:
    """The push server until SIGTERM/SIGINT (a graceful stop: requests in progress finish)."""
    args = _server_args(argv)
    settings = load(args)
    push = settings.push
    _guard_redis(settings)
    metrics = setup_metrics(settings.metrics, "", None, role="push-server")
    log.info("push_server_starting", listen=push.listen, path_prefix=push.path_prefix,
             secret_set=push.secret is not None, allowlist=list(push.allowlist),
             stream=push.stream, types=sorted(MESSAGE_TYPES))
    observer = None
    beat = Beat(settings.service.watchdog_stall_s or DEFAULT_STALL_S)
    if metrics is not None:
        install(metrics.exposition.routes, beat.live, beat.is_ready)
        observer = PushRequests(metrics, MESSAGE_TYPES)
        sync = connect_at_start(settings.redis_url, socket_timeout_s=2, connect_timeout_s=2)
        metrics.add_sampler(redis_sampler(metrics, "push_stream_length",
                                          lambda: int(sync.xlen(push.stream))))
        metrics.add_sampler(redis_memory_sampler(metrics, sync))
    try:
        asyncio.run(_serve_until_signalled(push, settings.redis_url, observer, beat))
    finally:
        if metrics is not None:
            metrics.close()
    log.info("push_server_stopped")
    return 0


def _worker_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = CommandParser(
        prog="alicom-receipts push-worker",
        description="Drain pushed receipts through dedup, handlers and dead letters.")
    add_config_argument(parser)
    parser.add_argument("--consumer", default="%s-%d" % (socket.gethostname(), os.getpid()),
                        help="this process's consumer name in the stream's group (default: "
                             "host-pid); its threads add -1, -2, ...")
    return parser.parse_args(list(argv))


def worker_main(argv: Sequence[str]) -> NoReturn:
    """The push worker until SIGTERM/SIGINT; what is not settled stays pending for others."""
    args = _worker_args(argv)
    settings = load(args)
    stats = Stats()
    # Before the handlers load: a plugin's own metrics must see multiprocess mode.
    metrics = setup_metrics(settings.metrics, "", stats, role="push-worker")
    try:
        worker, close = build_push_worker(settings, settings.push, stats)
    except BaseException:
        if metrics is not None:
            metrics.close()
        raise
    if metrics is not None:
        metrics.add_sampler(redis_sampler(metrics, "push_pending", worker.pending))
        metrics.add_sampler(redis_memory_sampler(metrics, worker.redis))
        live, ready = loop_checks(lambda: worker.last_turn, lambda: worker.redis_error,
                                  worker.stop.is_set,
                                  settings.service.watchdog_stall_s or DEFAULT_STALL_S)
        install(metrics.exposition.routes, live, ready)
    code = 1
    try:
        code = serve(worker, args.consumer, settings.worker.shutdown_budget_s)
    finally:
        # A handler's close() may wait on a stuck call: bounded, like the wait for the call.
        closer = threading.Thread(target=close, name="close", daemon=True)
        closer.start()
        closer.join(1.0)
        if metrics is not None:
            metrics.close()
    # os._exit: a stuck handler thread (the pool's threads are joined at a normal exit)
    # must not keep the process alive; its entry comes back after reclaim_idle_s.
    logs.flush()
    os._exit(code)
