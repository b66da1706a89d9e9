"""`alicom-receipts check [--config FILE]`: is this host ready to run workers?

Checks, in order: the configuration, the AccessKey, the handler plugins, Redis, then for
every configured message type a token from Dybaseapi and access to its queue. Prints ONE
line per problem, saying what is wrong and what to do, then exits 1; prints one `OK` line
and exits 0 when everything works; exits 2 when the arguments or the configuration are
unusable (each configuration problem on its own line).

Reaching a queue without taking a message away: BatchPeekMessage (one message, no receipt
handle, no change to its visibility or DequeueCount). Alibaba's queue token may not allow a
peek (the queues are Alibaba's, the token's policy is theirs); when the peek is refused as
AccessDenied, a ReceiveMessage with waitseconds=0 follows, and a message it got is made
visible again at once (ChangeMessageVisibility to 1 s: MNS refuses 0). That fallback raises
the DequeueCount of at most one message by one. An empty queue (MessageNotExist) is success:
the queue exists and the token was accepted. GetQueueAttributes is never used: customers'
tokens do not carry it.

Checks are single attempts with short timeouts: a check reports, it does not wait out an
outage. Nothing secret is printed (Redis passwords are masked; the AccessKey is named by
its id and where it came from).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis

from consumer.cli.runner import CommandParser, add_config_argument
from consumer.clients.credentials import AccessKey, load_access_key
from consumer.clients.redis_client import RedisClient, connect, scrub
from consumer.clients.redis_guard import findings, inspect
from consumer.clients.tokens import TokenService
from consumer.errors import (
    AlicomReceiptsError,
    AuthError,
    ConfigError,
    PermanentError,
    StartupUnavailable,
    clipped,
)
from consumer.handler_types import HandlerTypeError
from consumer.handlers.plugins import close_handlers, deadline_problems, load_handlers
from consumer.receipts import MESSAGE_TYPES, RECEIPT_CLASSES
from consumer.runtime import logs
from consumer.settings import (
    ENV_PREFIX,
    InvalidSettings,
    Settings,
    config_path,
    load_settings,
    redact_url,
)
from consumer.sources.mns.queue import MnsQueueClient

#: One network call of a check waits at most this long.
CHECK_TIMEOUT_S = 5.0


@dataclass
class Report:
    """Problems found so far, one line each, and what was checked."""

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said, but not failing the check

    def problem(self, area: str, what: str, todo: str) -> None:
        self.problems.append("%s: %s -> %s" % (area, clipped(what), todo))


def check_plugins(settings: Settings, report: Report) -> None:
    """Each `[[handlers]]` entry on its own (every broken one is reported, with the hint its
    failure calls for), then every queue type of `alicom.queues` has at least one handler:
    without one, each of its receipts would be dead-lettered as `no_handler`. A broken
    entry counts as covering the types it declares (all, when it declares none), so that its
    one problem is not reported twice."""
    usable, covered = [], set()
    for i, spec in enumerate(settings.handlers):
        try:
            close_handlers(load_handlers([spec]))
        except (ConfigError, StartupUnavailable) as exc:
            report.problem("handlers", str(exc), "%s (handlers[%d], use = %r)"
                           % (_handler_hint(exc), i, spec.use))
            covered |= set(spec.types) if spec.types is not None else set(RECEIPT_CLASSES)
        else:
            usable.append(spec)
    try:
        routes = load_handlers(usable)
    except ConfigError as exc:  # together: e.g. two handlers with one name
        report.problem("handlers", str(exc), "give each [[handlers]] its own `name`")
        return
    except StartupUnavailable as exc:  # its service went away since it was tried alone
        report.problem("handlers", str(exc), _handler_hint(exc))
        return
    for problem in deadline_problems(routes, settings.ack.max_in_flight_s):
        report.problem("handlers", problem, "lower the handler's deadline_s or raise "
                       "ack.max_in_flight_s")
    close_handlers(routes)
    covered |= set(routes)
    for message_type in settings.queues:
        cls = MESSAGE_TYPES[message_type].__name__
        if cls not in covered:
            report.problem("handlers", "no handler takes %s receipts: each one from queue %s "
                           "would be dead-lettered as no_handler" % (
                               cls, settings.queue_name(message_type)),
                           "add a [[handlers]] entry for %s (or one without `types`), or "
                           "remove %s from alicom.queues" % (cls, message_type))
    if len(usable) == len(settings.handlers):
        report.checked.append("%d handler(s)" % len(settings.handlers))


#: (what the loading failure's message contains, what to do about it), first match wins.
_HANDLER_HINTS: tuple[tuple[str, str], ...] = (
    ("unknown handler", "install the plugin's package into this virtual environment, or fix "
                        "`use` (an entry point name or package.module:attribute)"),
    ("cannot import module", "install the plugin's package into this virtual environment, "
                             "or fix the module in `use`"),
    ("bad handler reference", "write `use` as an entry point name or package.module:attribute"),
    ("has no attribute", "fix the attribute after the colon in `use`"),
    ("takes no options", "remove `options`: only a class handler takes them"),
    ("bad options", "fix `options`: the names and types the handler's class accepts (README)"),
    ("failed to start", "fix that handler's `options` (a path, URL or value it refused, as said)"),
)


def _handler_hint(exc: ConfigError | StartupUnavailable) -> str:
    """What to do about one handler's loading failure, by its kind."""
    if isinstance(exc, StartupUnavailable):
        return "start the service the handler writes to, or correct its url"
    if isinstance(exc.__cause__, HandlerTypeError):
        return ("make `types` in [[handlers]] (or @handler) and the annotation of the "
                "handler's receipt parameter agree")
    message = str(exc)
    return next((hint for found, hint in _HANDLER_HINTS if found in message),
                "fix that [[handlers]] entry as the message says")


