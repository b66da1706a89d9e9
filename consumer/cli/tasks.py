"""`alicom-receipts tasks`: send tasks and how far their numbers got.

    alicom-receipts tasks list [--since 24h] [--status sending|done]
    alicom-receipts tasks show ID
    alicom-receipts tasks export ID --status delivered|failed|pending [--format csv]

A task is one SendSms / SendBatchSms call (its BizId) or a task id given to
`SendTracker.record(..., task_id=)` (`consumer.reports.tasks`). Redis, prefix and hashing
come from the `[tracking]` table and the `send-tracker` handler's options (or the flags).
Exit status: 0 done, 1 no such task, 2 bad arguments or configuration, 3 Redis did not answer.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from typing import TextIO

from consumer.cli.numbers import when
from consumer.cli.runner import CommandParser, config_in_every_action, parse_since
from consumer.cli.targets import (
    add_target_arguments,
    handler_options,
    open_redis,
    run_on_redis,
)
from consumer.clients.redis_client import RedisClient
from consumer.reports.err_codes import describe
from consumer.reports.tasks import DEFAULT_PREFIX, TaskCounts, TaskStore

_USES = frozenset({"send-tracker", "consumer.handlers.tracking:SendTracker"})


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = CommandParser(prog="alicom-receipts tasks",
                      description="Send tasks: submitted, delivered, failed, pending.")
    add_target_arguments(p)
    p.add_argument("--prefix", default=None, help="tasks key prefix (default: from the handler)")
    sub = p.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="tasks created within --since, newest first")
    listing.add_argument("--since", default="24h", help="Nh or Nd (default 24h)")
    listing.add_argument("--status", choices=("sending", "done"), default=None,
                         help="only tasks still sending (numbers pending) or done")
    show = sub.add_parser("show", help="one task's counts and failure reasons")
    show.add_argument("task_id", metavar="ID", help="the task's id (its BizId, or task_id=)")
    export = sub.add_parser("export", help="one task's numbers in one state, as CSV")
    export.add_argument("task_id", metavar="ID", help="the task's id (its BizId, or task_id=)")
    export.add_argument("--status", choices=("delivered", "failed", "pending"), required=True,
                        help="the numbers in this state")
    export.add_argument("--format", choices=("csv",), default="csv",
                        help="the output format (csv, the default)")
    config_in_every_action(sub)
    return p.parse_args(list(argv))


def open_tasks(args: argparse.Namespace) -> tuple[TaskStore, RedisClient, bool]:
    """The task store of the configured send-tracker handler, and whether numbers are hashed."""
    target = handler_options(args, _USES)
    client = open_redis(target.url)
    prefix = str(args.prefix or target.options.get("tasks_prefix") or DEFAULT_PREFIX)
    return TaskStore(client, prefix), client, bool(target.options.get("hash_numbers", False))


def summary_line(t: TaskCounts) -> str:
    return "%-28s %-19s %-7s %9d %9d %7d %7d" % (t.task_id, when(t.created), t.status,
                                                 t.submitted, t.delivered, t.failed, t.pending)


def _show(t: TaskCounts, out: TextIO) -> None:
    out.write("task %s (%s)\n  created %s, last change %s\n" % (
        t.task_id, t.status, when(t.created), when(t.updated)))
    out.write("  submitted %d, delivered %d, failed %d, pending %d\n" % (
        t.submitted, t.delivered, t.failed, t.pending))
    if t.reasons:
        out.write("failure reasons\n")
        for reason, n in sorted(t.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            out.write("  %-16s %6d\n" % (reason, n))
    if t.codes:
        out.write("failure codes\n")
        for code, n in sorted(t.codes.items(), key=lambda kv: (-kv[1], kv[0])):
            out.write("  %-28s %6d  %s\n" % (code, n, describe(
                "" if code == "(empty)" else code).meaning))


def _act(args: argparse.Namespace, store: TaskStore, hashed: bool, out: TextIO) -> int:
    if args.action == "list":
        tasks = store.tasks(parse_since(args.since) * 3600, args.status)
        out.write("%-28s %-19s %-7s %9s %9s %7s %7s\n" % (
            "task", "created", "status", "submitted", "delivered", "failed", "pending"))
        for t in tasks:
            out.write(summary_line(t) + "\n")
        return 0
    task = store.get(args.task_id)
    if task is None:
        sys.stderr.write("alicom-receipts tasks: no task %r (expired, or never recorded)\n"
                         % args.task_id)
        return 1
    if args.action == "show":
        _show(task, out)
        return 0
    if hashed:
        sys.stderr.write("note: numbers are stored as keyed hashes (hash_numbers is on)\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number_hash" if hashed else "number", "state", "err_code"])
    writer.writerows(store.numbers(args.task_id, args.status))
    return 0


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """The `tasks` command (exit status: see the module docstring)."""
    args = _parse(argv)
    if args.action == "list":
        parse_since(args.since)  # a bad --since is the runner's one-line error, exit 2

    def opened() -> tuple[tuple[TaskStore, bool], RedisClient]:
        store, client, hashed = open_tasks(args)
        return (store, hashed), client

    return run_on_redis("tasks", opened,
                        lambda got: _act(args, got[0], got[1], out or sys.stdout))
