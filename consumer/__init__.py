"""alicom-receipts: Alibaba Cloud SMS receipts (MNS queues, HTTP push) into your own code.

What a handler author needs is importable from here and nothing else is public:

    from consumer import handler, RetryLater, PermanentFailure, SmsReport

    @handler(types=["SmsReport"])
    def on_report(receipt: SmsReport) -> None:
        ...   # return: handled; raise RetryLater: deliver again later;
              # raise PermanentFailure: dead-letter it now

Everything else (MNS, Redis, tokens) stays behind the worker: a handler never sees it.
"""

from __future__ import annotations

from consumer.errors import (
    AlicomReceiptsError,
    ConfigError,
    PermanentError,
    PermanentFailure,
    RetryLater,
    TransientError,
)
from consumer.handler_api import BatchHandler, BatchResult, Handler, handler
from consumer.receipts import (
    GlobeSmsReport,
    IntlSmsReport,
    MnsCardTemplate,
    MnsCardVender,
    Receipt,
    ReceiptMeta,
    SignSmsReport,
    SmsReport,
    SmsUp,
    TemplateSmsReport,
)

__all__ = [
    "AlicomReceiptsError",
    "BatchHandler",
    "BatchResult",
    "ConfigError",
    "GlobeSmsReport",
    "Handler",
    "IntlSmsReport",
    "MnsCardTemplate",
    "MnsCardVender",
    "PermanentError",
    "PermanentFailure",
    "Receipt",
    "ReceiptMeta",
    "RetryLater",
    "SignSmsReport",
    "SmsReport",
    "SmsUp",
    "TemplateSmsReport",
    "TransientError",
    "handler",
]
