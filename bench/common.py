"""Small helpers the benchmarks share: a sandbox and a Redis, full queues, worker processes,
drain timing, and CPU / RSS from /proc.

    with bench_world(latency_ms=20) as world:
        queue = world.fill_queue(10_000)              # sent at 0 ms, then latency back on
        config = world.config(queue, "run1", handler="bench.noop_handler:FirstSeenNoop")
        workers = [world.start_worker(config, "run1-%d" % i) for i in range(2)]
        world.wait_until(lambda: world.remaining(queue) == 0, workers)

Everything is a real process: the sandbox (`running_sandbox`), redis-server
(`running_redis`), and `python -m consumer worker` started with this interpreter.
"""

from __future__ import annotations

import importlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from alicom_sandbox.config_file import write_config  # noqa: E402 - after the path set-up
from alicom_sandbox.publisher import Publisher  # noqa: E402
from alicom_sandbox.redis_server import RedisServer, running_redis  # noqa: E402
from alicom_sandbox.testing import SandboxHandle, running_sandbox  # noqa: E402

# tomllib is 3.11+; the package depends on tomli for 3.10 (same API).
tomllib: Any = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")

TIMEOUT_S = 900.0  # only bounds a hung run; nothing is asserted on it


def other_build(tree: str) -> Path:
    """`--against DIR` of the benchmarks that compare two builds: DIR, resolved, once it is
    shown to be a checkout of this project whose `consumer` this interpreter imports from
    DIR itself (the workers run it so: this venv's python, PYTHONPATH=DIR, which wins over
    the venv's editable install of this tree) with this venv's dependencies. Else one line
    saying what is wrong (SystemExit), before anything starts: a tree that silently ran this
    build, or failed at its first worker, would compare nothing."""
    old = Path(tree).resolve()
    if not (old / "consumer" / "__main__.py").is_file():
        raise SystemExit("--against: %s holds no consumer package" % old)
    probe = subprocess.run(
        [sys.executable, "-c", "import consumer.cli; print(consumer.__file__)"], cwd=old,
        env={**os.environ, "PYTHONPATH": str(old)}, capture_output=True, text=True,
        timeout=120, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no error text"])[-1]
        raise SystemExit("--against: %s's consumer does not import with %s: %s"
                         % (old, sys.executable, last))
    imported = Path(probe.stdout.strip()).resolve()
    if not imported.is_relative_to(old):
        raise SystemExit("--against: with PYTHONPATH=%s, %s imports consumer from %s"
                         % (old, sys.executable, imported.parent))
    return old


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    """SIGTERM (a worker drains), SIGKILL if it outlives `timeout_s`; its exit status (that
    of an earlier exit when it had already ended)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    stat = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of all threads of a process so far."""
    total = 0
    for status in Path("/proc/%d/task" % pid).glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        total += sum(int(line.split()[1]) for line in lines if "ctxt_switches:" in line)
    return total


def rss_kb(pid: int) -> int:
    """Resident set size of a process in kB, from /proc/<pid>/status; 0 once it is gone."""
    try:
        lines = Path("/proc/%d/status" % pid).read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)


def rss_mb(pid: int) -> float:
    """Resident set size of a live process in MiB (RuntimeError when it is gone)."""
    kb = rss_kb(pid)
    if not kb:
        raise RuntimeError("no VmRSS for pid %d" % pid)
    return kb / 1024


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])       # guest time is already inside user
    return total - idle, total


def parse_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`--set SECTION.KEY=VALUE` options (VALUE in TOML) as settings sections."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, raw = item.partition("=")
        section, _, option = key.partition(".")
        out.setdefault(section, {})[option] = tomllib.loads("v = " + raw)["v"]
    return out


@dataclass(frozen=True)
class BenchQueue:
    account_id: str
    name: str
    count: int


