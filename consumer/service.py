"""A worker process's life: start, tell the service manager how it is doing, stop cleanly.

`serve` is what `alicom-receipts worker` runs after building the worker: it installs the
signal handlers (first SIGTERM/SIGINT drains, a second exits at once), checks once a second
whether the worker should recycle itself, and drains before returning the exit status.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import structlog

from consumer.errors import AlicomReceiptsError
from consumer.worker import Worker

log = structlog.get_logger("alicom_receipts.service")


def serve(worker: Worker) -> int:
    """Starts the worker, waits for a signal or a recycle reason, drains, returns 0.

    A second SIGTERM/SIGINT exits at once (status 1): unfinished messages come back from MNS
    when their visibility ends, and their dedup leases expire with it.
    """
    wake = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if worker.stop_receiving.is_set():
            log.warning("second_signal_exit_now", signal=signum)
            os._exit(1)
        log.info("stopping", signal=signum)
        worker.request_stop()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    while not wake.wait(1.0):
        reason = worker.should_recycle()
        if reason is not None:
            log.info("recycling", reason=reason)
            break
    try:
        worker.drain()
    except AlicomReceiptsError as exc:
        log.error("drain_failed", error=str(exc))  # noqa: TRY400 - an outage, not a bug
    return 0
