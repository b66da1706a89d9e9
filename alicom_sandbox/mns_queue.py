"""One in-memory MNS queue: visibility, delays, priorities, retention, receipt handles.

No HTTP here (see `alicom_sandbox.mns_api`); `alicom_sandbox.engine.QueueEngine` holds
the queues by name and runs long polls; the limits and the attributes are
`alicom_sandbox.mns_limits`.

Data structures (per queue), all O(log n) per message:
- `_visible`: heap of (priority, seq, id, version) of receivable messages; priority 1 is
  served first, then oldest first.
- `_timed`: heap of (next_visible_ms, seq, id, version) of delayed and in-flight messages.
- `_by_age`: heap of (enqueue_ms, seq, id) for retention.
- `_handles`: receipt handle -> message id, only for in-flight (and delayed) messages.
Heap entries are invalidated lazily by bumping a message's `version`; stale entries are
skipped when popped, and a heap is rebuilt when stale entries outnumber live ones.

Time is the sandbox `Clock` (epoch ms, skew included); all methods take `now_ms` so one
request sees one instant.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import random
import re
from typing import NamedTuple

from alicom_sandbox.mns_errors import (
    MnsError,
    check_range,
    message_not_exist,
    receipt_handle_error,
)
from alicom_sandbox.mns_limits import (
    DEFAULT_PRIORITY,
    MAX_DELAY_S,
    MAX_PRIORITY,
    MIN_PRIORITY,
    QueueAttributes,
)

# Handles we hand out: "1-<seq hex>-<12 random hex>"; URL-safe on purpose.
_HANDLE = re.compile(r"1-[0-9A-F]{1,16}-[0-9A-F]{12}\Z")
_COMPACT_SLACK = 1024

ACTIVE, INACTIVE, DELAYED = 0, 1, 2


class StoredMessage:
    """One message in a queue. Mutable: read its fields right after the call that returned it."""

    __slots__ = (
        "body",
        "body_md5",
        "dequeue_count",
        "enqueue_ms",
        "first_dequeue_ms",
        "handle",
        "message_id",
        "next_visible_ms",
        "priority",
        "seq",
        "state",
        "version",
    )

    def __init__(
        self, message_id: str, seq: int, body: str, priority: int, enqueue_ms: int
    ) -> None:
        self.message_id = message_id
        self.seq = seq
        self.body = body
        self.body_md5 = hashlib.md5(body.encode("utf-8")).hexdigest().upper()  # noqa: S324 - MNS MessageBodyMD5
        self.priority = priority
        self.enqueue_ms = enqueue_ms
        self.first_dequeue_ms = 0
        self.dequeue_count = 0
        self.next_visible_ms = enqueue_ms
        self.handle: str | None = None
        self.state = ACTIVE
        self.version = 0


class SendEntry(NamedTuple):
    """One message to send; None means "the queue's default" (a tuple: cheap to make)."""

    body: str
    delay_s: int | None = None
    priority: int | None = None


class Queue:
    """One MNS queue. Every method takes `now_ms` and first applies what time has done."""

    def __init__(self, name: str, attributes: QueueAttributes, now_ms: int) -> None:
        self.name = name
        self.attributes = attributes
        self.create_time_s = now_ms // 1000
        self.last_modify_time_s = self.create_time_s
        self.deleted = False
        self._messages: dict[str, StoredMessage] = {}
        self._visible: list[tuple[int, int, str, int]] = []
        self._timed: list[tuple[int, int, str, int]] = []
        self._by_age: list[tuple[int, int, str]] = []
        self._handles: dict[str, str] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._counts = [0, 0, 0]  # by state: active, inactive, delayed
        self._seq = 0
        self._removals = 0
        self._id_prefix = f"{random.getrandbits(64):016X}"

    # --- attributes and counts -------------------------------------------------------

    def counts(self, now_ms: int) -> tuple[int, int, int]:
        """(ActiveMessages, InactiveMessages, DelayMessages) at `now_ms`."""
        self._advance(now_ms)
        return self._counts[ACTIVE], self._counts[INACTIVE], self._counts[DELAYED]

    def set_attributes(self, attributes: QueueAttributes, now_ms: int) -> None:
        self.attributes = attributes
        self.last_modify_time_s = now_ms // 1000

    @property
    def waiter_count(self) -> int:
        return len(self._waiters)

    def index_sizes(self) -> dict[str, int]:
        """Entries in each internal index, stale ones included (to check nothing leaks)."""
        return {
            "messages": len(self._messages),
            "visible": len(self._visible),
            "timed": len(self._timed),
            "by_age": len(self._by_age),
            "handles": len(self._handles),
        }

    # --- sending ---------------------------------------------------------------------

    def validate_entry(self, entry: SendEntry) -> int:
        """The body's size in bytes; InvalidArgument if `entry` could not be sent here."""
        body = entry.body
        size = len(body) if body.isascii() else len(body.encode("utf-8"))
        limit = self.attributes.maximum_message_size_bytes
        if not 1 <= size <= limit:
            check_range("MessageBody", size, 1, limit, unit="bytes")
        if entry.delay_s is not None:
            check_range("DelaySeconds", entry.delay_s, 0, MAX_DELAY_S)
        if entry.priority is not None:
            check_range("Priority", entry.priority, MIN_PRIORITY, MAX_PRIORITY, unit="")
        return size

    def send(self, entry: SendEntry, now_ms: int) -> StoredMessage:
        """Enqueue one validated entry; a delayed message gets a receipt handle at once."""
        self._seq += 1
        seq = self._seq
        message = StoredMessage(
            f"{self._id_prefix}-{seq:X}",
            seq,
            entry.body,
            DEFAULT_PRIORITY if entry.priority is None else entry.priority,
            now_ms,
        )
        self._messages[message.message_id] = message
        heapq.heappush(self._by_age, (now_ms, seq, message.message_id))
        delay_s = self.attributes.delay_s if entry.delay_s is None else entry.delay_s
        if delay_s > 0:
            message.state = DELAYED
            message.next_visible_ms = now_ms + delay_s * 1000
            self._counts[DELAYED] += 1
            self._new_handle(message)
            heapq.heappush(
                self._timed, (message.next_visible_ms, seq, message.message_id, message.version)
            )
        else:
            self._counts[ACTIVE] += 1
            heapq.heappush(self._visible, (message.priority, seq, message.message_id, 0))
            if self._waiters:
                self.wake_waiters()
        return message

    # --- receiving -------------------------------------------------------------------

    def receive(self, count: int, now_ms: int) -> list[StoredMessage]:
        """Take up to `count` visible messages: each gets a new handle and goes invisible."""
        self._advance(now_ms)
        taken: list[StoredMessage] = []
        visible, timed = self._visible, self._timed
        messages, handles = self._messages, self._handles
        heappop, heappush, getrandbits = heapq.heappop, heapq.heappush, random.getrandbits
        next_visible_ms = now_ms + self.attributes.visibility_timeout_s * 1000
        # The hot path of the sandbox: _make_invisible and _new_handle inlined. A visible
        # message never holds a handle, so there is no old one to forget.
        while visible and len(taken) < count:
            _, seq, message_id, version = heappop(visible)
            message = messages.get(message_id)
            if message is None or message.version != version or message.state != ACTIVE:
                continue
            message.dequeue_count += 1
            if not message.first_dequeue_ms:
                message.first_dequeue_ms = now_ms
            message.state = INACTIVE
            message.next_visible_ms = next_visible_ms
            message.version = version = version + 1
            handle = f"1-{seq:X}-{getrandbits(48):012X}"
            message.handle = handle
            handles[handle] = message_id
            heappush(timed, (next_visible_ms, seq, message_id, version))
            taken.append(message)
        self._counts[ACTIVE] -= len(taken)
        self._counts[INACTIVE] += len(taken)
        return taken

    def peek(self, count: int, now_ms: int) -> list[StoredMessage]:
        """Up to `count` visible messages in delivery order, changing nothing."""
        self._advance(now_ms)
        found: list[StoredMessage] = []
        candidates = heapq.nsmallest(count * 2 + 8, self._visible)
        if len(candidates) < len(self._visible):
            valid = sum(1 for entry in candidates if self._is_live_visible(entry))
            if valid < count:
                candidates = sorted(self._visible)
        for entry in candidates:
            if self._is_live_visible(entry):
                found.append(self._messages[entry[2]])
                if len(found) == count:
                    break
        return found

    def next_wakeup_ms(self) -> int | None:
        """When the earliest delayed or in-flight message may become visible (or None)."""
        return self._timed[0][0] if self._timed else None

    async def wait_for_messages(self, timeout_s: float) -> None:
        """Sleep until a message may be receivable, the queue is deleted, or `timeout_s`."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        timer = loop.call_later(timeout_s, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)

    def wake_waiters(self) -> None:
        for waiter in self._waiters:
            _release(waiter)
        self._waiters.clear()

    # --- handles ---------------------------------------------------------------------

    def delete(self, handle: str, now_ms: int) -> None:
        """Delete the message `handle` was issued for; the handle is single-use."""
        message = self._message_for_handle(handle, now_ms)
        self._remove(message)

    def delete_many(self, handles: list[str], now_ms: int) -> list[tuple[str, MnsError]]:
        """Delete by each handle; the (handle, error) pairs of those that failed, in order."""
        self._advance(now_ms)
        failed: list[tuple[str, MnsError]] = []
        lookup, messages = self._handles.get, self._messages
        for handle in handles:
            message_id = lookup(handle)
            if message_id is not None:
                self._remove(messages[message_id])
            elif _HANDLE.match(handle):
                failed.append((handle, message_not_exist()))
            else:
                failed.append((handle, receipt_handle_error()))
        return failed

    def change_visibility(self, handle: str, timeout_s: int, now_ms: int) -> StoredMessage:
        """Hide the message for `timeout_s` from now under a new handle (the old one dies)."""
        message = self._message_for_handle(handle, now_ms)
        state = INACTIVE if message.state == INACTIVE else DELAYED
        self._counts[message.state] -= 1
        message.state = ACTIVE  # transient: _make_invisible counts it into `state`
        self._counts[ACTIVE] += 1
        self._make_invisible(message, now_ms + timeout_s * 1000, state)
        return message

    def _message_for_handle(self, handle: str, now_ms: int) -> StoredMessage:
        if not _HANDLE.match(handle):
            raise receipt_handle_error()
        self._advance(now_ms)
        message_id = self._handles.get(handle)
        if message_id is None:
            # Well-formed but used, superseded or expired: MNS says "message not exist".
            raise message_not_exist()
        return self._messages[message_id]

    # --- internals -------------------------------------------------------------------

    def _make_invisible(self, message: StoredMessage, next_visible_ms: int, state: int) -> None:
        self._counts[ACTIVE] -= 1
        self._counts[state] += 1
        message.state = state
        message.next_visible_ms = next_visible_ms
        message.version += 1
        if message.handle is not None:
            del self._handles[message.handle]
        self._new_handle(message)
        heapq.heappush(
            self._timed, (next_visible_ms, message.seq, message.message_id, message.version)
        )

    def _new_handle(self, message: StoredMessage) -> None:
        handle = f"1-{message.seq:X}-{random.getrandbits(48):012X}"
        message.handle = handle
        self._handles[handle] = message.message_id

    def _is_live_visible(self, entry: tuple[int, int, str, int]) -> bool:
        message = self._messages.get(entry[2])
        return message is not None and message.version == entry[3] and message.state == ACTIVE

    def _advance(self, now_ms: int) -> None:
        """Apply time: due messages become visible, messages past retention vanish."""
        timed = self._timed
        if timed and timed[0][0] <= now_ms:
            self._release_due(now_ms)
        by_age = self._by_age
        horizon = now_ms - self.attributes.message_retention_s * 1000
        while by_age and by_age[0][0] <= horizon:
            message = self._messages.get(heapq.heappop(by_age)[2])
            if message is not None:
                self._remove(message)

    def _release_due(self, now_ms: int) -> None:
        timed, messages = self._timed, self._messages
        while timed and timed[0][0] <= now_ms:
            _, seq, message_id, version = heapq.heappop(timed)
            message = messages.get(message_id)
            if message is None or message.version != version:
                continue
            if message.handle is not None:
                del self._handles[message.handle]
                message.handle = None
            self._counts[message.state] -= 1
            self._counts[ACTIVE] += 1
            message.state = ACTIVE
            message.version += 1
            heapq.heappush(self._visible, (message.priority, seq, message_id, message.version))

    def _remove(self, message: StoredMessage) -> None:
        del self._messages[message.message_id]
        if message.handle is not None:
            del self._handles[message.handle]
            message.handle = None
        self._counts[message.state] -= 1
        message.version += 1
        self._removals += 1
        if not self._removals & 127:  # checking now and then is enough to bound the heaps
            self._compact_if_sparse()

    def _compact_if_sparse(self) -> None:
        live = len(self._messages)
        limit = 2 * live + _COMPACT_SLACK
        if len(self._by_age) > limit:
            self._by_age = [(m.enqueue_ms, m.seq, m.message_id) for m in self._messages.values()]
            heapq.heapify(self._by_age)
        if len(self._timed) > limit:
            self._timed = [
                (m.next_visible_ms, m.seq, m.message_id, m.version)
                for m in self._messages.values()
                if m.state != ACTIVE
            ]
            heapq.heapify(self._timed)
        if len(self._visible) > limit:
            self._visible = [
                (m.priority, m.seq, m.message_id, m.version)
                for m in self._messages.values()
                if m.state == ACTIVE
            ]
            heapq.heapify(self._visible)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