class Worker:
    """One `python -m consumer worker` process; its log goes to `log_path`."""

    def __init__(self, config: Path, log_path: Path, env: Mapping[str, str],
                 queue: str = "SmsReport", repo: Path = REPO) -> None:
        """`repo`: the source tree whose `consumer` runs (another checkout: another build)."""
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "consumer", "worker", "--queue", queue,
                 "--config", str(config)],
                cwd=repo, env={**env, "PYTHONPATH": str(repo)}, stdout=log,
                stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError("worker exited %s:\n%s" % (self.proc.returncode, tail))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (drain), SIGKILL if it outlives `timeout_s`; returns the exit status."""
        return stop_process(self.proc, timeout_s)


@dataclass
class World:
    """A sandbox and a Redis for one benchmark; `tmp` holds configs and logs."""

    sandbox: SandboxHandle
    redis: RedisServer
    tmp: Path
    latency_ms: float

    def env(self) -> dict[str, str]:
        """A worker's environment: the sandbox's AccessKey, no ALICOM_RECEIPTS_* overrides."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALICOM_RECEIPTS_")}
        env.update(ALIBABA_CLOUD_ACCESS_KEY_ID=self.sandbox.access_key_id,
                   ALIBABA_CLOUD_ACCESS_KEY_SECRET=self.sandbox.access_key_secret,
                   PYTHONPATH=str(REPO))
        env.pop("CREDENTIALS_DIRECTORY", None)
        return env

    def fill_queue(self, count: int, *, seed: int = 0, message_type: str = "SmsReport",
                   visibility_timeout_s: int = 60,
                   bodies: Sequence[str] | None = None) -> BenchQueue:
        """A new queue (new account id) holding `count` unique receipts (or `bodies`), sent
        with the latency switched off; the latency is back on when this returns."""
        account_id = str(random.randrange(10**15, 10**16))
        name = "Alicom-Queue-%s-%s" % (account_id, message_type)
        self.sandbox.set_faults(latency_ms=0)
        try:
            self.sandbox.create_queue(name, visibility_timeout_s=visibility_timeout_s)
            with Publisher(self.sandbox.endpoint, self.sandbox.access_key_id,
                           self.sandbox.access_key_secret, account_id=account_id) as pub:
                if bodies is None:
                    pub.publish(message_type, count, seed=seed)
                else:
                    pub.send_bodies(name, list(bodies))
        finally:
            self.sandbox.set_faults(latency_ms=self.latency_ms)
        return BenchQueue(account_id, name, count)

    def remaining(self, queue: BenchQueue) -> int:
        """Messages still on the queue: visible, in flight or delayed."""
        s = self.sandbox.queue_state(queue.name)
        return int(s["active"]) + int(s["inactive"]) + int(s["delayed"])

    def config(self, queue: BenchQueue, name: str, *, handler: str,
               options: Mapping[str, Any] | None = None,
               sections: Mapping[str, Mapping[str, Any]] | None = None,
               more: Sequence[Mapping[str, Any]] = ()) -> Path:
        """A worker TOML for `queue`: sandbox endpoints, this Redis, one handler (and the
        `[[handlers]]` tables `more`), JSON logs; `sections` override or add settings
        ({"poll": {"pollers": 8}})."""
        endpoint = self.sandbox.endpoint
        base: dict[str, dict[str, Any]] = {
            "alicom": {"preset": "custom", "mns_endpoint": endpoint,
                       "token_endpoint": endpoint.removeprefix("http://"),
                       "token_protocol": "http", "account_id": queue.account_id,
                       "queues": [queue.name.rsplit("-", 1)[1]]},
            "redis": {"url": self.redis.url},
            "poll": {"wait_seconds": 1, "socket_timeout_s": 10},
            "log": {"format": "json", "level": "info"},
        }
        for section, values in (sections or {}).items():
            base.setdefault(section, {}).update(values)
        entry: dict[str, Any] = {"use": handler, **({"options": options} if options else {})}
        return write_config(self.tmp / ("%s.toml" % name), base, [entry, *more])

    def start_worker(self, config: Path, name: str) -> Worker:
        return Worker(config, self.tmp / ("%s.log" % name), self.env())

    def wait_until(self, done: Callable[[], bool], workers: list[Worker],
                   every_s: float = 0.05) -> float:
        """Polls `done` every `every_s` (failing if a worker died); the epoch time it held."""
        deadline = time.monotonic() + TIMEOUT_S
        while not done():
            for w in workers:
                w.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("timed out; worker logs in %s" % self.tmp)
            time.sleep(every_s)
        return time.time()


@contextmanager
def bench_world(latency_ms: float = 0, *, keep: str | None = None,
                **sandbox_options: Any) -> Iterator[World]:
    """A Redis and a sandbox with `latency_ms` added to every MNS request; configs and logs
    in `keep` (kept) or a temporary folder (removed)."""
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="alicom-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with running_redis() as redis_server, \
                running_sandbox(latency_ms=latency_ms, **sandbox_options) as sandbox:
            yield World(sandbox, redis_server, tmp, latency_ms)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
