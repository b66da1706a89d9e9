"""`alicom-receipts numbers`: the suppression list of the number-hygiene handler.

    alicom-receipts numbers check PHONE...          exit 1 when any is suppressed
    alicom-receipts numbers list [--reason R]
    alicom-receipts numbers export --format csv [--reason R]
    alicom-receipts numbers remove PHONE...
    alicom-receipts numbers add PHONE --reason TEXT [--expire-days N]

Redis, prefix and hashing come from the `number-hygiene` handler's options in the
configuration (or `--redis-url` / `--prefix` / `--hash-numbers`). With hashed numbers,
listings and exports show the hashes (`h:...`) and say so. Exit status: 0 done (for
`check`: none suppressed), 1 some suppressed, 2 bad arguments or configuration, 3 Redis
did not answer.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

from consumer.cli.runner import CommandParser, config_in_every_action, non_negative
from consumer.cli.targets import (
    add_target_arguments,
    handler_options,
    open_redis,
    run_on_redis,
)
from consumer.clients.redis_client import RedisClient
from consumer.receipts import SHANGHAI
from consumer.reports.numbers import DEFAULT_PREFIX, NumberList, NumberRecord
from consumer.reports.phone_ids import phone_ids

_USES = frozenset({"number-hygiene", "consumer.handlers.number_hygiene:NumberHygiene"})
_HASHED_NOTE = "note: numbers are stored as keyed hashes (hash_numbers is on): shown as h:...\n"
CSV_COLUMNS = ("number", "reason", "failures", "first_failure", "last_failure",
               "suppressed_since", "suppressed_until", "err_code", "err_msg")


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = CommandParser(prog="alicom-receipts numbers",
                      description="Numbers not to send to, and why.")
    add_target_arguments(p)
    p.add_argument("--prefix", default=None, help="key prefix (default: from the handler)")
    p.add_argument("--hash-numbers", action="store_true", default=None,
                   help="numbers are stored hashed (default: from the handler)")
    sub = p.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="exit 1 when any of the numbers is suppressed")
    check.add_argument("phones", nargs="+", metavar="PHONE", help="the numbers to look up")
    listing = sub.add_parser("list", help="the suppressed numbers")
    listing.add_argument("--reason", default=None, help="only numbers suppressed for this reason")
    export = sub.add_parser("export", help="the suppressed numbers as CSV")
    export.add_argument("--format", choices=("csv",), default="csv",
                        help="the output format (csv, the default)")
    export.add_argument("--reason", default=None, help="only numbers suppressed for this reason")
    remove = sub.add_parser("remove", help="forget numbers (suppressed or not)")
    remove.add_argument("phones", nargs="+", metavar="PHONE", help="the numbers to forget")
    add = sub.add_parser("add", help="suppress a number by hand (a manual blacklist)")
    add.add_argument("phone", metavar="PHONE", help="the number to suppress")
    add.add_argument("--reason", required=True, help="why (kept as the record's message)")
    add.add_argument("--expire-days", type=non_negative, default=0.0, help="0: until removed")
    config_in_every_action(sub)
    return p.parse_args(list(argv))


def open_numbers(args: argparse.Namespace) -> tuple[NumberList, RedisClient]:
    """The number list the configuration's number-hygiene handler writes."""
    target = handler_options(args, _USES)
    hashed = args.hash_numbers if args.hash_numbers is not None else bool(
        target.options.get("hash_numbers", False))
    client = open_redis(target.url)
    prefix = str(args.prefix or target.options.get("prefix") or DEFAULT_PREFIX)
    return NumberList(client, prefix, phone_ids(hashed)), client


def when(epoch_s: float | None) -> str:
    """Asia/Shanghai `yyyy-MM-dd HH:mm:ss` (the platform's clock); "-" for none, "never"
    for no end."""
    if epoch_s is None or epoch_s == 0:
        return "-"
    if epoch_s == float("inf"):
        return "never"
    return datetime.fromtimestamp(epoch_s, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def _row(r: NumberRecord) -> list[str]:
    return [r.number, r.reason, str(r.failures), when(r.first_failure), when(r.last_failure),
            when(r.suppressed_since), when(r.suppressed_until), r.err_code, r.err_msg]


def _act(args: argparse.Namespace, numbers: NumberList, out: TextIO) -> int:
    if args.action == "check":
        flags = numbers.suppressed_many(args.phones)
        for phone, flag in zip(args.phones, flags, strict=True):
            record = numbers.get(phone) if flag else None
            out.write("%s\t%s\n" % (phone, "suppressed: %s until %s" % (
                record.reason, when(record.suppressed_until)) if record else "ok"))
        return 1 if any(flags) else 0
    if args.action in ("list", "export"):
        records = numbers.suppressed(args.reason)
        if numbers.ids.hashed:
            sys.stderr.write(_HASHED_NOTE)
        if args.action == "export":
            writer = csv.writer(out, lineterminator="\n")
            header = list(CSV_COLUMNS)
            header[0] = "number_hash" if numbers.ids.hashed else "number"
            writer.writerow(header)
            writer.writerows(_row(r) for r in records)
            return 0
        out.write("%d suppressed%s\n" % (len(records), " (%s)" % args.reason if args.reason
                                         else ""))
        for r in records:
            cells = _row(r)
            out.write("  %-16s %-14s %3s failures, last %s, until %s  %s %s\n" % (
                cells[0], cells[1], cells[2], cells[4], cells[6], cells[7], cells[8]))
        return 0
    if args.action == "remove":
        out.write("removed %d of %d\n" % (numbers.remove(args.phones), len(args.phones)))
        return 0
    record = numbers.add(args.phone, args.reason, args.expire_days)
    out.write("%s suppressed by hand until %s\n" % (args.phone, when(record.suppressed_until)))
    return 0


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """The `numbers` command (exit status: see the module docstring)."""
    args = _parse(argv)
    # ConfigError: the runner's one line, exit 2
    return run_on_redis("numbers", lambda: open_numbers(args),
                        lambda numbers: _act(args, numbers, out or sys.stdout))
