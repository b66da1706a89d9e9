"""Prometheus metrics of a worker process, in prometheus_client's multiprocess mode.

Several worker processes run per host (systemd instances, `alicom-receipts run`). Each writes
its values to mmap files in one shared directory (`multiproc_dir`); the process serving the
HTTP endpoint sums the files of every process, live and dead, at each scrape.

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
* Labels: `queue` is the message type (never a queue name with the account id), `outcome`,
  `handler` (the configured name), and for SmsReport delivery outcomes `success` and
  `err_code`. No credential, token, URL or phone number is ever a label or value.
  `err_code` comes from the message body: each process labels at most `max_err_codes`
  distinct codes and counts any further code as "other".
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog

from consumer.errors import ConfigError
from consumer.pipeline.stats import COUNTERS
from consumer.receipts import SmsReport
from consumer.runtime.metrics_dir import prepare_metrics_dir

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import Counter, Gauge
    from prometheus_client.registry import Collector

    from consumer.pipeline.stats import Stats
    from consumer.receipts import Receipt

log = structlog.get_logger("alicom_receipts.metrics")

PREFIX: Final = "alicom_receipts_"
ENV_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Handler durations run from a cache write (~1 ms) to the default 30 s deadline.
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                           2.5, 5.0, 10.0, 30.0, 60.0)
OTHER_CODE: Final = "other"
_ERR_CODE_MAX_LEN: Final = 64
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")

_COUNTER_HELP: Final[Mapping[str, str]] = {
    "received": "Messages taken off the queue",
    "empty_polls": "Receive calls that returned no message",
    "handled": "Receipts whose handlers succeeded and whose completion was recorded",
    "duplicates": "Deliveries of an already completed receipt, acknowledged without handlers",
    "in_progress_skipped": "Deliveries left alone because another delivery held the claim",
    "retries": "Deliveries handed back with a backoff for a later delivery",
    "dead_letters": "Messages stored as dead letters, then deleted",
    "decode_errors": "Bodies that could not become a receipt",
    "deleted": "Messages deleted from the queue",
    "delete_failures": "Delete entries the queue refused",
    "lost_claims": "Completions refused because the claim had moved to another delivery",
    "visibility_extensions": "Visibility timeouts extended for slow messages",
    "handed_back": "Messages handed back at shutdown or when the pipeline could not take them",
    "token_refreshes": "Temporary MNS tokens fetched",
    "poll_errors": "Receive calls that failed",
    "redis_errors": "Redis calls that failed after their retries",
}


@dataclass(frozen=True)
class MetricsSettings:
    """The `[metrics]` table.

    `address`: "host:port" (":port" for every interface) of the host's scrape endpoint, e.g.
    "127.0.0.1:9464"; None (the default) turns metrics off. `multiproc_dir`: the directory
    shared by the host's worker processes; None means `$PROMETHEUS_MULTIPROC_DIR`, else
    `$RUNTIME_DIRECTORY/metrics` (systemd), else `<tmp>/alicom-receipts-metrics-<uid>`. Under
    systemd with PrivateTmp the last one is private to each unit, so give the units one
    explicit directory (e.g. `/run/alicom-receipts/metrics`). `max_err_codes`: distinct
    `err_code` labels per process.
    """

    address: str | None = None
    multiproc_dir: str | None = None
    max_err_codes: int = 50


def metrics_problems(m: MetricsSettings) -> list[str]:
    """One line per problem, in the style of consumer.settings' validation."""
    problems: list[str] = []
    if m.address is not None:
        try:
            parse_address(m.address)
        except ConfigError as exc:
            problems.append(str(exc))
    if m.max_err_codes < 1:
        problems.append("metrics.max_err_codes must be >= 1, got %r" % m.max_err_codes)
    return problems


def parse_address(address: str) -> tuple[str, int]:
    """("host", port) of "host:port", ":port" (every interface) or "[v6]:port"."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("metrics.address must be host:port (or :port), got %r" % address)
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":port" asks for every interface


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


class _ErrCodes:
    """Bounds the `err_code` label: the first `limit` distinct codes, then "other"."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def label(self, code: str) -> str:
        code = code.strip()[:_ERR_CODE_MAX_LEN] or "none"
        with self._lock:
            if code in self._seen:
                return code
            if len(self._seen) < self._limit:
                self._seen.add(code)
                return code
        return OTHER_CODE


