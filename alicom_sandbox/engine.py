"""All in-memory MNS queues of the sandbox's one account, by name, and their long polls.

No HTTP here: `alicom_sandbox.mns_api` turns requests into calls of `QueueEngine` and its
`Queue`s (`alicom_sandbox.mns_queue`), and `MnsError`s into error XML.
"""

from __future__ import annotations

import asyncio
import re

from alicom_sandbox.clock import Clock
from alicom_sandbox.mns_errors import MnsError, queue_not_exist
from alicom_sandbox.mns_limits import QueueAttributes
from alicom_sandbox.mns_queue import Queue, StoredMessage

MAX_QUEUE_NAME = 256
_QUEUE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z")

__all__ = ["MnsError", "Queue", "QueueAttributes", "QueueEngine", "StoredMessage"]


class QueueEngine:
    """All queues of the sandbox's one account, by name."""

    def __init__(self, clock: Clock, defaults: QueueAttributes | None = None) -> None:
        self.clock = clock
        self.defaults = defaults or QueueAttributes()
        self._queues: dict[str, Queue] = {}

    def queue(self, name: str) -> Queue:
        """The queue called `name`, or QueueNotExist."""
        queue = self._queues.get(name)
        if queue is None:
            raise queue_not_exist()
        return queue

    def queue_or_none(self, name: str) -> Queue | None:
        return self._queues.get(name)

    def queue_names(self) -> list[str]:
        return sorted(self._queues)

    def create_queue(self, name: str, attributes: QueueAttributes) -> bool:
        """True if created; False if it exists with the same attributes; else 409."""
        validate_queue_name(name)
        existing = self._queues.get(name)
        if existing is not None:
            if existing.attributes == attributes:
                return False
            raise MnsError(
                409, "QueueAlreadyExist", "The queue you want to create is already exist."
            )
        self._queues[name] = Queue(name, attributes, self.clock.now_ms())
        return True

    def delete_queue(self, name: str) -> None:
        queue = self.queue(name)
        del self._queues[name]
        queue.deleted = True
        queue.wake_waiters()

    def list_queues(self, prefix: str, marker: str, limit: int) -> tuple[list[Queue], str]:
        """Up to `limit` queues named `prefix*` from `marker` on, and the next marker ("")."""
        names = [n for n in sorted(self._queues) if n.startswith(prefix) and n >= marker]
        page = [self._queues[n] for n in names[:limit]]
        return page, (names[limit] if len(names) > limit else "")

    def wake_all(self) -> None:
        """Wake every long poll (after the clock jumped, for instance)."""
        for queue in self._queues.values():
            queue.wake_waiters()

    async def receive(self, name: str, count: int, wait_s: float) -> list[StoredMessage]:
        """Receive up to `count` messages, long-polling up to `wait_s` seconds for the first.

        Returns as soon as any message is receivable; [] when the wait ran out.
        """
        queue = self.queue(name)
        messages = queue.receive(count, self.clock.now_ms())
        if messages or wait_s <= 0:
            return messages
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            wakeup_ms = queue.next_wakeup_ms()
            if wakeup_ms is not None:
                due_s = (wakeup_ms - self.clock.now_ms()) / 1000.0
                remaining = min(remaining, max(due_s, 0.001))
            await queue.wait_for_messages(remaining)
            if queue.deleted:
                raise queue_not_exist()
            messages = queue.receive(count, self.clock.now_ms())
            if messages:
                return messages


def validate_queue_name(name: str) -> None:
    if len(name) > MAX_QUEUE_NAME:
        raise MnsError(
            400,
            "QueueNameLengthError",
            f"The length of queue name should be between 1 and {MAX_QUEUE_NAME}.",
        )
    if not _QUEUE_NAME.match(name):
        raise MnsError(400, "InvalidQueueName", "The queue name you provided is invalid.")
