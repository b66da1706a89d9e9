"""MNS's documented limits and a queue's settable attributes, for the sandbox's queues.

The numbers are those the MNS API reference gives (batch size, priorities, delay, visibility,
long-poll wait); `QueueAttributes` holds a queue's attributes with MNS's defaults, and
`attributes_from_fields` applies CreateQueue / SetQueueAttributes fields to them, refusing a
value outside its range with MNS's own error (`alicom_sandbox.mns_errors`) and ignoring
fields it does not know, as MNS does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from alicom_sandbox.mns_errors import check_range, invalid_argument, parse_int

__all__ = ["DEFAULT_PRIORITY", "MAX_BATCH", "MAX_DELAY_S", "MAX_PRIORITY", "MAX_VISIBILITY_S",
           "MAX_WAIT_S", "MIN_PRIORITY", "QueueAttributes", "attributes_from_fields"]

MAX_BATCH = 16  # messages or handles per Batch{Send,Receive,Delete}Message call
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 1, 16, 8  # 1 is served first
MAX_DELAY_S = 604800  # DelaySeconds: 7 days
MAX_VISIBILITY_S = 43200  # VisibilityTimeout: 12 hours
MAX_WAIT_S = 30  # a long poll's waitseconds


@dataclass(frozen=True, slots=True)
class QueueAttributes:
    """The settable attributes of a queue, with MNS's defaults and ranges."""

    visibility_timeout_s: int = 30
    maximum_message_size_bytes: int = 65536
    message_retention_s: int = 345600
    delay_s: int = 0
    polling_wait_s: int = 0
    logging_enabled: bool = False


# XML element -> (attribute, low, high); the ranges MNS documents for CreateQueue.
ATTRIBUTE_FIELDS: Mapping[str, tuple[str, int, int]] = {
    "VisibilityTimeout": ("visibility_timeout_s", 1, MAX_VISIBILITY_S),
    "MaximumMessageSize": ("maximum_message_size_bytes", 1024, 65536),
    "MessageRetentionPeriod": ("message_retention_s", 60, 604800),
    "DelaySeconds": ("delay_s", 0, MAX_DELAY_S),
    "PollingWaitSeconds": ("polling_wait_s", 0, MAX_WAIT_S),
}


def attributes_from_fields(fields: Mapping[str, str], base: QueueAttributes) -> QueueAttributes:
    """`base` with the given XML fields applied; unknown fields are ignored, as MNS does."""
    changes: dict[str, int | bool] = {}
    for element, (attribute, low, high) in ATTRIBUTE_FIELDS.items():
        text = fields.get(element)
        if text is not None:
            changes[attribute] = check_range(element, parse_int(element, text), low, high)
    logging = fields.get("LoggingEnabled")
    if logging is not None:
        lowered = logging.strip().lower()
        if lowered not in ("true", "false"):
            raise invalid_argument("The value of LoggingEnabled should be True or False.")
        changes["logging_enabled"] = lowered == "true"
    return replace(base, **changes)  # type: ignore[arg-type]  # values typed per field above
