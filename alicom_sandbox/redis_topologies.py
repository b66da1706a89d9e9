"""Real multi-process Redis set-ups on free loopback ports, for tests and benchmarks.

* `running_cluster(masters=3, replicas_per_master=1)`: a Redis Cluster made with
  ``redis-cli --cluster create``; `ClusterSetup.failover()` promotes a replica with
  ``CLUSTER FAILOVER`` (the planned, lossless kind) and waits until the cluster agrees;
* `running_sentinel(sentinels=3)`: a primary, one replica and sentinels watching it as
  service ``alicom``; `SentinelSetup.failover()` runs ``SENTINEL FAILOVER`` and waits until
  the sentinels report the replica as the new primary.

Either can run with TLS (``tls=True``): every process also listens on a TLS port with a
self-signed certificate for 127.0.0.1 made by ``openssl`` (`Tls`), they talk TLS to each
other, and ``url`` is the ``rediss+...`` form naming that certificate as its CA; the plain
ports stay open for the set-up's own checks.

Same binary as `alicom_sandbox.redis_server` (Debian's redis-server; sentinels are
``redis-server --sentinel``). Nothing is persisted; every process is killed on exit.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from alicom_sandbox.redis_server import free_port

__all__ = ["ClusterSetup", "SentinelSetup", "Tls", "running_cluster", "running_sentinel"]

SERVICE = "alicom"


def _cluster_ports(count: int) -> list[int]:
    """`count` distinct `_cluster_port`s, none another's bus port."""
    ports: list[int] = []
    while len(ports) < count:
        port = _cluster_port()
        if not {port, port + 10000, port - 10000} & set(ports):
            ports.append(port)
    return ports


def _cluster_port() -> int:
    """A free port p <= 55535 whose cluster bus port p + 10000 is free too (Redis needs both)."""
    for _ in range(200):
        port = random.randint(20000, 55535)  # noqa: S311 - not for security
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not on PATH: `make test` installs Debian's redis-server")
    return path


def _spawn(workdir: Path, port: int, *extra: str, sentinel_conf: Path | None = None,
           ) -> subprocess.Popen[bytes]:
    args = [_binary("redis-server")]
    if sentinel_conf is not None:
        args += [str(sentinel_conf), "--sentinel"]
    args += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), *extra]
    if sentinel_conf is None:
        args += ["--save", "", "--appendonly", "no"]
    log = open(workdir / f"{port}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis set-up: {what} did not happen within {timeout_s} s")
        time.sleep(0.05)


@dataclass
class _Processes:
    workdir: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, port: int, *extra: str, sentinel_conf: Path | None = None) -> None:
        self.processes[port] = _spawn(self.workdir, port, *extra, sentinel_conf=sentinel_conf)
        _wait(lambda: bool(redis.Redis(port=port, socket_timeout=1).ping()),
              f"redis on port {port} answering")

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(10)


