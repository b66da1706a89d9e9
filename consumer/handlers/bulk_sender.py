"""`bulk-sender`: the bulk sender's three handlers (`number-hygiene`, `send-tracker`,
`review-status`) as one, writing each batch in one round trip."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from consumer.clients.redis_client import RedisClient
from consumer.clients.redis_scripts import ScriptPlan
from consumer.errors import ConfigError
from consumer.handler_api import BatchResult
from consumer.handlers import require_number, write_plans
from consumer.handlers.number_hygiene import NumberHygiene
from consumer.handlers.review_status import ReviewStatus
from consumer.handlers.tracking import SendTracker
from consumer.receipts import Receipt

__all__ = ["PARTS", "BulkSender"]


class _Part(Protocol):
    """A Redis-backed handler whose batch write is a plan (`write_plans`)."""

    types: tuple[str, ...] | None

    @property
    def client(self) -> RedisClient: ...

    def plan(self, receipts: Sequence[Receipt]) -> ScriptPlan[Any]: ...

    def close(self) -> None: ...


#: The option naming each part -> the handler it is (its entry point name, its class).
PARTS: Mapping[str, tuple[str, type[_Part]]] = {
    "number_hygiene": ("number-hygiene", NumberHygiene),
    "send_tracker": ("send-tracker", SendTracker),
    "review_status": ("review-status", ReviewStatus),
}


class BulkSender:
    """`number-hygiene`, `send-tracker` and `review-status` in one handler: what each writes
    is the same, but a batch costs one pool task and one Redis round trip instead of one of
    each per handler (their script calls share one pipeline).

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
        self._parts: list[_Part] = []
        try:
            for option, (_, part) in PARTS.items():
                options = _part_options(option, given[option])
                if options is not None:
                    self._parts.append(_built(option, part, url, timeout_s, options))
        except BaseException:
            self.close()
            raise
        if not self._parts:
            raise ConfigError("bulk-sender handler: every part is off (number_hygiene, "
                              "send_tracker, review_status)")
        # Every part writes to `url`: one client carries all their calls (the others' pools
        # stay unconnected unless a part's own fallback round trip needs one).
        self._client = self._parts[0].client
        self.types = tuple(dict.fromkeys(t for p in self._parts for t in p.types or ()))

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """Every part's write of the batch in one round trip (one per cluster node)."""
        return write_plans("bulk sender", self._client, [p.plan(receipts) for p in self._parts])

    def close(self) -> None:
        """Closes every part's connection pool."""
        for part in self._parts:
            part.close()


def _part_options(option: str, value: object) -> dict[str, Any] | None:
    """A part's options (None: the part is off); TypeError, as for any bad option."""
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


def _built(option: str, part: type[_Part], url: str, timeout_s: float,
           options: dict[str, Any]) -> _Part:
    try:
        return part(url, timeout_s=timeout_s, **options)  # type: ignore[call-arg]  # each part's own signature
    except TypeError as exc:
        raise TypeError(f"{option}: {exc}") from exc
