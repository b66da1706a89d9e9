"""alicom-receipts: Alibaba Cloud SMS receipts (MNS queues, HTTP push) into your own code.

What a handler author needs is importable from here and nothing else is public:

    from consumer import handler, RetryLater, PermanentFailure, SmsReport

    @handler                   # the annotation routes it: SmsReport only, not IntlSmsReport
    def on_report(receipt: SmsReport) -> None:
        ...   # return: handled; raise RetryLater: deliver again later;
              # raise PermanentFailure: dead-letter it now

The only exceptions exported are those two signals; any other exception a handler raises is
retried like RetryLater (the table is in `consumer.handler_api`). Everything else (MNS,
Redis, tokens) stays behind the worker: a handler never sees it. `consumer.testing` runs a
handler on sample receipts in-process, for a plugin's own tests.
"""

from __future__ import annotations

from consumer._version import __version__
from consumer.errors import PermanentFailure, RetryLater
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
    "BatchHandler",
    "BatchResult",
    "GlobeSmsReport",
    "Handler",
    "IntlSmsReport",
    "MnsCardTemplate",
    "MnsCardVender",
    "PermanentFailure",
    "Receipt",
    "ReceiptMeta",
    "RetryLater",
    "SignSmsReport",
    "SmsReport",
    "SmsUp",
    "TemplateSmsReport",
    "__version__",
    "handler",
]
