"""The MNS worker's /healthz and /readyz: what its systemd `Health` knows, over HTTP.

See `consumer.runtime.health` for the contract; here the conditions are the worker's own:
alive while `Health.moving` (a poll turn finished or a message settled within the stall
allowance), ready while the first poll went through, Redis answers and it is not draining.
"""

from __future__ import annotations

from collections.abc import Callable

from consumer.runtime.health import DEFAULT_STALL_S, Check, install
from consumer.runtime.metrics import MetricsHandle
from consumer.runtime.service import Health
from consumer.settings.sections import ServiceSettings

__all__ = ["http_health", "worker_checks"]


class _WorkerHealth:
    """What the MNS worker's `Health` (systemd's view) knows, as the two checks."""

    def __init__(self, health: Health, stall_s: float) -> None:
        self._health = health
        self._stall_s = stall_s

    def live(self) -> str | None:
        now = self._health.clock()
        if self._health.moving(now, self._stall_s):
            return None
        stalled = now - self._health.worker.last_progress
        return (f"wedged: no poll turn finished and nothing settled for {stalled:.0f} s "
                f"(allowed {self._stall_s:.0f} s)")

    def ready(self) -> str | None:
        worker = self._health.worker
        if worker.stop_receiving.is_set():
            return "draining: not taking new work"
        if not worker.ready.is_set():
            return "starting: no poll has gone through yet"
        if not self._health.redis.ok.is_set():
            return f"waiting: Redis: {self._health.redis.error}"
        return None


def http_health(metrics: MetricsHandle | None, settings: ServiceSettings,
                ) -> Callable[[Health], None] | None:
    """`serve`'s `on_health` hook: the worker's /healthz and /readyz on its metrics endpoint
    (None when metrics are off: there is no endpoint to answer on)."""
    if metrics is None:
        return None
    routes = metrics.exposition.routes

    def hook(health: Health) -> None:
        live, ready = worker_checks(health, settings.watchdog_stall_s or health.stall_s)
        install(routes, live, ready)
    return hook


def worker_checks(health: Health, stall_s: float | None) -> tuple[Check, Check]:
    """(live, ready) of an MNS worker from its `consumer.runtime.service.Health`."""
    checks = _WorkerHealth(health, stall_s or DEFAULT_STALL_S)
    return checks.live, checks.ready
