"""`alicom-receipts reconcile [--config FILE] [--grace DURATION] [--limit N]`.

Asks QuerySendDetails about tracked sends still without a delivery report after the grace
period, and feeds what it finds through the handlers (consumer.sources.reconcile.run).
Prints one summary line; exit status 0, 1 when lookups failed or receipts are to be retried,
2 for a usage or configuration error (consumer.cli.runner).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

import redis
import structlog

from consumer.cli.runner import CommandParser, add_config_argument, load
from consumer.errors import AlicomReceiptsError, ConfigError
from consumer.runtime.instruments import record_reconcile
from consumer.runtime.metrics import setup_metrics
from consumer.sources.reconcile.run import (
    ReconcileBusy,
    parse_duration,
    run_once,
    summary_line,
)

log = structlog.get_logger("alicom_receipts.reconcile")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number, got %r" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %d" % value)
    return value


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = CommandParser(prog="alicom-receipts reconcile",
                      description="Recover lost SmsReport receipts of tracked sends "
                                  "through QuerySendDetails.")
    add_config_argument(p)
    p.add_argument("--grace", type=_duration, default=None, metavar="DURATION",
                   help="only sends older than this, e.g. 900s, 15m, 2h (default: [reconcile] "
                        "grace_s)")
    p.add_argument("--limit", type=_count, default=None, metavar="N",
                   help="look up at most N sends this run (default: [reconcile] max_sends)")
    return p.parse_args(list(argv))


def main(argv: Sequence[str], env: Mapping[str, str] | None = None,
         out: TextIO = sys.stdout) -> int:
    args = _parse(argv)
    environ = dict(os.environ if env is None else env)
    settings = load(args, environ)
    rs = settings.reconcile
    grace_s = rs.grace_s if args.grace is None else args.grace
    if args.limit is not None:
        rs = rs.with_limit(args.limit)
    metrics = setup_metrics(settings.metrics, "", None, role="reconcile")
    try:
        counts = run_once(settings, rs, settings.tracking, grace_s, environ)
        if metrics is not None:
            record_reconcile(metrics, counts)
    except ConfigError:
        raise  # the runner's one line and exit status 2
    except ReconcileBusy as exc:
        print("alicom-receipts reconcile: another run holds the lease (%s); leaving it to "
              "that one" % exc.holder, file=out, flush=True)
        log.info("reconcile_busy", holder=exc.holder)
        return 0
    except (AlicomReceiptsError, redis.RedisError) as exc:
        log.error("reconcile_failed", error=str(exc))  # noqa: TRY400 - the message says it all
        return 1
    finally:
        if metrics is not None:
            metrics.close()
    print(summary_line(counts), file=out, flush=True)
    log.info("reconcile_summary", **dict(counts))
    return 1 if counts["lookup_errors"] or counts["retry_later"] else 0
