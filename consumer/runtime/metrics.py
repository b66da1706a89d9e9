"""Prometheus metrics of a process, in prometheus_client's multiprocess mode.

Several processes run per host (worker instances, the push server and worker, reconcile
runs). Each writes its values to mmap files in one shared directory (`multiproc_dir`); the
process serving the HTTP endpoint sums the files of every process, live and dead, at each
scrape.

* Import order: prometheus_client picks its value class (in memory or mmap) when first
  imported, from `PROMETHEUS_MULTIPROC_DIR`, so this module never imports it at module
  level: `setup_metrics` sets the variable, then imports it. Call it before loading handler
  plugins, so that a plugin's own metrics land in the directory too. If it was imported
  before (in memory, or bound to another directory), `setup_metrics` installs a multiprocess
  value class for its directory and `MetricsHandle.close` puts the previous one back.
* One endpoint per host, with takeover: every process tries to bind `address`; the first
  serves the aggregate, the others log `metrics_address_busy` once and retry the bind every
  tick (1 s), so when the serving process exits or recycles another takes its place. The
  socket has SO_REUSEADDR only (never SO_REUSEPORT): two processes never listen at once.
* Dead processes: `close()` removes the process's live-gauge files (`mark_process_dead`), so
  its in-flight and stuck-thread gauges leave the sum; after a SIGKILL, every setup and
  every scrape removes the live-gauge files of PIDs that no longer exist (so the directory
  must not be shared across PID namespaces). Counter and histogram files stay, so totals
  never go backwards; keep the directory on tmpfs (`/run/...`), emptied at boot.
* What is measured, with which labels, and how to aggregate it across hosts: the catalogue
  in consumer.runtime.instruments.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.metadata
import os
import re
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Final, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog

from consumer.runtime.instruments import Instruments, StatsListener
from consumer.runtime.metrics_dir import prepare_metrics_dir
from consumer.settings import MetricsSettings, parse_address

if TYPE_CHECKING:
    from prometheus_client import Gauge
    from prometheus_client.registry import Collector

    from consumer.pipeline.stats import Stats

log = structlog.get_logger("alicom_receipts.metrics")

ENV_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")
#: A route of the scrape endpoint besides /metrics: () -> (HTTP status, plain-text body).
Route = Callable[[], tuple[int, str]]


def multiproc_dir(settings: MetricsSettings, env: Mapping[str, str]) -> str:
    """The directory this process writes to (see `MetricsSettings.multiproc_dir`)."""
    if settings.multiproc_dir:
        return settings.multiproc_dir
    if env.get(ENV_DIR):
        return env[ENV_DIR]
    if env.get("RUNTIME_DIRECTORY"):
        # systemd may give several runtime directories, separated by colons.
        return os.path.join(env["RUNTIME_DIRECTORY"].split(":")[0], "metrics")
    return os.path.join(tempfile.gettempdir(), "alicom-receipts-metrics-%d" % os.getuid())


_native: dict[str, Any] = {}  # directory -> the value class prometheus_client chose itself


def _bind_value_class(directory: str) -> Callable[[], None]:
    """Makes new metric values of this process write to `directory`; returns the undo."""
    env_before = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = directory  # must precede the first import of prometheus_client
    first_import = "prometheus_client" not in sys.modules
    from prometheus_client import values  # noqa: PLC0415 - lazily, after the variable is set

    current = values.ValueClass
    adopt = first_import or (env_before == directory and getattr(current, "_multiprocess", False))
    if adopt or _native.get(directory) is current:
        _native[directory] = current
        return lambda: _restore_env(env_before)
    # Imported before in memory mode, or bound to another directory: install a value class
    # of our own for this directory, and put the previous one back on close.
    ours = _untyped("prometheus_client.values").MultiProcessValue()
    values.ValueClass = ours
    log.info("metrics_value_class_installed", multiproc_dir=directory,
             reason="prometheus_client was imported before setup_metrics")

    def undo() -> None:
        # Its files stay open: a stuck handler thread may still set the gauge after close.
        values.ValueClass = current
        _restore_env(env_before)

    return undo


def _untyped(module: str) -> Any:
    """A prometheus_client module whose functions carry no annotations (imported lazily)."""
    return importlib.import_module(module)


def _restore_env(before: str | None) -> None:
    if before is None:
        os.environ.pop(ENV_DIR, None)
    else:
        os.environ[ENV_DIR] = before


def sweep_dead_processes(directory: str) -> list[int]:
    """Removes the live-gauge files of processes that no longer exist; returns their PIDs."""
    dead: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            match = _LIVE_GAUGE_FILE.match(name)
            if match and not _alive(int(match.group(1))):
                dead.add(int(match.group(1)))
    for pid in sorted(dead):
        _untyped("prometheus_client.multiprocess").mark_process_dead(pid, directory)
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class _SweepingCollector:
    """The multiprocess aggregate, after dropping the gauges of processes that died."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._inner = _untyped("prometheus_client.multiprocess").MultiProcessCollector(
            None, path=directory)

    def collect(self) -> Iterator[Any]:
        sweep_dead_processes(self._directory)
        return iter(self._inner.collect())


def _metrics_app(registry: Any) -> Any:
    from prometheus_client import make_wsgi_app  # noqa: PLC0415 - after setup_metrics
    return make_wsgi_app(registry)


