"""The two single-loop consumers the worker benchmark compares the daemon with.

* `demo_pattern`: what Alibaba's official Python receipt demo does: ReceiveMessage (one
  message, long poll), decode the body (base64, JSON), DeleteMessage, one loop, one thread.
* `raw_ceiling`: the SDK's best case: BatchReceiveMessage of 16 and BatchDeleteMessage of
  the same handles, no processing at all.

Both use a temporary token from the official Dybaseapi client, as a real consumer must.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from alibabacloud_dybaseapi20170525.client import Client
from alibabacloud_dybaseapi20170525.models import QueryTokenForMnsQueueRequest
from alibabacloud_tea_openapi.utils_models import Config
from mns.account import Account
from mns.mns_exception import MNSServerException
from mns.queue import Queue

from alicom_sandbox.testing import SandboxHandle

WAIT_SECONDS = 1


def token_queue(sandbox: SandboxHandle, queue_name: str, message_type: str = "SmsReport",
                ) -> Queue:
    """An SDK queue signed with a QueryTokenForMnsQueue token; bodies kept as base64 text."""
    config = Config(access_key_id=sandbox.access_key_id,
                    access_key_secret=sandbox.access_key_secret,
                    endpoint=sandbox.endpoint.removeprefix("http://"), protocol="http")
    token = Client(config).query_token_for_mns_queue(
        QueryTokenForMnsQueueRequest(message_type=message_type, queue_name=queue_name)
    ).body.message_token_dto
    account = Account(sandbox.endpoint, token.access_key_id, token.access_key_secret,
                      token.security_token)
    queue = account.get_queue(queue_name)
    queue.set_encoding(False)
    return queue


def demo_pattern(queue: Queue, count: int) -> list[Any]:
    """Receives, decodes and deletes `count` messages one by one; returns the decoded bodies."""
    decoded: list[Any] = []
    while len(decoded) < count:
        try:
            msg = queue.receive_message(WAIT_SECONDS)
        except MNSServerException as exc:
            if exc.type != "MessageNotExist":
                raise
            continue
        decoded.append(json.loads(base64.b64decode(msg.message_body)))
        queue.delete_message(msg.receipt_handle)
    return decoded


def raw_ceiling(queue: Queue, count: int) -> int:
    """Receives and deletes `count` messages 16 at a time, untouched; returns the count."""
    done = 0
    while done < count:
        try:
            batch = queue.batch_receive_message(16, WAIT_SECONDS)
        except MNSServerException as exc:
            if exc.type != "MessageNotExist":
                raise
            continue
        queue.batch_delete_message([m.receipt_handle for m in batch])
        done += len(batch)
    return done
