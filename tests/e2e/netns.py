"""Hosts as Linux network namespaces (`ip netns`, a veth pair each) for many-host tests.

Each `Host` reaches the root namespace's services at fixed addresses on the root's loopback
(`REDIS_IP` for Redis, `MNS_IP` for the sandbox), routed through its veth; `cut(ip)` drops
that route to a blackhole (the host's calls there fail at once, as behind a partition that
rejects), `restore(ip)` puts it back. Needs root and iproute2; everything made is removed
on exit (namespaces, veths, the loopback addresses).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

REDIS_IP = "10.78.0.1"
MNS_IP = "10.79.0.1"


def ip(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    done = subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, timeout=30,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str  # the namespace
    index: int

    @property
    def gateway(self) -> str:
        return f"10.77.{self.index}.1"

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self, address: str) -> None:
        ip("route", "replace", "blackhole", f"{address}/32", netns=self.name)

    def restore(self, address: str) -> None:
        ip("route", "replace", f"{address}/32", "via", self.gateway, netns=self.name)


@contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    tag = f"ai{os.getpid() % 100000}"
    made: list[Host] = []
    try:
        for address in (REDIS_IP, MNS_IP):
            ip("addr", "replace", f"{address}/32", "dev", "lo")
        for i in range(1, count + 1):
            host = Host(f"{tag}h{i}", i)
            made.append(host)
            ip("netns", "add", host.name)
            outer, inner = f"{tag}v{i}", f"{tag}p{i}"
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", host.name)
            ip("addr", "add", f"{host.gateway}/24", "dev", outer)
            ip("link", "set", outer, "up")
            ip("addr", "add", f"10.77.{i}.2/24", "dev", inner, netns=host.name)
            ip("link", "set", inner, "up", netns=host.name)
            ip("link", "set", "lo", "up", netns=host.name)
            for address in (REDIS_IP, MNS_IP):
                host.restore(address)
        yield made
    finally:
        for i, host in enumerate(made, start=1):
            subprocess.run(["ip", "link", "del", f"{tag}v{i}"], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True, check=False)
        for address in (REDIS_IP, MNS_IP):
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"],
                           capture_output=True, check=False)
