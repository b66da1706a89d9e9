"""Stage 1, source: receiving, deleting and re-timing messages of one MNS queue.

`QueueClient` is the seam the worker depends on; `MnsQueueClient` is its adapter over the
official aliyun-mns-sdk. The adapter owns one SDK `Account`, which holds one HTTP connection
and is not thread-safe: every thread that talks to MNS gets its own `MnsQueueClient`.

Every SDK error leaves this module as one of `consumer.errors`: an empty queue is not an
error (`receive` returns `[]`), the 403 family is `AuthError` (refresh the token, retry),
a missing queue or a bad request is `PermanentError`, everything else `TransientError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mns.account import Account
from mns.mns_exception import (
    MNSClientParameterException,
    MNSExceptionBase,
    MNSServerException,
)

from consumer.errors import AuthError, PermanentError, TransientError

#: Codes of the 403 family; the token may have expired or rotated under us.
AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "SecurityTokenExpired",
    "InvalidSecurityToken", "SecurityTokenMalformed", "TimeExpired",
})
#: Codes that retrying cannot fix.
PERMANENT_CODES = frozenset({
    "QueueNotExist", "InvalidArgument", "MalformedXML", "InvalidQueueName",
})
#: A delete whose handle is gone: the message was re-delivered or already deleted.
STALE_HANDLE_CODES = frozenset({"ReceiptHandleError", "MessageNotExist"})


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as received from MNS; `body` is the base64 text exactly as stored."""

    queue: str
    message_id: str
    receipt_handle: str
    body: str
    body_md5: str
    dequeue_count: int
    enqueue_time_ms: int
    first_dequeue_time_ms: int
    next_visible_time_ms: int


@dataclass(frozen=True, slots=True)
class DeleteFailure:
    """One entry of a batch delete that MNS refused."""

    receipt_handle: str
    code: str
    message: str

    @property
    def handle_is_stale(self) -> bool:
        """True when the message is no longer ours to delete (re-delivered or gone)."""
        return self.code in STALE_HANDLE_CODES


class QueueClient(Protocol):
    """What the worker needs from a queue; one instance per thread."""

    @property
    def queue_name(self) -> str: ...

    def receive(self, max_messages: int, wait_seconds: int) -> list[Delivery]:
        """Up to `max_messages` messages, waiting up to `wait_seconds`; `[]` when empty."""
        ...

    def delete(self, receipt_handles: Sequence[str]) -> list[DeleteFailure]:
        """Deletes a batch (at most 16); returns the entries that failed."""
        ...

    def change_visibility(self, receipt_handle: str, visibility_timeout_s: int) -> tuple[str, int]:
        """Makes the message visible again after `visibility_timeout_s`.

        Returns the new receipt handle (the old one is void) and NextVisibleTime in epoch ms.
        """
        ...

    def close(self) -> None: ...


class CredentialsProvider(Protocol):
    """The SDK's hook, consulted on every request: lets tokens rotate under a live client."""

    def get_credentials(self) -> Any: ...


def wrap_mns_error(exc: MNSExceptionBase, action: str, queue: str) -> Exception:
    """Maps an SDK exception to our family; the message names the action and queue, no secret."""
    code = str(getattr(exc, "type", "Unknown"))
    text = "%s on %s failed: %s %s" % (action, queue, code, getattr(exc, "message", ""))
    if isinstance(exc, MNSServerException):
        if code in AUTH_CODES:
            return AuthError(text)
        if code in PERMANENT_CODES:
            return PermanentError(text)
        return TransientError(text)
    if isinstance(exc, MNSClientParameterException):
        return PermanentError(text)
    return TransientError(text)


class MnsQueueClient:
    """`QueueClient` over one SDK `Account`; not thread-safe, like the SDK itself."""

    def __init__(
        self,
        endpoint: str,
        queue_name: str,
        credentials_provider: CredentialsProvider,
        socket_timeout_s: float,
    ) -> None:
        self._queue_name = queue_name
        self._account = Account(endpoint, credentials_provider=credentials_provider)
        client = self._account.mns_client
        if client.is_https:
            # The SDK gives HTTPS connections no socket timeout at all: a long poll could hang
            # forever. http.client applies `timeout` to the socket it creates on connect.
            client.http.conn.timeout = socket_timeout_s
        else:
            client.set_connection_timeout(socket_timeout_s)
        self._queue = self._account.get_queue(queue_name)
        # Keep bodies as the base64 text: the MD5 is over that text, a dead letter keeps it
        # byte-exact, and one undecodable body cannot fail the SDK's parse of a whole batch.
        self._queue.set_encoding(False)

    @property
    def queue_name(self) -> str:
        return self._queue_name

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except MNSExceptionBase as exc:
            raise wrap_mns_error(exc, action, self._queue_name) from exc

    def receive(self, max_messages: int, wait_seconds: int) -> list[Delivery]:
        try:
            messages = self._queue.batch_receive_message(max_messages, wait_seconds)
        except MNSServerException as exc:
            if exc.type == "MessageNotExist":
                return []
            raise wrap_mns_error(exc, "BatchReceiveMessage", self._queue_name) from exc
        except MNSExceptionBase as exc:
            raise wrap_mns_error(exc, "BatchReceiveMessage", self._queue_name) from exc
        return [self._delivery(m) for m in messages]

    def _delivery(self, msg: Any) -> Delivery:
        return Delivery(
            queue=self._queue_name,
            message_id=msg.message_id,
            receipt_handle=msg.receipt_handle,
            body=msg.message_body,
            body_md5=msg.message_body_md5,
            dequeue_count=msg.dequeue_count,
            enqueue_time_ms=msg.enqueue_time,
            first_dequeue_time_ms=msg.first_dequeue_time,
            next_visible_time_ms=msg.next_visible_time,
        )

    def delete(self, receipt_handles: Sequence[str]) -> list[DeleteFailure]:
        if not receipt_handles:
            return []
        try:
            self._queue.batch_delete_message(list(receipt_handles))
        except MNSServerException as exc:
            if exc.sub_errors:
                return [
                    DeleteFailure(e["ReceiptHandle"], e["ErrorCode"], e["ErrorMessage"])
                    for e in exc.sub_errors
                ]
            raise wrap_mns_error(exc, "BatchDeleteMessage", self._queue_name) from exc
        except MNSExceptionBase as exc:
            raise wrap_mns_error(exc, "BatchDeleteMessage", self._queue_name) from exc
        return []

    def change_visibility(self, receipt_handle: str, visibility_timeout_s: int) -> tuple[str, int]:
        msg = self._call(
            "ChangeMessageVisibility",
            lambda: self._queue.change_message_visibility(receipt_handle, visibility_timeout_s),
        )
        return str(msg.receipt_handle), int(msg.next_visible_time)

    def close(self) -> None:
        self._account.mns_client.close_connection()
