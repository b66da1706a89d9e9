"""`alicom-receipts reviews`: the review state of every signature and template.

    alicom-receipts reviews list [--state approving|approved|rejected]
    alicom-receipts reviews history sign|template NAME

Written by the `review-status` handler from SignSmsReport / TemplateSmsReport receipts
(`consumer.reports.reviews`); Redis and prefix from its options (or the flags). Exit status:
0 done, 1 nothing known of that item, 2 bad arguments or configuration, 3 Redis did not answer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from consumer.cli.numbers import when
from consumer.cli.runner import CommandParser, config_in_every_action
from consumer.cli.targets import (
    add_target_arguments,
    handler_options,
    open_redis,
    run_on_redis,
)
from consumer.clients.redis_client import RedisClient
from consumer.reports.reviews import DEFAULT_PREFIX, Review, ReviewStore

_USES = frozenset({"review-status", "consumer.handlers.review_status:ReviewStatus"})
_LABELS = {"approving": "in review", "approved": "approved", "rejected": "rejected"}


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = CommandParser(prog="alicom-receipts reviews",
                      description="Review states of signatures and templates.")
    add_target_arguments(p)
    p.add_argument("--prefix", default=None, help="key prefix (default: from the handler)")
    sub = p.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="the latest state of each signature and template")
    listing.add_argument("--state", default=None, help="only this state (e.g. rejected)")
    history = sub.add_parser("history", help="every review of one signature or template")
    history.add_argument("kind", choices=("sign", "template"),
                         help="a signature (sign) or a template")
    history.add_argument("name", help="the signature's name or the template's code")
    config_in_every_action(sub)
    return p.parse_args(list(argv))


def open_reviews(args: argparse.Namespace) -> tuple[ReviewStore, RedisClient]:
    target = handler_options(args, _USES)
    client = open_redis(target.url)
    return ReviewStore(client, str(args.prefix or target.options.get("prefix")
                                   or DEFAULT_PREFIX)), client


def state_label(state: str) -> str:
    """"in review" for approving; the platform's word otherwise."""
    return _LABELS.get(state, state)


def _line(r: Review) -> str:
    reason = ("  reason: " + r.reason) if r.reason and r.state == "rejected" else ""
    return "%-8s %-28s %-9s %s  order %s%s" % (r.kind, r.name, state_label(r.state), when(r.at),
                                                r.order_id or "-", reason)


def _act(args: argparse.Namespace, store: ReviewStore, out: TextIO) -> int:
    if args.action == "list":
        reviews = store.current(args.state)
        out.write("%d %s\n" % (len(reviews), "signatures and templates" if args.state is None
                               else "in state %s" % args.state))
        for r in reviews:
            out.write("  " + _line(r) + "\n")
        return 0
    history = store.history(args.kind, args.name)
    if not history:
        sys.stderr.write("alicom-receipts reviews: no review of %s %r\n" % (args.kind, args.name))
        return 1
    for r in history:
        out.write("  " + _line(r) + "\n")
    return 0


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """The `reviews` command (exit status: see the module docstring)."""
    args = _parse(argv)
    # ConfigError: the runner's one line, exit 2
    return run_on_redis("reviews", lambda: open_reviews(args),
                        lambda store: _act(args, store, out or sys.stdout))
