"""Dead letters: messages that no retry will fix, kept for inspection and replay.

This module is the value and its ids; `consumer.pipeline.deadletter_store` keeps them in
Redis. Ids are ``<dead_at_ms, 13 digits>-<12 hex digits>``: unique and, as strings, ordered
by time; ``new_dead_letter_id`` makes a fresh one, ``message_letter_id`` the same one on every
delivery of a message (so a message is dead-lettered at most once).

Bodies are kept byte-exact. ``DeadLetter.raw_body`` is text: the body itself when it is
UTF-8 (always the case for the ASCII base64 bodies of MNS and the JSON of HTTP push), otherwise
the base64 of its bytes with ``raw_body_is_base64=True`` (``body_text``); ``body_bytes()``
gives the bytes either way. Reading back from the store always yields this canonical form.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import dataclass

__all__ = ["DeadLetter", "body_text", "message_letter_id", "new_dead_letter_id"]


def new_dead_letter_id(dead_at_ms: int) -> str:
    """A unique id that sorts by time as a string."""
    return f"{dead_at_ms:013d}-{uuid.uuid4().hex[:12]}"


def message_letter_id(source: str, queue: str, message_id: str, origin_ms: int) -> str:
    """The same id on every delivery of one message, so storing its letter again (a delete
    that hit a stale handle, a settle that gave up after the put) overwrites one entry instead
    of adding a second: a message is dead-lettered at most once.

    `origin_ms` is when the message entered its source (MNS EnqueueTime, the push stream's
    receive time): fixed across deliveries, and it keeps ids ordered by time.
    """
    digest = hashlib.blake2b(f"{source}\0{queue}\0{message_id}".encode(), digest_size=6)
    return f"{origin_ms:013d}-{digest.hexdigest()}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead message. ``raw_body`` is text; see the module docstring for non-UTF-8 bodies.

    ``id`` may be "" when putting: the store then assigns ``new_dead_letter_id(dead_at_ms)``.
    ``queue`` is "" and ``message_id`` is "" for HTTP push; ``source`` is "mns", "push",
    "reconcile" or "replay", as in ``ReceiptMeta``. ``handlers`` names the handlers that
    failed it (a replay runs only those); () when no handler did (a decode error) or for a
    letter stored by an earlier version: a replay then runs every handler not finished.
    """

    id: str
    queue: str
    message_type: str
    raw_body: str
    reason: str
    detail: str
    message_id: str
    dequeue_count: int
    enqueue_time_ms: int
    first_dequeue_time_ms: int
    dead_at_ms: int
    source: str
    raw_body_is_base64: bool = False
    handlers: tuple[str, ...] = ()

    @classmethod
    def create(  # noqa: PLR0913 - keyword-only, mirrors the dataclass fields one for one
        cls,
        *,
        queue: str,
        message_type: str,
        raw_body: str | bytes,
        reason: str,
        detail: str,
        source: str,
        message_id: str = "",
        dequeue_count: int = 0,
        enqueue_time_ms: int = 0,
        first_dequeue_time_ms: int = 0,
        dead_at_ms: int | None = None,
        letter_id: str | None = None,
    ) -> DeadLetter:
        """A new dead letter, dead now unless ``dead_at_ms`` is given, with ``letter_id`` or
        else a fresh id (see ``message_letter_id`` for one that is stable per message).

        Bytes that are not UTF-8 are kept as base64 (``raw_body_is_base64``).
        """
        at_ms = int(time.time() * 1000) if dead_at_ms is None else dead_at_ms
        text, is_base64 = body_text(raw_body) if isinstance(raw_body, bytes) else (raw_body, False)
        return cls(
            id=letter_id or new_dead_letter_id(at_ms), queue=queue, message_type=message_type,
            raw_body=text, reason=reason, detail=detail, message_id=message_id,
            dequeue_count=dequeue_count, enqueue_time_ms=enqueue_time_ms,
            first_dequeue_time_ms=first_dequeue_time_ms, dead_at_ms=at_ms, source=source,
            raw_body_is_base64=is_base64,
        )

    def body_bytes(self) -> bytes:
        """The body exactly as received."""
        if self.raw_body_is_base64:
            return base64.b64decode(self.raw_body, validate=True)
        # surrogateescape gives back the bytes of a body decoded with it upstream.
        try:
            return self.raw_body.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return self.raw_body.encode("utf-8", "surrogatepass")


def body_text(body: bytes) -> tuple[str, bool]:
    """`raw_body` and `raw_body_is_base64` for `body`: its text when UTF-8, else base64."""
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True