def check_redis(settings: Settings, report: Report) -> None:
    url = redact_url(settings.redis_url)
    try:
        client = connect(settings.redis_url, socket_timeout_s=CHECK_TIMEOUT_S,
                         connect_timeout_s=CHECK_TIMEOUT_S)
    except redis.RedisError as exc:  # a cluster reads its slot map when the client is made
        report.problem("redis", "cannot reach %s: %s" % (url, scrub(str(exc), settings.redis_url)),
                       "start Redis there, or correct redis.url (ALICOM_RECEIPTS_REDIS_URL)")
        return
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        report.problem("redis", "%s refused the password: %s" % (url, exc),
                       "fix the password in redis.url")
    except redis.RedisError as exc:
        report.problem("redis", "cannot reach %s: %s" % (url, exc),
                       "start Redis there, or correct redis.url (ALICOM_RECEIPTS_REDIS_URL)")
    else:
        report.checked.append("Redis")
        check_redis_settings(settings, client, report)
    finally:
        client.close()


def check_redis_settings(settings: Settings, client: RedisClient, report: Report) -> None:
    """The eviction policy and the persistence the guarantees rest on (redis_guard); the AOF
    matters to the push server only, and is reported as such."""
    try:
        found = findings(inspect(client), allow_eviction=settings.redis_allow_eviction,
                         needs_aof=True, allow_volatile=settings.push.allow_volatile)
    except redis.RedisError as exc:
        report.notes.append("redis: its settings could not be read: %s" % clipped(str(exc)))
        return
    for finding in found:
        what, _, todo = finding.text.partition("; set ")
        area = "redis (push server)" if "AOF" in what else "redis"
        if area != "redis":
            todo = todo.replace("to accept that", "to accept that (or when no push server "
                                "uses this Redis)")
        if finding.refuse:
            report.problem(area, what, "set " + todo)
        elif not finding.allowed:  # what the configuration accepts is not repeated here
            report.notes.append("%s: %s" % (area, clipped(finding.text)))


