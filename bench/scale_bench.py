"""Throughput of 1, 2 and 4 worker processes on one queue at 20 ms added latency.

`make bench-scale` (or `python bench/scale_bench.py --runs 3`) starts a real Redis and the
sandbox with `--latency-ms 20` on every MNS request, then, per run and per process count
(interleaved 1, 2, 4, 1, 2, 4, ... so machine noise spreads over all of them): a fresh queue
filled beforehand (latency off while sending), Redis flushed, N `python -m consumer worker`
processes with a no-op handler (bench/noop_handler.py), logs at info (one JSON line per
receipt, to a file) as in production. Rate: receipts from the first one applied by any
process to the moment the queue is empty (visible, in flight and delayed all 0, polled every
50 ms through the sandbox's admin API).

It prints medians over the runs as a markdown table with the ratios 2/1 and 4/1 (the issue's
targets: >= 1.8 and >= 3.2), and where the CPU went during the drains: worker processes,
sandbox and Redis in cores (CPU seconds per second of drain) and how busy the whole machine
was, from /proc, to tell a CPU-bound machine from a latency-bound worker.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    BenchQueue,
    Worker,
    World,
    bench_world,
    cpu_seconds,
    machine_ticks,
    parse_sets,
)

HANDLER = "bench.noop_handler:FirstSeenNoop"
TARGETS = {2: 1.8, 4: 3.2}
SATURATED = 0.9  # machine busy fraction from which a drain is CPU-bound by the host


@dataclass(frozen=True)
class Sample:
    """One drain: `processes` workers, `count` receipts in `seconds`; CPU in cores."""

    processes: int
    count: int
    seconds: float
    worker_cores: float
    sandbox_cores: float
    redis_cores: float
    machine_busy: float  # 0-1 over all CPUs
    cpus: int = os.cpu_count() or 1

    @property
    def other_cores(self) -> float:
        """Busy cores not spent by the workers, sandbox or Redis: this script, other jobs."""
        return max(0.0, self.machine_busy * self.cpus - self.worker_cores - self.sandbox_cores
                   - self.redis_cores)

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--processes", default="1,2,4", help="process counts, comma-separated")
    p.add_argument("--messages", type=int, default=12_000, help="receipts per drain")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a worker setting for every run (e.g. poll.pollers=8)")
    p.add_argument("--workdir", default=None, help="keep configs and logs here")
    return p.parse_args(argv)


class _Meter:
    """CPU of the workers, the sandbox and Redis, and the machine's busy ticks, between
    two `read()`s."""

    def __init__(self, world: World, workers: list[Worker]) -> None:
        self._pids = {"workers": [w.pid for w in workers], "sandbox": [world.sandbox.pid],
                      "redis": [world.redis.process.pid]}

    def read(self) -> dict[str, float]:
        out = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self._pids.items()}
        busy, total = machine_ticks()
        out["busy"], out["total"] = float(busy), float(total)
        return out


def _first_applied(path: Path) -> float:
    """The earliest first-receipt time any process noted (see bench/noop_handler.py)."""
    return min(float(line.split()[1]) for line in path.read_text().splitlines() if line)


def drain(world: World, n: int, count: int, run: int, sections: dict[str, Any]) -> Sample:
    queue: BenchQueue = world.fill_queue(count, seed=run * 10 + n)
    world.redis.client().flushdb()
    first_path = world.tmp / ("first-%d-%d.txt" % (run, n))
    config = world.config(queue, "run%d-p%d" % (run, n), handler=HANDLER,
                          options={"first_path": str(first_path)}, sections=sections)
    workers = [world.start_worker(config, "run%d-p%d-%d" % (run, n, i)) for i in range(n)]
    meter = _Meter(world, workers)
    try:
        # CPU is read from the first delete on (start-up excluded), the rate from the first
        # receipt applied; both end when the queue is empty.
        world.wait_until(lambda: world.remaining(queue) < count, workers, every_s=0.01)
        before = meter.read()
        emptied = world.wait_until(lambda: world.remaining(queue) == 0, workers)
        after = meter.read()
    finally:
        codes = [w.stop() for w in workers]
    if any(codes):
        raise RuntimeError("a worker exited with %s; logs in %s" % (codes, world.tmp))
    seconds = emptied - _first_applied(first_path)
    span = after["total"] - before["total"]
    wall = span / (os.cpu_count() or 1) / os.sysconf("SC_CLK_TCK")

    def cores(name: str) -> float:
        return (after[name] - before[name]) / wall

    return Sample(n, count, seconds, cores("workers"), cores("sandbox"), cores("redis"),
                  (after["busy"] - before["busy"]) / span)


def table(samples: list[Sample], counts: list[int]) -> str:
    base = statistics.median(s.rate for s in samples if s.processes == counts[0])
    lines = ["| processes | receipts/s (median) | runs | x one process | target | "
             "worker cores | sandbox cores | redis cores | other cores | machine busy |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in counts:
        mine = [s for s in samples if s.processes == n]
        rate = statistics.median(s.rate for s in mine)

        def med(attr: str, mine: list[Sample] = mine) -> float:
            return statistics.median(getattr(s, attr) for s in mine)

        target = TARGETS.get(n)
        lines.append("| %d | %.0f | %s | %.2f | %s | %.2f | %.2f | %.2f | %.2f | %.0f%% |" % (
            n, rate, ", ".join("%.0f" % s.rate for s in mine), rate / base,
            ">= %.1f" % target if target else "", med("worker_cores"), med("sandbox_cores"),
            med("redis_cores"), med("other_cores"), 100 * med("machine_busy")))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    counts = [int(c) for c in args.processes.split(",")]
    sections = parse_sets(args.set)
    samples: list[Sample] = []
    with bench_world(args.latency_ms, keep=args.workdir) as world:
        for run in range(args.runs):
            for n in counts:
                s = drain(world, n, args.messages, run, sections)
                samples.append(s)
                print("run %d, %d process(es): %d receipts in %.2f s = %.0f/s; cores: workers "
                      "%.2f, sandbox %.2f, redis %.2f, other %.2f; machine %.0f%% busy" % (
                          run + 1, n, s.count, s.seconds, s.rate, s.worker_cores,
                          s.sandbox_cores, s.redis_cores, s.other_cores, 100 * s.machine_busy),
                      flush=True)
    print()
    print("%d receipts per drain, %.0f ms added per MNS request, %d run(s); %s, %d CPUs, "
          "Python %s; worker settings: %s" % (
              args.messages, args.latency_ms, args.runs, platform.machine(), os.cpu_count(),
              platform.python_version(), sections or "defaults (see consumer/settings.py)"))
    print()
    print(table(samples, counts))
    busy = [s for s in samples if s.machine_busy >= SATURATED]
    if busy:
        print()
        print("Machine at >= %.0f%% CPU during %s: those drains are bounded by this host's CPU "
              "(other cores = load outside the workers, sandbox and Redis), not by latency." % (
                  100 * SATURATED, ", ".join("%d proc %.0f/s" % (s.processes, s.rate)
                                              for s in busy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
