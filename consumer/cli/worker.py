"""`alicom-receipts worker --queue TYPE [--config FILE]`: one worker process for one queue.

The composition is `consumer.runtime.app.build_worker`; systemd's `Type=notify` handshake and
the drain on SIGTERM are `consumer.runtime.service.serve`. Exit statuses: 0 (drained, or
recycled by max_receipts / max_rss_mb), 1 (crashed), 2 (configuration), 75 (a temporary
start-up failure: consumer.cli.runner).
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Sequence

import structlog

from consumer.cli.runner import CommandParser, add_config_argument, load, queue_type
from consumer.runtime.app import CLOSE_TIMEOUT_S, build_worker
from consumer.runtime.service import exit_now, serve
from consumer.runtime.worker_health import http_health

log = structlog.get_logger("alicom_receipts.app")


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = CommandParser(prog="alicom-receipts worker",
                           description="Run one worker process for one queue type.")
    parser.add_argument("--queue", required=True, metavar="TYPE",
                        help="the message type to consume (SmsReport, SmsUp, ...) or its "
                             "queue's name (Alicom-Queue-<account id>-SmsReport)")
    add_config_argument(parser)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    env = dict(os.environ)
    settings = load(args, env)
    worker, resources = build_worker(settings, queue_type(settings, args.queue), env)
    log.info("settings", **settings.describe())
    code = 1
    try:
        code = serve(worker, settings.service,
                     on_health=http_health(resources.metrics, settings.service))
    except Exception:
        log.exception("worker_crashed")
    finally:
        # A handler's close() may wait on a thread that never returns: bounded too.
        closer = threading.Thread(target=resources.close, name="close", daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT_S)
    return exit_now(code)
