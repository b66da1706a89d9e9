"""MNS error answers as exceptions, and the value checks that raise them.

`MnsError` carries what the service would answer: HTTP status, error code and message;
`alicom_sandbox.mns_api` renders it as the `<Error>` XML.
"""

from __future__ import annotations


class MnsError(Exception):
    """An MNS error answer: HTTP status, error code and message, as the service sends them."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def invalid_argument(message: str) -> MnsError:
    return MnsError(400, "InvalidArgument", message)


def queue_not_exist() -> MnsError:
    return MnsError(404, "QueueNotExist", "The queue name you provided is not exist.")


def message_not_exist() -> MnsError:
    return MnsError(404, "MessageNotExist", "Message not exist.")


def receipt_handle_error() -> MnsError:
    return MnsError(400, "ReceiptHandleError", "The receipt handle you provide is not valid.")


def check_range(name: str, value: int, low: int, high: int, unit: str = "seconds") -> int:
    if not low <= value <= high:
        raise invalid_argument(f"The value of {name} should between {low} and {high} {unit}.")
    return value


def parse_int(name: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError as exc:
        raise invalid_argument(f"The value of {name} should be an integer.") from exc
