"""A real PostgreSQL server on a free loopback port, for the tests and benchmarks.

Debian's `postgresql` package puts the server binaries under /usr/lib/postgresql/<major>/bin
(not on PATH); `make test` installs it (.ci/ensure-postgres). initdb refuses to run as root,
so as root the cluster is created and run as the package's `postgres` user (Popen drops
to it), in a directory of its own; as anyone else, as that user. Authentication is `trust`
on 127.0.0.1 only: a throwaway cluster for one test session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from alicom_sandbox.redis_server import free_port

_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_RUN_AS = "postgres"


def server_bin_dir() -> str:
    """The newest installed server's bin directory; RuntimeError when there is none."""
    found = sorted(glob.glob(_BIN_GLOB), key=lambda p: int(p.split("/")[-2]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/<ver>/bin): "
                           "`make test` installs Debian's postgresql package")
    return found[-1]


@dataclass
class PostgresServer:
    port: int
    process: subprocess.Popen[bytes]
    datadir: str

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def kill(self) -> None:
        """SIGKILLs the postmaster (its backends exit as it goes)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the `postgres` user (no wrapper process: signals
    reach the postmaster itself)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(_RUN_AS)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": entry.pw_dir, "USER": _RUN_AS}}


def _prepare_dir() -> str:
    base = tempfile.mkdtemp(prefix="alicom-pg-")
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_RUN_AS)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    return base


def _initdb(bin_dir: str, datadir: str) -> None:
    subprocess.run(  # noqa: S603 - the installed initdb, fixed arguments
        [f"{bin_dir}/initdb", "-D", datadir, "-U", "postgres", "-A", "trust", "-E", "UTF8",
         "--locale=C.UTF-8", "--no-sync"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
        cwd=os.path.dirname(datadir), **_run_as())


def _wait_ready(bin_dir: str, port: int, process: subprocess.Popen[bytes], socket_dir: str,
                timeout_s: float = 30.0) -> None:
    """Ready when *this* server answers on its own Unix socket (in its private directory).

    Probing 127.0.0.1:port could reach another test's server that took the port first (free
    ports are only free when asked); PostgreSQL opens its TCP socket before its Unix one and
    exits when it cannot, so its own socket answering means it holds the port too.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        probe = subprocess.run(  # noqa: S603 - the installed pg_isready, fixed arguments
            [f"{bin_dir}/pg_isready", "-h", socket_dir, "-p", str(port), "-U", "postgres"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if probe.returncode == 0 and process.poll() is None:
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL on port {port} did not start "
                               f"(exit status {process.poll()})")
        time.sleep(0.05)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A fresh cluster, started and ready; stopped and removed afterwards."""
    bin_dir = server_bin_dir()
    base = _prepare_dir()
    datadir = os.path.join(base, "data")
    try:
        _initdb(bin_dir, datadir)
        port = free_port()
        process = subprocess.Popen(  # noqa: S603 - the installed postgres, fixed arguments
            [f"{bin_dir}/postgres", "-D", datadir, "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={base}",
             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base, **_run_as())
        server = PostgresServer(port, process, datadir)
        try:
            _wait_ready(bin_dir, port, process, base)
            yield server
        finally:
            if server.process.poll() is None:
                # SIGINT is the "fast" shutdown; SIGTERM ("smart") would wait for clients
                server.process.send_signal(signal.SIGINT)
                try:
                    server.process.wait(20)
                except subprocess.TimeoutExpired:
                    server.kill()
    finally:
        shutil.rmtree(base, ignore_errors=True)
