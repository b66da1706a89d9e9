"""A real redis-server process on a free loopback port, for the demo, tests and benchmarks.

The binary must be on PATH (`make test` and `make demo` install Debian's package if needed)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: str
    persistent: bool = False  # AOF, fsync always: a stop and start keeps every write

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        """Stops the server (an outage); `start_again` brings it back on the same port."""
        self.process.terminate()
        self.process.wait(10)

    def start_again(self) -> None:
        self.process = _spawn(self.port, self.workdir, self.persistent)
        _wait_ready(self.port, self.process)


def _spawn(port: int, workdir: str, persistent: bool = False) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH: `make test` or `make demo` installs it")
    aof = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else [
        "--appendonly", "no"]
    return subprocess.Popen(  # noqa: S603 - the redis-server binary, fixed arguments
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *aof,
         "--dir", workdir, "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Waits until `process` itself answers on `port`. The port was free when picked, but
    another process may take it before redis-server binds (or while a stopped server is
    down): then this server exits, and whatever answers there is not ours, so it is an error,
    never a silent switch to someone else's data."""
    deadline = time.monotonic() + timeout_s
    with redis.Redis(host="127.0.0.1", port=port) as client:
        while process.poll() is None:
            try:
                served_by = int(client.info("server")["process_id"])
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
                continue
            if served_by != process.pid:
                break
            return
    process.kill()
    process.wait(10)
    raise RuntimeError(f"redis-server could not listen on 127.0.0.1:{port}: the port is taken")


@contextmanager
def running_redis(persistent: bool = False) -> Iterator[RedisServer]:
    """A fresh server; `persistent` ones keep their data across `stop` and `start_again`."""
    workdir = tempfile.mkdtemp(prefix="alicom-redis-")
    port = free_port()
    server = RedisServer(port, _spawn(port, workdir, persistent), workdir, persistent)
    try:
        _wait_ready(port, server.process)
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
