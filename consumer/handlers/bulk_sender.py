"""`bulk-sender`: the bulk sender's three handlers (`number-hygiene`, `send-tracker`,
`review-status`) as one, writing each batch in one round trip."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from consumer.clients.redis_client import RedisClient, connect_option
from consumer.errors import ConfigError
from consumer.handler_api import BatchResult
from consumer.handlers import PlannedRedisHandler, require_number, write_plans
from consumer.handlers.number_hygiene import NumberHygiene
from consumer.handlers.review_status import ReviewStatus
from consumer.handlers.tracking import SendTracker
from consumer.receipts import Receipt

__all__ = ["PARTS", "USES", "BulkSender", "part_options"]

#: The option naming each part -> the handler it is.
PARTS: Mapping[str, type[PlannedRedisHandler]] = {
    "number_hygiene": NumberHygiene,
    "send_tracker": SendTracker,
    "review_status": ReviewStatus,
}


class BulkSender:
    """`number-hygiene`, `send-tracker` and `review-status` in one handler: what each writes
    is the same, but a batch costs one pool task and one Redis round trip (one per cluster
    node it touches) instead of one of each per handler: the parts write with one client,
    and their script calls share one pipeline.

    Options: `url` (redis://, required; a password in it never appears in errors),
    `timeout_s`, and per part a table of that handler's own options (without `url` and
    `timeout_s`), or false to leave it out: `number_hygiene`, `send_tracker`,
    `review_status` (all three on, with their defaults, when not given). The read-side
    commands (`numbers`, `tasks`, `reviews`, `dashboard`) find each part's options here as
    they find a handler's own.

    A Redis failure, or an error answered to any part's call, retries the whole batch: each
    part's write is idempotent (a receipt handled twice is counted once), so the parts that
    succeeded change nothing the second time. To the daemon it is one handler (one name in
    the completion records): run the three separately instead when one must not wait for
    another's retries.
    """

    name = "bulk-sender"
    types: tuple[str, ...] | None

    def __init__(self, url: str, number_hygiene: Mapping[str, Any] | bool = True,
                 send_tracker: Mapping[str, Any] | bool = True,
                 review_status: Mapping[str, Any] | bool = True,
                 timeout_s: float = 5.0) -> None:
        require_number(self.name, "timeout_s", timeout_s, above=0)
        given = {"number_hygiene": number_hygiene, "send_tracker": send_tracker,
                 "review_status": review_status}
        wanted = {option: part_options(option, given[option]) for option in PARTS}
        if all(options is None for options in wanted.values()):
            raise ConfigError("bulk-sender handler: every part is off (number_hygiene, "
                              "send_tracker, review_status)")
        self._client = connect_option(f"{self.name} handler", url, timeout_s)
        self._parts: list[PlannedRedisHandler] = []
        try:
            for option, options in wanted.items():
                if options is not None:  # the parts write with this one client
                    self._parts.append(_built(option, self._client, timeout_s, options))
        except BaseException:
            self._client.close()
            raise
        self.types = tuple(dict.fromkeys(t for p in self._parts for t in p.types or ()))

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """Every part's write of the batch in one round trip (one per cluster node)."""
        return write_plans("bulk sender", self._client, [p.plan(receipts) for p in self._parts])

    def close(self) -> None:
        """Closes the connection pool the parts share."""
        self._client.close()


#: The `use` names of the handler (its entry point, its class).
USES = frozenset({BulkSender.name, f"{__name__}:{BulkSender.__qualname__}"})


def part_options(option: str, value: object) -> dict[str, Any] | None:
    """A part's options as given to the handler (a table, true: the defaults, false: the
    part is off and None is returned); TypeError, as for any bad option."""
    if value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{option} must be a table of options or false")
    shared = sorted({"url", "timeout_s"} & set(value))
    if shared:
        raise TypeError(f"{option}: {', '.join(shared)} is set once, for the whole handler")
    return dict(value)


def _built(option: str, client: RedisClient, timeout_s: float,
           options: dict[str, Any]) -> PlannedRedisHandler:
    make: Callable[..., PlannedRedisHandler] = PARTS[option]  # each part's own signature
    try:
        return make(client, timeout_s=timeout_s, **options)
    except TypeError as exc:
        raise TypeError(f"{option}: {exc}") from exc
