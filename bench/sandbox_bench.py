"""How much CPU the sandbox spends per message, beside what its SDK client spends.

`make bench-sandbox` (or `python bench/sandbox_bench.py --messages 50000 --rounds 3`) starts
a sandbox subprocess, then for each round: publishes N receipt bodies with the official MNS
SDK (BatchSendMessage of 16, the root AccessKey) and drains them again with a token from the
official Dybaseapi client (BatchReceiveMessage of 16, BatchDeleteMessage), all in this one
client thread. For each phase it measures

* the sandbox's CPU time (utime + stime of /proc/<pid>/stat, before and after),
* this process's CPU time (`time.process_time`),
* wall time,

and prints the medians over the rounds as a markdown table. The goal: the sandbox spends at
most half the CPU per message that its client does, so a benchmark of the daemon against it
measures the daemon, not the sandbox. The bodies are generated before the clock starts.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alicom_sandbox.fakes import FakeReceipts, message_type_of_kind
from alicom_sandbox.publisher import Publisher
from alicom_sandbox.testing import SandboxHandle, running_sandbox
from bench.common import cpu_seconds
from bench.demo_pattern import raw_ceiling, token_queue


@dataclass(frozen=True)
class Sample:
    """One phase of one round."""

    phase: str
    messages: int
    wall_s: float
    sandbox_cpu_s: float
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s

    @property
    def sandbox_us(self) -> float:
        return self.sandbox_cpu_s / self.messages * 1e6

    @property
    def client_us(self) -> float:
        return self.client_cpu_s / self.messages * 1e6


def measure(
    phase: str, sandbox: SandboxHandle, messages: int, work: Callable[[], object]
) -> Sample:
    sandbox_before = cpu_seconds(sandbox.pid)
    client_before = time.process_time()
    wall_before = time.perf_counter()
    work()
    wall = time.perf_counter() - wall_before
    return Sample(
        phase,
        messages,
        wall,
        cpu_seconds(sandbox.pid) - sandbox_before,
        time.process_time() - client_before,
    )


def run_round(sandbox: SandboxHandle, kind: str, count: int, seed: int) -> list[Sample]:
    fakes = FakeReceipts(seed)
    bodies = [fakes.body(kind).body for _ in range(count)]
    message_type = message_type_of_kind(kind)
    with Publisher(sandbox.endpoint, sandbox.access_key_id, sandbox.access_key_secret,
                   account_id=sandbox.account_id) as pub:
        queue_name = pub.queue_name(message_type)
        publish = measure("publish", sandbox, count, lambda: pub.send_bodies(queue_name, bodies))
    # With a token, as the daemon receives: the SDK loop of the worker benchmark's raw ceiling.
    consume = measure("receive+delete", sandbox, count,
                      lambda: raw_ceiling(token_queue(sandbox, queue_name, message_type), count))
    return [publish, consume]


def table(samples: Sequence[Sample], rounds: int) -> str:
    lines = [
        "| phase | msgs/round | rounds | msg/s | sandbox CPU µs/msg | client CPU µs/msg "
        "| sandbox/client |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in ("publish", "receive+delete", "both"):
        chosen = [s for s in samples if phase in ("both", s.phase)]
        if phase == "both":
            chosen = _combined(samples)
        rate = statistics.median(s.rate for s in chosen)
        sandbox_us = statistics.median(s.sandbox_us for s in chosen)
        client_us = statistics.median(s.client_us for s in chosen)
        lines.append(
            f"| {phase} | {chosen[0].messages} | {rounds} | {rate:,.0f} | {sandbox_us:.1f} "
            f"| {client_us:.1f} | {sandbox_us / client_us:.2f} |"
        )
    return "\n".join(lines)


def _combined(samples: Sequence[Sample]) -> list[Sample]:
    """Publish + drain of the same round as one sample (messages counted once)."""
    pairs = zip(samples[0::2], samples[1::2], strict=True)
    return [
        Sample("both", p.messages, p.wall_s + c.wall_s, p.sandbox_cpu_s + c.sandbox_cpu_s,
               p.client_cpu_s + c.client_cpu_s)
        for p, c in pairs
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--type", dest="kind", default="SmsReport")
    args = parser.parse_args(argv)

    samples: list[Sample] = []
    with running_sandbox(log_level="WARNING") as sandbox:
        for r in range(args.rounds):
            samples.extend(run_round(sandbox, args.kind, args.messages, seed=r))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{s.phase} {s.rate:,.0f} msg/s sandbox {s.sandbox_us:.1f} µs client "
                f"{s.client_us:.1f} µs" for s in samples[-2:]), file=sys.stderr)
    print(f"\nSandbox benchmark: {args.kind}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, medians of {args.rounds} rounds\n")
    print(table(samples, args.rounds))
    both = _combined(samples)
    ratio = statistics.median(s.sandbox_us for s in both) / statistics.median(
        s.client_us for s in both)
    verdict = "meets" if ratio <= 0.5 else "misses"
    print(f"\nsandbox CPU per message is {ratio:.2f} x the client's: {verdict} the 0.5 target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