def check_queue(settings: Settings, tokens: TokenService, message_type: str,
                report: Report, key: AccessKey) -> bool:
    """A token for `message_type`, then access to its queue (see the module docstring).

    False when the token API refused the AccessKey itself: the other types would only repeat it.
    """
    try:
        tokens.token(message_type)
    except AuthError as exc:
        report.problem("access key", str(exc),
                       "check the AccessKey %s (from %s): id and secret, and that its RAM user "
                       "is allowed dybaseapi:QueryTokenForMnsQueue"
                       % (key.access_key_id, key.source))
        return False
    except AlicomReceiptsError as exc:
        report.problem("token %s" % message_type, str(exc),
                       "check alicom.token_endpoint / alicom.preset and this host's network "
                       "and clock; is %s receipts enabled in the SMS console?" % message_type)
        return True
    queue = settings.queue_name(message_type)
    provider = tokens.credentials_provider(message_type)
    client = MnsQueueClient(settings.endpoints.mns_endpoint, queue, provider, CHECK_TIMEOUT_S)
    try:
        _reach(client)
    except PermanentError as exc:
        report.problem("queue %s" % queue, str(exc),
                       "enable %s receipts (MNS queue mode) in the SMS console (queues appear "
                       "3-15 minutes later), check alicom.account_id / alicom.queue_prefix, or "
                       "remove %s from alicom.queues" % (message_type, message_type))
    except AuthError as exc:
        report.problem("queue %s" % queue, str(exc),
                       "the token was refused by MNS: check alicom.preset (mainland or "
                       "international) and the account id in the queue name")
    except AlicomReceiptsError as exc:
        report.problem("queue %s" % queue, str(exc),
                       "check alicom.mns_endpoint and this host's network to it")
    else:
        report.checked.append(message_type)
    finally:
        client.close()
    return True


def _reach(client: MnsQueueClient) -> None:
    """Proves access to the queue, leaving its messages as they were; raises our errors."""
    try:
        client.peek()
    except AuthError as exc:
        if "AccessDenied" not in str(exc):
            raise
    else:
        return
    for delivery in client.receive(1, 0):
        client.change_visibility(delivery.receipt_handle, 1)


def run_checks(settings: Settings, env: Mapping[str, str]) -> Report:
    """Every check against `settings`; never raises for a problem it can describe."""
    report = Report()
    key: AccessKey | None = None
    try:
        key = load_access_key(env, settings.preset)
    except (ConfigError, StartupUnavailable) as exc:
        report.problem("access key", str(exc), "see the README, \"The AccessKey\"")
    check_plugins(settings, report)
    check_redis(settings, report)
    if key is None:
        return report
    token_settings = dataclasses.replace(
        settings.token, max_attempts=1, connect_timeout_s=CHECK_TIMEOUT_S,
        read_timeout_s=CHECK_TIMEOUT_S)
    tokens = TokenService(key, settings.endpoints, token_settings,
                          queue_name=settings.queue_name)
    for message_type in settings.queues:
        if not check_queue(settings, tokens, message_type, report, key):
            break
    return report


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = CommandParser(
        prog="alicom-receipts check",
        description="Check the config, the plugins, Redis, the token API and every queue; "
                    "one line per problem, exit 1 if any.")
    add_config_argument(parser)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    try:
        args = _parse(argv)
    except SystemExit as exc:  # argparse already printed why
        return 0 if exc.code == 0 else 2
    env = dict(os.environ)
    # The SDKs' and the token service's own log lines would repeat the problems below.
    logs.configure("critical", "json")
    path = config_path(args.config, env)
    try:
        settings = load_settings(path, env)
    except InvalidSettings as exc:
        for problem in exc.problems:
            where = ("that environment variable" if problem.startswith(ENV_PREFIX)
                     else "it in %s" % (path or "the environment"))
            _say("config: %s -> fix %s" % (problem, where))
        return 2
    except ConfigError as exc:
        _say("config: %s -> fix the file or --config" % clipped(str(exc)))
        return 2
    report = run_checks(settings, env)
    for line in report.notes:
        _say("note: " + line)
    for line in report.problems:
        _say(line)
    if report.problems:
        return 1
    _say("OK: %s: %s" % (settings.source, ", ".join(report.checked)))
    return 0


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