@dataclass(frozen=True)
class Tls:
    """A self-signed certificate for 127.0.0.1 (made with openssl), which is its own CA."""

    cert: Path
    key: Path

    @classmethod
    def make(cls, workdir: Path) -> Tls:
        cert, key = workdir / "tls-cert.pem", workdir / "tls-key.pem"
        subprocess.run(  # noqa: S603 - fixed arguments
            [_binary("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        return cls(cert, key)

    def server_args(self, tls_port: int) -> list[str]:
        """A plain port stays open beside the TLS one, for the set-up's own checks."""
        return ["--tls-port", str(tls_port), "--tls-cert-file", str(self.cert),
                "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.cert),
                "--tls-auth-clients", "no", "--tls-replication", "yes"]

    @property
    def query(self) -> str:
        return f"?ssl_ca_certs={self.cert}"


@dataclass
class ClusterSetup:
    """`ports` are the plain ports; with `tls`, `tls_ports[port]` is each node's TLS port,
    the one the URL names, the nodes announce to TLS clients and the cluster bus uses."""

    ports: list[int]
    procs: _Processes
    tls: Tls | None = None
    tls_ports: dict[int, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        if self.tls is None:
            return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])
        hosts = ",".join(f"127.0.0.1:{self.tls_ports[p]}" for p in self.ports[:3])
        return f"rediss+cluster://{hosts}{self.tls.query}"

    def _plain(self, port: int) -> int:
        return next((p for p, t in self.tls_ports.items() if t == port), port)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def masters(self) -> list[int]:
        return [p for p in self.ports
                if redis.Redis(port=p).info("replication")["role"] == "master"]

    def failover(self, master: int | None = None) -> int:
        """Promotes the replica of `master` (a port; default: the first master); returns the
        promoted port."""
        master = self.masters()[0] if master is None else master
        info = redis.Redis(port=master).info("replication")
        replica = self._plain(int(info["slave0"]["port"]))
        # The master only heeds a replica's failover request once gossip told it that the
        # node is its replica; a request before that times out unheard (5 s), so wait for it
        # and ask again if one does anyway.
        _wait(lambda: _knows_replica(master, {replica, self.tls_ports.get(replica, 0)}),
              f"master {master} knowing {replica}")
        for attempt in range(3):
            redis.Redis(port=replica).cluster("failover")
            try:
                _wait(lambda: redis.Redis(port=replica).info("replication")["role"]
                      == "master", f"replica {replica} taking over", timeout_s=10)
                break
            except TimeoutError:
                if attempt == 2:
                    raise
        _wait(self._agreed, "the cluster agreeing on the new map")
        _wait(lambda: _replicating(master), "the old master replicating from the new one")
        return replica

    def _agreed(self) -> bool:
        views = {str(sorted(redis.Redis(port=p).cluster("slots")))
                 for p in self.ports}
        return len(views) == 1 and all(
            redis.Redis(port=p).cluster("info")["cluster_state"] == "ok" for p in self.ports)


@contextmanager
def running_cluster(masters: int = 3, replicas_per_master: int = 1,
                    tls: bool = False) -> Iterator[ClusterSetup]:
    """A fresh cluster of `masters` x (1 + `replicas_per_master`) nodes; see the docstring.
    `tls`: the nodes also listen with TLS and talk TLS among themselves (`ClusterSetup`)."""
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="alicom-cluster-"))
        stack.callback(shutil.rmtree, workdir, True)
        procs = _Processes(workdir)
        stack.callback(procs.stop_all)
        nodes = masters * (1 + replicas_per_master)
        drawn = _cluster_ports(nodes * 2 if tls else nodes)
        ports = drawn[:nodes]
        certificate = Tls.make(workdir) if tls else None
        tls_ports = dict(zip(ports, drawn[nodes:], strict=True)) if certificate else {}
        for port in ports:
            extra = ([*certificate.server_args(tls_ports[port]), "--tls-cluster", "yes"]
                     if certificate else [])
            procs.start(port, "--cluster-enabled", "yes", "--cluster-config-file",
                        f"nodes-{port}.conf", "--cluster-node-timeout", "2000",
                        # no 5 s wait for more replicas before a first sync starts
                        "--repl-diskless-sync-delay", "0", *extra)
        client_tls = ["--tls", "--cacert", str(certificate.cert)] if certificate else []
        subprocess.run(  # noqa: S603 - fixed arguments
            [_binary("redis-cli"), "--cluster", "create",
             *[f"127.0.0.1:{tls_ports.get(p, p)}" for p in ports],
             "--cluster-replicas", str(replicas_per_master), "--cluster-yes", *client_tls],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        setup = ClusterSetup(ports, procs, certificate, tls_ports)
        _wait(setup._agreed, "the new cluster agreeing on its slot map")
        # Replicas attach asynchronously, and an attached one counts for WAIT only once its
        # first sync is done ("online"): a failover test and `wait_replicas` need that.
        _wait(lambda: all(_replicas_online(p) >= replicas_per_master
                          for p in setup.masters()), "every master's replicas in sync")
        yield setup


@dataclass
class SentinelSetup:
    """Ports are the plain ones; with `tls`, `tls_ports[port]` is each process's TLS port:
    the URL names the sentinels' and the sentinels watch the data nodes' (so report those)."""

    primary_port: int
    replica_port: int
    sentinel_ports: list[int]
    procs: _Processes
    tls: Tls | None = None
    tls_ports: dict[int, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{self.tls_ports.get(p, p)}" for p in self.sentinel_ports)
        if self.tls is None:
            return f"redis+sentinel://{hosts}/{SERVICE}/0"
        return f"rediss+sentinel://{hosts}/{SERVICE}/0{self.tls.query}"

    def current_primary(self) -> int:
        """The plain port of the primary the sentinels report."""
        return self._plain(_primary_port(self.sentinel_ports[0]))

    def _plain(self, port: int) -> int:
        return next((p for p, t in self.tls_ports.items() if t == port), port)

    def failover(self) -> int:
        """SENTINEL FAILOVER; returns the new primary's port once every sentinel reports it."""
        old = self.current_primary()
        redis.Redis(port=self.sentinel_ports[0]).sentinel_failover(SERVICE)

        def moved() -> bool:
            addrs = {self._plain(_primary_port(s)) for s in self.sentinel_ports}
            if len(addrs) != 1 or old in addrs:
                return False
            return bool(redis.Redis(port=addrs.pop()).info("replication")["role"] == "master")

        _wait(moved, "the sentinels electing the replica")
        # Until the old primary is turned into a replica it still takes writes (Sentinel's
        # split-brain window): a test must not write before that has happened.
        _wait(lambda: _replicating(old), "the old primary replicating from the new one")
        return self.current_primary()


def _knows_replica(master: int, replica: set[int]) -> bool:
    """Whether the master's cluster view lists the replica (by any of its `replica` ports)."""
    node = redis.Redis(port=master, decode_responses=True)
    listed = node.cluster("replicas", node.cluster("myid"))  # redis-py: {"host:port": {...}}
    return any(int(address.rpartition(":")[2]) in replica for address in listed)


def _replicas_online(port: int) -> int:
    """How many replicas of the primary on `port` have finished their first sync."""
    info = redis.Redis(port=port).info("replication")
    return sum(1 for n in range(int(info["connected_slaves"]))
               if info.get(f"slave{n}", {}).get("state") == "online")


def _replicating(port: int) -> bool:
    info = redis.Redis(port=port).info("replication")
    return bool(info["role"] == "slave" and info.get("master_link_status") == "up")


def _primary_port(sentinel_port: int) -> int:
    answer = redis.Redis(port=sentinel_port).sentinel_get_master_addr_by_name(SERVICE)
    if not isinstance(answer, tuple):
        raise redis.ConnectionError(f"sentinel {sentinel_port} knows no primary of {SERVICE}")
    return int(answer[1])


def _sentinel_view(sentinel_port: int) -> dict[str, Any]:
    return cast("dict[str, Any]", redis.Redis(port=sentinel_port).sentinel_master(SERVICE))


@contextmanager
def running_sentinel(sentinels: int = 3, tls: bool = False) -> Iterator[SentinelSetup]:
    """A primary, a replica and `sentinels` sentinels (quorum 2); see the module docstring.
    `tls`: every process also listens with TLS, and they talk TLS to each other."""
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="alicom-sentinel-"))
        stack.callback(shutil.rmtree, workdir, True)
        procs = _Processes(workdir)
        stack.callback(procs.stop_all)
        primary, replica = free_port(), free_port()
        ports = [free_port() for _ in range(sentinels)]
        certificate = Tls.make(workdir) if tls else None
        tls_ports = {p: free_port() for p in (primary, replica, *ports)} if certificate else {}

        def tls_args(port: int) -> list[str]:
            return certificate.server_args(tls_ports[port]) if certificate else []

        procs.start(primary, *tls_args(primary))
        procs.start(replica, "--replicaof", "127.0.0.1", str(tls_ports.get(primary, primary)),
                    *tls_args(replica))
        _wait(lambda: redis.Redis(port=replica).info("replication")["master_link_status"]
              == "up", "the replica syncing")
        for port in ports:
            conf = workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"sentinel monitor {SERVICE} 127.0.0.1 {tls_ports.get(primary, primary)} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 2000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n")
            procs.start(port, *tls_args(port), sentinel_conf=conf)
        setup = SentinelSetup(primary, replica, ports, procs, certificate, tls_ports)
        _wait(lambda: all(
            int(_sentinel_view(s)["num-other-sentinels"]) == sentinels - 1
            and int(_sentinel_view(s)["num-slaves"]) >= 1 for s in ports),
            "the sentinels finding each other and the replica")
        yield setup
