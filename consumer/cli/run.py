"""`alicom-receipts run [--config FILE] [--processes N] [--queue TYPE ...]`: this host's
worker processes without systemd (the supervisor is `consumer.runtime.supervisor`).

A worker that exits with status 2 (its configuration is unusable) is not restarted: `run`
stops the others and exits 2 itself, as systemd does with `RestartPreventExitStatus=2`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import structlog

from consumer.cli.runner import CommandParser, add_config_argument, load, queue_type
from consumer.errors import ConfigError
from consumer.runtime import logs
from consumer.runtime.supervisor import Supervisor, plan_slots, process_spawner, supervise
from consumer.runtime.wakeups import NotifyInbox, SignalPipe
from consumer.settings import Settings, config_path

log = structlog.get_logger("alicom_receipts.supervisor")


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = CommandParser(
        prog="alicom-receipts run",
        description="Run this host's worker processes without systemd: restart them when "
                    "they exit (never after a configuration error), pass SIGTERM on, exit "
                    "when all have drained.")
    add_config_argument(parser)
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="worker processes per queue type, 1-256 (default: [run] "
                             "processes_per_queue)")
    parser.add_argument("--queue", action="append", default=None, metavar="TYPE",
                        help="a message type (or its queue's name) to run; repeatable "
                             "(default: [alicom] queues)")
    return parser.parse_args(list(argv))


def _choose(args: argparse.Namespace, settings: Settings) -> tuple[list[str], int]:
    """The queue types and processes per type; raises ConfigError for a bad flag."""
    chosen = [queue_type(settings, q) for q in args.queue] if args.queue else settings.queues
    processes = (args.processes if args.processes is not None
                 else settings.run.processes_per_queue)
    if not 1 <= processes <= 256:
        raise ConfigError("--processes must be 1-256, got %d" % processes)
    return list(dict.fromkeys(chosen)), processes


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    env = dict(os.environ)
    config = config_path(args.config, env)
    settings = load(args, env, configure_logs=False)
    queues, processes = _choose(args, settings)
    logs.configure(settings.log.level, settings.log.format)
    run = settings.run
    slots = plan_slots(queues, processes)
    inbox = NotifyInbox([slot.name for slot in slots])
    sup = Supervisor(slots, process_spawner(config, env, inbox), run,
                     settings.worker.shutdown_budget_s + run.stop_margin_s)
    log.info("run_started", queues=queues, processes_per_queue=processes,
             config=settings.source)
    try:
        with SignalPipe() as pipe:
            return supervise(sup, pipe, inbox)
    finally:
        inbox.close()
