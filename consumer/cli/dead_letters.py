"""`alicom-receipts dead-letters list | show | replay | purge`.

Replay runs dead letters through the one lifecycle, in this process, with the dead-letter
store as its source (consumer.sources.replay.transport): decode, dedup claim, the configured
handlers behind the crash guard, the one decision function, the completion record. A
replayed letter is removed only once its handlers succeeded or it was already applied.

Exit status: 0 done, 1 no such dead letter (`show`, or an ID given to `replay`), a replayed
letter still dead or a Redis failure, 2 bad arguments or configuration (the command runner's).
A missing letter is one line on stderr, as `tasks show` and `reviews history` say theirs.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TextIO

from consumer.cli.runner import (
    CommandParser,
    add_config_argument,
    config_in_every_action,
    load,
    queue_type,
)
from consumer.clients.redis_client import RedisClient, connect_at_start
from consumer.errors import AlicomReceiptsError, ConfigError, StartupUnavailable
from consumer.handlers.plugins import close_handlers, handler_dispatcher, load_handlers
from consumer.pipeline.deadletter import DeadLetter
from consumer.pipeline.deadletter_store import RedisDeadLetterStore
from consumer.pipeline.dedup import RedisDedupStore, replication_of
from consumer.pipeline.lifecycle import Lifecycle, LifecycleParts
from consumer.pipeline.outcome import RetryPolicy
from consumer.pipeline.stats import Stats
from consumer.settings import Settings
from consumer.sources.replay.transport import replay

_QUEUE_HELP = ("only letters of this queue: a message type (SmsReport) or its queue's name "
               "(Alicom-Queue-<account id>-SmsReport)")


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = CommandParser(prog="alicom-receipts dead-letters",
                      description="Inspect, replay or purge dead-lettered receipts.")
    add_config_argument(p)
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="newest first, one line each")
    ls.add_argument("--queue", default=None, help=_QUEUE_HELP)
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    ls.add_argument("--offset", type=int, default=0, help="skip this many newest (default 0)")
    show = sub.add_parser("show", help="one dead letter with its raw body")
    show.add_argument("id", help="the dead letter's id, as `list` shows it")
    replay = sub.add_parser("replay", help="run dead letters through the handlers again")
    replay.add_argument("ids", nargs="*", metavar="ID", help="the dead letters to replay")
    replay.add_argument("--all", action="store_true",
                        help="every dead letter (of --queue) instead of IDs")
    replay.add_argument("--queue", default=None, help=_QUEUE_HELP + " (with --all)")
    replay.add_argument("--handler", action="append", default=None, metavar="NAME",
                        help="run only this handler (repeatable; default: the handlers each "
                             "letter names as failed, else all not finished)")
    purge = sub.add_parser("purge", help="delete dead letters for good")
    purge.add_argument("--queue", default=None, help=_QUEUE_HELP)
    purge.add_argument("--yes", action="store_true", help="required: purging cannot be undone")
    config_in_every_action(sub)
    return p.parse_args(list(argv))


def _check_arguments(args: argparse.Namespace) -> None:
    """Raises ConfigError (one line) for what argparse accepted but the command cannot use."""
    if args.action == "list" and args.limit < 1:
        raise ConfigError("--limit must be at least 1, got %d" % args.limit)
    if args.action == "list" and args.offset < 0:
        raise ConfigError("--offset must be 0 or more, got %d" % args.offset)
    if args.action == "replay" and bool(args.ids) == bool(args.all):
        raise ConfigError("replay needs the IDs of dead letters, or --all (not both): "
                          "`alicom-receipts dead-letters list` shows them")
    if args.action == "purge" and not args.yes:
        raise ConfigError("purge deletes dead letters for good: add --yes to confirm")


def main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    args = _parse(argv)
    _check_arguments(args)
    settings = load(args)
    if getattr(args, "queue", None):
        args.queue = settings.queue_name(queue_type(settings, args.queue))
    try:  # a cluster's slot map is read now
        client = connect_at_start(settings.redis_url, socket_timeout_s=10)
    except StartupUnavailable as exc:  # its text scrubbed of any password
        print("alicom-receipts dead-letters: %s" % exc, file=sys.stderr)
        return 1
    store = RedisDeadLetterStore(client, settings.deadletter, replication_of(settings.dedup))
    try:
        if args.action == "list":
            return _list(store, args, out)
        if args.action == "show":
            return _show(store, args.id, out)
        if args.action == "purge":
            return _purge(store, args, out)
        return _replay(settings, client, store, args, out)
    except ConfigError:
        raise  # the runner's one line and exit 2
    except AlicomReceiptsError as exc:
        print("alicom-receipts dead-letters: %s" % exc, file=sys.stderr)
        return 1
    finally:
        client.close()


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _list(store: RedisDeadLetterStore, args: argparse.Namespace, out: TextIO) -> int:
    letters = store.list(args.limit, args.offset, queue=args.queue)
    for d in letters:
        print("%s  %s  %-18s %-20s %s" % (d.id, _when(d.dead_at_ms), d.message_type or "-",
                                          d.reason, d.detail[:80]), file=out)
    print("%d shown, %d in all" % (len(letters), store.count(args.queue)), file=out)
    return 0


def _show(store: RedisDeadLetterStore, letter_id: str, out: TextIO) -> int:
    d = store.get(letter_id)
    if d is None:
        _missing(letter_id)
        return 1
    doc = {
        "id": d.id, "queue": d.queue, "message_type": d.message_type, "source": d.source,
        "reason": d.reason, "detail": d.detail, "message_id": d.message_id,
        "dequeue_count": d.dequeue_count, "dead_at": _when(d.dead_at_ms),
        "failed_handlers": list(d.handlers),
        "raw_body": d.raw_body, "raw_body_is_base64": d.raw_body_is_base64,
        "decoded_body": _peek_body(d),
    }
    print(json.dumps(doc, ensure_ascii=False, indent=2), file=out)
    return 0


def _missing(letter_id: str) -> None:
    sys.stderr.write("alicom-receipts dead-letters: no dead letter %r (replayed, purged or "
                     "expired; `dead-letters list` shows those kept)\n" % letter_id)


def _peek_body(d: DeadLetter) -> str | None:
    """The base64 MNS body decoded for reading, when it is valid text; None otherwise."""
    if d.source != "mns":
        return None
    try:
        return base64.b64decode(d.raw_body, validate=True).decode("utf-8")
    except ValueError:
        return None


def _purge(store: RedisDeadLetterStore, args: argparse.Namespace, out: TextIO) -> int:
    print("purged %d dead letters" % store.purge(args.queue), file=out)
    return 0


def _replay(settings: Settings, client: RedisClient, store: RedisDeadLetterStore,
            args: argparse.Namespace, out: TextIO) -> int:
    letters, missing = _letters_to_replay(store, args)
    if not letters:
        if not missing:
            print("nothing to replay", file=out)
        return 1 if missing else 0
    routes = load_handlers(settings.handlers)
    unknown = sorted(set(args.handler or ()) - {h.name for hs in routes.values() for h in hs})
    if unknown:
        close_handlers(routes)
        raise ConfigError("replay --handler: no handler named %s in the configuration"
                          % ", ".join(unknown))
    dispatcher = handler_dispatcher(routes, settings)
    ack = settings.ack
    lifecycle = Lifecycle(LifecycleParts(
        RedisDedupStore(client, settings.dedup), store, dispatcher,
        RetryPolicy(ack.retry_base_s, ack.retry_max_s, ack.max_dequeue_count),
        settings.dedup.completed_ttl_s, settings.key_function()), Stats(), threading.Event())
    try:
        results = replay(letters, lifecycle, store, settings.worker.handler_deadline_s + 5,
                         chosen=frozenset(args.handler) if args.handler else None)
    finally:
        close_handlers(routes)
        dispatcher.close()
    for r in results:
        print("%s  %s" % (r.letter.id, r.summary()), file=out)
    failed = sum(1 for r in results if not r.ok)
    print("%d replayed, %d still dead" % (len(results) - failed, failed), file=out)
    return 1 if failed or missing else 0


def _letters_to_replay(store: RedisDeadLetterStore, args: argparse.Namespace,
                       ) -> tuple[list[DeadLetter], bool]:
    """The letters `replay` runs, and whether an ID it was given names no dead letter (each
    such ID is one line on stderr)."""
    if args.all:
        count = store.count(args.queue)  # list() takes a limit of at least 1
        return (store.list(count, 0, queue=args.queue) if count else []), False
    letters, missing = [], False
    for letter_id in args.ids:
        letter = store.get(letter_id)
        if letter is None:
            _missing(letter_id)
            missing = True
        else:
            letters.append(letter)
    return letters, missing
