"""Health over HTTP for container probes: `/healthz` and `/readyz` on the metrics address.

The same conditions systemd gets through the notify socket (`consumer.runtime.service`):

* `/healthz` (liveness): 200 while the receive loop makes progress, the condition that feeds
  the systemd watchdog (the MNS worker: `consumer.runtime.worker_health`; the push server:
  its event loop's `Beat`); 503 when it is wedged, so the orchestrator restarts the process. A
  dependency outage (Redis, MNS, the token API) is NOT a liveness failure: the loop keeps
  turning through its backoff, and a restart would not help;
* `/readyz` (readiness): 200 while READY=1's condition holds now (the first poll went
  through and Redis answers a read), 503 otherwise: before start-up finished, during a Redis
  outage, and while draining after SIGTERM.

The body is one plain-text line saying why. The routes ride on the metrics endpoint
(`Exposition.routes`), so `[metrics] address` must be set; with several processes sharing
one address the process that holds it answers for itself only, hence one process per
container. Without systemd's WatchdogSec the stall allowance is `service.watchdog_stall_s`,
else `DEFAULT_STALL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field

from consumer.runtime.metrics import Route

__all__ = ["DEFAULT_STALL_S", "Beat", "Check", "install", "keep_beating", "loop_checks"]

#: The liveness stall allowance when neither WatchdogSec nor `service.watchdog_stall_s` gives
#: one: past the longest legitimate poll turn with default settings (socket timeout 35 s, a
#: token fetch of up to 30 s + 10 s, a Redis call, the backoff cap).
DEFAULT_STALL_S = 120.0

#: A health condition: None when it holds, else the reason (one line) it does not.
Check = Callable[[], str | None]


def install(routes: MutableMapping[str, Route], live: Check, ready: Check) -> None:
    """Adds /healthz (`live`) and /readyz (`ready`) to a metrics endpoint's routes."""
    routes["/healthz"] = _route(live, "alive")
    routes["/readyz"] = _route(ready, "ready")


def _route(check: Check, fine: str) -> Route:
    def answer() -> tuple[int, str]:
        try:
            problem = check()
        except Exception as exc:  # noqa: BLE001 - a probe must answer, never raise
            problem = f"health check failed: {type(exc).__name__}"
        return (200, fine + "\n") if problem is None else (503, problem + "\n")
    return answer


@dataclass
class Beat:
    """A loop's heartbeat for the push server and push worker: `beat()` each turn; `live`
    fails once no turn finished for `stall_s`. `ready` is set and cleared by the owner."""

    stall_s: float
    clock: Callable[[], float] = time.monotonic
    last: float = field(default_factory=time.monotonic)
    ready: threading.Event = field(default_factory=threading.Event)
    why_not_ready: str = "starting"

    def beat(self) -> None:
        self.last = self.clock()

    def live(self) -> str | None:
        stalled = self.clock() - self.last
        if stalled < self.stall_s:
            return None
        return f"wedged: no loop turn for {stalled:.0f} s (allowed {self.stall_s:.0f} s)"

    def is_ready(self) -> str | None:
        return None if self.ready.is_set() else self.why_not_ready


async def keep_beating(beat: Beat, ping: Callable[[], Awaitable[object]],
                       stop: asyncio.Event, every_s: float = 1.0) -> None:
    """An event loop's heartbeat (the push server): beats each `every_s` while the loop runs
    (a loop blocked by a stuck callback stops it: liveness), and pings Redis each time
    (readiness: the hand-off needs it). Returns when `stop` is set, not ready any more."""
    while not stop.is_set():
        beat.beat()
        try:
            await asyncio.wait_for(ping(), timeout=max(every_s, 1.0))
        except Exception as exc:  # noqa: BLE001 - any failure of the ping is "not ready"
            beat.why_not_ready = f"waiting: Redis: {type(exc).__name__}"
            beat.ready.clear()
        else:
            beat.ready.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
    beat.why_not_ready = "draining: not taking new requests"
    beat.ready.clear()


def loop_checks(last_turn: Callable[[], float], redis_error: Callable[[], str | None],
                draining: Callable[[], bool], stall_s: float,
                clock: Callable[[], float] = time.monotonic) -> tuple[Check, Check]:
    """(live, ready) of a polling loop (the push worker): alive while a turn finished within
    `stall_s` (a read blocks at most push.block_s, a Redis failure backs off at most 10 s);
    ready while Redis answers and it is not draining."""
    def live() -> str | None:
        stalled = clock() - last_turn()
        if stalled < stall_s:
            return None
        return f"wedged: no loop turn for {stalled:.0f} s (allowed {stall_s:.0f} s)"

    def ready() -> str | None:
        if draining():
            return "draining: not taking new work"
        problem = redis_error()
        return None if problem is None else f"waiting: Redis: {problem}"
    return live, ready