def _serve(host: str, port: int, app: Any) -> WSGIServer:
    """Serves `app` from a daemon thread, a thread per request (as prometheus_client does)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family

    class Quiet(WSGIRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass  # a line per scrape on stderr would drown the process's own log

    server = make_server(host, port, app, Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def _router(metrics_app: Any, routes: Mapping[str, Route]) -> Any:
    """A WSGI app: /metrics (and every other path, as prometheus_client does) from the
    registry, except the `routes` (e.g. /healthz), which answer plain text."""
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        route = routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        status, body = route()
        start_response("%d %s" % (status, "OK" if status < 400 else "Unavailable"),
                       [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode("utf-8")]
    return app


class Exposition:
    """The host's scrape endpoint, if this process holds the address (see the module doc).

    `routes` maps extra paths (health checks) to `Route`s; add them before the first
    `try_serve`. They are answered by whichever process holds the address.
    """

    def __init__(self, address: str, directory: str) -> None:
        from prometheus_client import CollectorRegistry  # noqa: PLC0415 - after setup_metrics

        self.address = address
        self._host, self._port = parse_address(address, "metrics.address")
        self.registry = CollectorRegistry(auto_describe=False)
        collector: Collector = _SweepingCollector(directory)
        self.registry.register(collector)
        self.routes: dict[str, Route] = {}
        self._server: WSGIServer | None = None
        self._reported: set[int] = set()

    def try_serve(self) -> bool:
        """Binds and serves if the address is free; True while this process serves."""
        if self._server is not None:
            return True
        try:
            self._server = _serve(self._host, self._port,
                                  _router(_metrics_app(self.registry), self.routes))
        except OSError as exc:
            self._report_busy(exc)
            return False
        log.info("metrics_serving", address=self.address, taken_over=bool(self._reported))
        self._reported.clear()
        return True
    def _report_busy(self, exc: OSError) -> None:
        code = exc.errno or 0
        if code in self._reported:
            return  # said once; the retry each tick stays quiet
        self._reported.add(code)
        if code == errno.EADDRINUSE:
            log.info("metrics_address_busy", address=self.address,
                     detail="another process serves this host's metrics; this one writes "
                            "its share and takes over when that one exits")
        else:
            log.warning("metrics_bind_failed", address=self.address, error=str(exc))

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


class MetricsHandle:
    """The metrics of one running process; `close()` exactly once, at exit.

    `get(name, **labels)` is a catalogue metric (consumer.runtime.instruments) for code that
    records directly (the push server); `add_sampler(fn)` runs `fn` every tick (gauges of
    shared state, read from Redis); `on_event` is the Stats event listener.
    """

    def __init__(self, instruments: Instruments, listener: StatsListener, exposition: Exposition,
                 stats: Stats | None, directory: str, undo: Callable[[], None],
                 interval_s: float) -> None:
        self._m = instruments
        self._listener = listener
        self.exposition = exposition
        self._stats = stats
        self.directory = directory
        self._undo = undo
        self._interval_s = interval_s
        self._samplers: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alicom-metrics", daemon=True)

    @property
    def stuck_gauge(self) -> Gauge:
        """For `Dispatcher(stuck_gauge=...)`: handler threads past their deadline."""
        return cast("Gauge", self._m.get("stuck_handler_threads",
                                         message_type=self._listener.message_type))

    def get(self, name: str, **labels: str) -> Any:
        return self._m.get(name, **labels)

    def add_sampler(self, sampler: Callable[[], None]) -> None:
        self._samplers.append(sampler)

    def start(self) -> MetricsHandle:
        self.tick()
        self._thread.start()
        return self

    def tick(self) -> None:
        """Samples the gauges and takes the endpoint over if it is free."""
        if self._stats is not None and "in_flight" in self._m.metrics:
            self._m.get("in_flight", message_type=self._listener.message_type).set(
                self._stats.in_flight)
        for sampler in self._samplers:
            try:
                sampler()
            except Exception as exc:  # noqa: BLE001 - a sample is skipped, never fatal
                log.warning("metrics_sample_failed", error="%s: %s" % (type(exc).__name__, exc))
        self.exposition.try_serve()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.tick()
            except Exception:  # metrics must never take the worker down
                log.exception("metrics_tick_failed")

    def close(self) -> None:
        """Stops serving, removes this process's live gauges; the counters stay on disk."""
        self._listener.closed = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.exposition.close()
        _untyped("prometheus_client.multiprocess").mark_process_dead(os.getpid(), self.directory)
        self._undo()


def setup_metrics(settings: MetricsSettings, message_type: str, stats: Stats | None, *,
                  role: str = "worker", interval_s: float = 1.0) -> MetricsHandle | None:
    """Starts this process's metrics, or returns None when `settings.address` is None.

    `role` is worker, push-server, push-worker or reconcile: it picks the catalogue's
    metrics. Creates the shared directory if needed, binds prometheus_client to it (see the
    module docstring for the import-order contract), subscribes to `stats`, removes dead
    processes' gauges and starts the background tick (sampling, endpoint takeover) every
    `interval_s`. Raises ConfigError for a bad address or an unusable directory.
    """
    if settings.address is None:
        return None
    directory = prepare_metrics_dir(multiproc_dir(settings, os.environ))
    undo = _bind_value_class(directory)
    try:
        sweep_dead_processes(directory)
        instruments = Instruments(role, message_type)
        listener = StatsListener(instruments, message_type, settings.max_err_codes)
        exposition = Exposition(settings.address, directory)
    except BaseException:
        undo()
        raise
    if stats is not None:
        stats.subscribe(listener)
        stats.subscribe_outcomes(listener)
        stats.subscribe_events(listener)
    log.info("metrics_enabled", address=settings.address, multiproc_dir=directory, role=role,
             message_type=message_type or None)
    return MetricsHandle(instruments, listener, exposition, stats, directory, undo,
                         interval_s).start()