class _Instruments:
    """Every metric of one process, created unregistered: values go to the mmap files only."""

    def __init__(self, message_type: str) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415

        q = {"queue": message_type}
        self.counters: dict[str, Counter] = {
            name: Counter(PREFIX + name, _COUNTER_HELP.get(name, name.replace("_", " ")),
                          ["queue"], registry=None).labels(**q)
            for name in COUNTERS
        }
        self.outcomes = Counter(PREFIX + "outcomes", "Receipts settled, by outcome",
                                ["queue", "outcome"], registry=None)
        self.deliveries = Counter(
            PREFIX + "sms_deliveries", "SmsReport receipts handled, by delivery success and "
            "err_code (codes past the per-process limit count as \"other\")",
            ["queue", "success", "err_code"], registry=None)
        self.duration = Histogram(PREFIX + "handler_duration_seconds",
                                  "Wall time of handler calls", ["queue", "handler"],
                                  buckets=DURATION_BUCKETS, registry=None)
        self.in_flight: Gauge = Gauge(PREFIX + "in_flight", "Receipts at the handlers",
                                      ["queue"], multiprocess_mode="livesum",
                                      registry=None).labels(**q)
        self.stuck: Gauge = Gauge(PREFIX + "stuck_handler_threads",
                                  "Handler threads still busy past the deadline", ["queue"],
                                  multiprocess_mode="livesum", registry=None).labels(**q)
        self.in_flight.set(0)
        self.stuck.set(0)


class _Listener:
    """Mirrors Stats events into the instruments; ignores them once the handle is closed."""

    def __init__(self, instruments: _Instruments, message_type: str, max_err_codes: int) -> None:
        self._m = instruments
        self._queue = message_type
        self._codes = _ErrCodes(max_err_codes)
        self.closed = False

    def __call__(self, name: str, amount: int) -> None:
        if self.closed:
            return
        counter = self._m.counters.get(name)
        if counter is not None:
            counter.inc(amount)

    def on_outcome(self, outcome: str, handler: str, duration_s: float,
                   receipt: Receipt | None) -> None:
        if self.closed:
            return
        self._m.outcomes.labels(queue=self._queue, outcome=outcome).inc()
        if handler:
            self._m.duration.labels(queue=self._queue, handler=handler).observe(duration_s)
        if outcome == "handled" and isinstance(receipt, SmsReport):
            # Counted once per receipt: duplicates and retries of it are not "handled".
            self._m.deliveries.labels(queue=self._queue,
                                      success="true" if receipt.success else "false",
                                      err_code=self._codes.label(receipt.err_code)).inc()


class _SweepingCollector:
    """The multiprocess aggregate, after dropping the gauges of processes that died."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._inner = _untyped("prometheus_client.multiprocess").MultiProcessCollector(
            None, path=directory)

    def collect(self) -> Iterator[Any]:
        sweep_dead_processes(self._directory)
        return iter(self._inner.collect())


class Exposition:
    """The host's scrape endpoint, if this process holds the address (see the module doc)."""

    def __init__(self, address: str, directory: str) -> None:
        from prometheus_client import CollectorRegistry  # noqa: PLC0415

        self.address = address
        self._host, self._port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        collector: Collector = _SweepingCollector(directory)
        self.registry.register(collector)
        self._server: WSGIServer | None = None
        self._reported: set[int] = set()

    def try_serve(self) -> bool:
        """Binds and serves if the address is free; True while this process serves."""
        if self._server is not None:
            return True
        from prometheus_client import start_http_server  # noqa: PLC0415

        try:
            self._server, _thread = start_http_server(self._port, self._host, self.registry)
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
    """The metrics of one running worker process; `close()` exactly once, at exit."""

    def __init__(self, instruments: _Instruments, listener: _Listener, exposition: Exposition,
                 stats: Stats, directory: str, undo: Callable[[], None],
                 interval_s: float) -> None:
        self._m = instruments
        self._listener = listener
        self.exposition = exposition
        self._stats = stats
        self.directory = directory
        self._undo = undo
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alicom-metrics", daemon=True)

    @property
    def stuck_gauge(self) -> Gauge:
        """For `Dispatcher(stuck_gauge=...)`: handler threads past their deadline."""
        return self._m.stuck

    def start(self) -> MetricsHandle:
        self.tick()
        self._thread.start()
        return self

    def tick(self) -> None:
        """Samples the in-flight gauge and takes the endpoint over if it is free."""
        self._m.in_flight.set(self._stats.in_flight)
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


def setup_metrics(settings: MetricsSettings, message_type: str, stats: Stats, *,
                  interval_s: float = 1.0) -> MetricsHandle | None:
    """Starts this process's metrics, or returns None when `settings.address` is None.

    Creates the shared directory if needed, binds prometheus_client to it (see the module
    docstring for the import-order contract), subscribes to `stats`, removes dead processes'
    gauges and starts the background tick (in-flight sampling, endpoint takeover) every
    `interval_s`. Raises ConfigError for a bad address or an unusable directory.
    """
    if settings.address is None:
        return None
    problems = metrics_problems(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    directory = prepare_metrics_dir(multiproc_dir(settings, os.environ))
    undo = _bind_value_class(directory)
    try:
        sweep_dead_processes(directory)
        instruments = _Instruments(message_type)
        listener = _Listener(instruments, message_type, settings.max_err_codes)
        exposition = Exposition(settings.address, directory)
    except BaseException:
        undo()
        raise
    stats.subscribe(listener)
    stats.subscribe_outcomes(listener)
    log.info("metrics_enabled", address=settings.address, multiproc_dir=directory,
             queue=message_type)
    return MetricsHandle(instruments, listener, exposition, stats, directory, undo,
                         interval_s).start()
