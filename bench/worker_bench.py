"""One worker process beside the official demo's pattern and the raw SDK ceiling.

`make bench-worker` (or `python bench/worker_bench.py --runs 5`) starts a real Redis and the
sandbox (a subprocess), then for each added latency (0 and 20 ms per request, set through
the sandbox's fault API) and each run, on a fresh queue filled beforehand (at 0 ms) with
unique SmsReport bodies:

* **worker**: the real `python -m consumer worker` process, a no-op single-receipt handler
  (bench/worker_noop.py), dedup on (Redis flushed first), logs at info (one JSON line per
  receipt, to a file). Rate: receipts from the first `receipt_settled` line to the moment
  the queue is empty (active, inactive and delayed all 0, polled every 50 ms).
* **worker+bulk** (`--handlers noop,bulk`; the default, `noop,bulk,bulk-sender`, runs all
  three side by side in every run):
  the same worker with the bulk sender's three handlers added to the no-op one
  (number-hygiene, send-tracker, review-status, each on the same Redis), every receipt's send
  tracked beforehand as the sending code would (so send-tracker settles real task numbers);
  its CPU per receipt minus the plain worker's is what the three cost together: a verdict
  line gives the median of the per-run differences, its 95% interval and the goal (under
  30 µs), met only when the whole interval is under it (`bench/paired.py`). Every other
  run takes its worker runs in reverse order (builds, Redis kinds and handler sets: noop,
  bulk, bulk-sender, then bulk-sender, bulk, noop), so that a steady drift within runs
  mostly cancels out (wholly over an even number of runs) instead of showing up as a cost.
* **worker+bulk-sender** (`--handlers noop,bulk-sender`): the same three as the one
  `bulk-sender` handler (one pool task and one Redis round trip per batch for the three).
* **worker@single / worker@cluster** (`--redis single,cluster`): every worker run once on the
  single Redis and once on a local Redis Cluster (3 masters with a replica each,
  `alicom_sandbox.redis_topologies`), side by side in each run; the verdict compares their
  medians at 0 ms (dedup claims spread over the masters, one pipeline per node per batch).
* **worker@old / worker@new** (`--against DIR`, DIR a checkout of another build, e.g.
  `git worktree add /tmp/old 50ba0b8`): every worker run once with DIR's `consumer` and once
  with this tree's (old first, then new first in the next run), on the same sandbox and
  Redis; the verdict gives new / old for the rate and the worker CPU per receipt at each
  latency (target: within 5%).
* **demo**: the official Python demo's loop in this process: ReceiveMessage (one message),
  base64 + JSON decode, DeleteMessage, with a Dybaseapi token. Fewer messages at 20 ms (it
  needs two round trips per message); the rate is per message either way.
* **raw**: the SDK ceiling: BatchReceiveMessage 16 + BatchDeleteMessage 16 in one loop, no
  processing.

It prints the medians as a markdown table with the ratios the issue sets targets for, the
CPU per receipt of the worker, the sandbox and Redis and the worker's context switches per
receipt during the worker runs, the worker's RSS at the end of each run, and a long run at
0 ms (`--long` receipts, all published first) sampling the worker's RSS every `--rss-every`
seconds: start, end, max.

Worker settings for every worker run: `--set poll.pollers=8` (repeatable). The machine is
shared and has 2 CPUs for the sandbox, Redis, this process and the worker: read the rates
as medians of a noisy place, and the CPU per receipt as the steadier figure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alicom_sandbox.fakes import FakeReceipts
from alicom_sandbox.redis_server import running_redis
from alicom_sandbox.redis_topologies import running_cluster
from alicom_sandbox.testing import running_sandbox
from bench.common import cpu_seconds, other_build
from bench.demo_pattern import demo_pattern, raw_ceiling, token_queue
from bench.paired import handler_costs
from bench.worker_procs import ClusterEnv, ClusterServer, Env, LongRun

MODES = ("worker", "demo", "raw")


@dataclass(frozen=True)
class Sample:
    """One mode at one latency in one run."""

    mode: str
    latency_ms: int
    messages: int
    seconds: float
    rss_mb: float = 0.0
    worker_us: float = 0.0   # CPU per receipt, during the drain
    sandbox_us: float = 0.0
    redis_us: float = 0.0
    switches: float = 0.0    # the worker's context switches per receipt, during the drain
    run: int = 0             # which run (the samples of one run were made side by side)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--latencies", default="0,20", help="added ms per request, comma-separated")
    p.add_argument("--messages", type=int, default=20_000, help="per worker run")
    p.add_argument("--raw-messages", default="20000,4000", help="per raw run, per latency")
    p.add_argument("--demo-messages", default="2000,200", help="per demo run, per latency")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--handlers", default=None,
                   help="worker handler sets, run side by side: noop (the no-op handler), "
                        "bulk (no-op + number-hygiene, send-tracker, review-status), "
                        "bulk-sender (no-op + the three as the one bulk-sender handler); "
                        "default all three, noop,bulk with an --against tree without "
                        "bulk-sender")
    p.add_argument("--long", type=int, default=120_000,
                   help="receipts in the long RSS run at 0 ms (0: skip it)")
    p.add_argument("--redis", default="single",
                   help="single and/or cluster (a local 3-master Redis Cluster with replicas), "
                        "side by side in every run: worker modes are then named per Redis")
    p.add_argument("--against", default=None, metavar="DIR",
                   help="another build's source tree: every worker run alternates it (old) "
                        "with this tree (new), side by side")
    p.add_argument("--rss-every", type=float, default=2.0)
    p.add_argument("--workdir", default=None,
                   help="keep configs and worker logs here (default: a temporary folder)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a worker setting for every worker run (e.g. poll.pollers=8)")
    return p.parse_args(argv)


def _per_latency(text: str, latencies: Sequence[int]) -> dict[int, int]:
    values = [int(v) for v in text.split(",")]
    values += [values[-1]] * (len(latencies) - len(values))
    return dict(zip(latencies, values, strict=False))


def run_worker(env: Env, latency_ms: int, count: int, handlers: str = "noop",
               label: str = "") -> Sample:
    queue = env.fresh_queue(count, latency_ms, flush_redis=True)
    if handlers != "noop":
        env.track_sends(count)
    worker = env.worker(queue, "run-%dms-%s" % (latency_ms, handlers), handlers)
    try:
        first = env.wait_first_progress(queue, count, worker)
        cpu_before = (worker.cpu_seconds(), cpu_seconds(env.sandbox.pid), env.redis_cpu())
        switches_before = worker.context_switches()
        empty_at = env.wait_empty(queue, worker)
        cpu_after = (worker.cpu_seconds(), cpu_seconds(env.sandbox.pid), env.redis_cpu())
        switches = (worker.context_switches() - switches_before) / first
        rss = worker.rss_mb()
    finally:
        worker.stop()
    started, settled = worker.settled_span()
    if settled != count:
        raise RuntimeError("worker settled %d of %d receipts; see %s"
                           % (settled, count, worker.log_path))
    drained = first  # deleted between the two CPU readings
    us = [(a - b) / drained * 1e6 for a, b in zip(cpu_after, cpu_before, strict=True)]
    mode = ("worker" if handlers == "noop" else "worker+" + handlers) + label
    return Sample(mode, latency_ms, count, empty_at - started, rss, *us, switches)


def run_loop(env: Env, mode: str, latency_ms: int, count: int) -> Sample:
    queue = env.fresh_queue(count, latency_ms, flush_redis=False)
    q = token_queue(env.sandbox, queue.name)
    loop = demo_pattern if mode == "demo" else raw_ceiling
    began = time.perf_counter()
    loop(q, count)
    return Sample(mode, latency_ms, count, time.perf_counter() - began)


def median_rate(samples: Sequence[Sample], mode: str, latency_ms: int) -> float:
    return statistics.median(s.rate for s in samples
                             if s.mode == mode and s.latency_ms == latency_ms)


def table(samples: Sequence[Sample], latencies: Sequence[int], modes: Sequence[str]) -> str:
    modes = _with_handler_sets(samples, modes)
    lines = ["| added latency | mode | receipts/run | runs | receipts/s (median) "
             "| worker / raw | worker / demo |", "|---:|---|---:|---:|---:|---:|---:|"]
    for lat in latencies:
        for mode in modes:
            chosen = [s for s in samples if s.mode == mode and s.latency_ms == lat]
            if not chosen:
                continue
            rate = median_rate(samples, mode, lat)
            ratios = ["", ""]
            if mode.startswith("worker"):
                for i, other in enumerate(("raw", "demo")):
                    if other in modes:
                        ratios[i] = "%.2f" % (rate / median_rate(samples, other, lat))
            lines.append("| %d ms | %s | %d | %d | %s | %s | %s |" % (
                lat, mode, chosen[0].messages, len(chosen), f"{rate:,.0f}", *ratios))
    return "\n".join(lines)


def _with_handler_sets(samples: Sequence[Sample], modes: Sequence[str]) -> list[str]:
    """`modes` with each worker handler set that has samples ("worker+bulk") after "worker"."""
    out: list[str] = []
    for mode in modes:
        out.append(mode)
        if mode == "worker":
            out += sorted({s.mode for s in samples
                           if s.mode.startswith("worker") and s.mode != "worker"})
    return out


def cpu_table(samples: Sequence[Sample], latencies: Sequence[int]) -> str:
    lines = ["| added latency | handlers | worker CPU µs/receipt | context switches/receipt "
             "| sandbox µs | redis µs | worker RSS at end (MB) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    sets = _with_handler_sets(samples, ["worker"])
    for lat in latencies:
        for mode in sets:
            chosen = [s for s in samples if s.mode == mode and s.latency_ms == lat]
            if not chosen:
                continue
            lines.append("| %d ms | %s | %.0f | %.2f | %.0f | %.0f | %s |" % (
                lat, _handler_set(mode),
                statistics.median(s.worker_us for s in chosen),
                statistics.median(s.switches for s in chosen),
                statistics.median(s.sandbox_us for s in chosen),
                statistics.median(s.redis_us for s in chosen),
                " / ".join("%.1f" % s.rss_mb for s in chosen)))
    return "\n".join(lines)


def _handler_set(mode: str) -> str:
    """"noop", "bulk", "noop@cluster", "bulk@old"... of a worker mode."""
    name = mode.removeprefix("worker").lstrip("+")
    return name if name and not name.startswith("@") else "noop" + name


def verdicts(samples: Sequence[Sample], latencies: Sequence[int], modes: Sequence[str],
             long_run: LongRun | None) -> list[str]:
    out: list[str] = []
    seen = {s.mode for s in samples}
    if {"worker@single", "worker@cluster"} <= seen and 0 in latencies:
        ratio = (median_rate(samples, "worker@cluster", 0)
                 / median_rate(samples, "worker@single", 0))
        out.append("0 ms: worker on the Redis Cluster %.0f%% of single Redis (target >= 80%%): "
                   "%s" % (ratio * 100, "meets" if ratio >= 0.8 else "MISSES"))
    out += _against(samples, latencies)
    out += handler_costs(samples, latencies)
    if "worker" not in seen:
        return out
    if {"worker", "raw"} <= set(modes) and 0 in latencies:
        ratio = median_rate(samples, "worker", 0) / median_rate(samples, "raw", 0)
        out.append("0 ms: worker %.0f%% of the raw ceiling (target >= 70%%): %s"
                   % (ratio * 100, "meets" if ratio >= 0.7 else "MISSES"))
    if "worker" in modes and 20 in latencies:
        rate = median_rate(samples, "worker", 20)
        out.append("20 ms: worker %s receipts/s (target >= 1,500): %s"
                   % (f"{rate:,.0f}", "meets" if rate >= 1500 else "MISSES"))
        if "demo" in modes:
            ratio = rate / median_rate(samples, "demo", 20)
            out.append("20 ms: worker %.0fx the demo pattern (target >= 30x): %s"
                       % (ratio, "meets" if ratio >= 30 else "MISSES"))
    rss = [s.rss_mb for s in samples if s.mode == "worker"]
    if long_run is not None:
        rss += [r for _, r in long_run.rss]
    if rss:
        out.append("worker RSS max %.1f MB (target <= 80 MB): %s"
                   % (max(rss), "meets" if max(rss) <= 80 else "MISSES"))
    return out


def _against(samples: Sequence[Sample], latencies: Sequence[int]) -> list[str]:
    """new / old (`--against`) per worker mode and latency: rate and worker CPU/receipt."""
    out: list[str] = []
    for old in sorted({s.mode for s in samples if s.mode.endswith("@old")}):
        new = old.removesuffix("@old") + "@new"
        for lat in latencies:
            pick = {m: [s for s in samples if s.mode == m and s.latency_ms == lat]
                    for m in (old, new)}
            if not (pick[old] and pick[new]):
                continue
            rate = median_rate(samples, new, lat) / median_rate(samples, old, lat)
            cpu = (statistics.median(s.worker_us for s in pick[new])
                   / statistics.median(s.worker_us for s in pick[old]))
            out.append("%d ms: %s / old: %.0f%% of the rate, %.0f%% of the worker CPU per "
                       "receipt (target: rate >= 95%%, CPU <= 105%%): %s" % (
                           lat, new, rate * 100, cpu * 100,
                           "meets" if rate >= 0.95 and cpu <= 1.05 else "MISSES"))
    return out


def _progress(s: Sample, run: int, runs: int) -> None:
    print("run %d/%d %3d ms %-11s %7s receipts/s%s" % (
        run + 1, runs, s.latency_ms, s.mode, f"{s.rate:,.0f}",
        "  worker %.1f µs (%.2f switches) sandbox %.0f µs redis %.0f µs/receipt, RSS %.1f MB"
        % (s.worker_us, s.switches, s.sandbox_us, s.redis_us, s.rss_mb)
        if s.mode.startswith("worker") else ""), file=sys.stderr, flush=True)


def _redis_kinds(text: str) -> list[str]:
    kinds = [k for k in text.split(",") if k]
    if not kinds or set(kinds) - {"single", "cluster"}:
        raise SystemExit("--redis: single and/or cluster")
    return kinds


def _redis_envs(env: Env, kinds: Sequence[str], stack: contextlib.ExitStack,
                against: Path | None = None) -> list[tuple[Env, str]]:
    """(env, mode label) per `--redis` kind (a cluster is started into `stack`); with
    `against`, each is preceded by the same env running that tree's build ("@old")."""
    envs: list[tuple[Env, str]] = []
    if "single" in kinds:
        envs.append((env, "" if list(kinds) == ["single"] else "@single"))
    if "cluster" in kinds:
        cluster = ClusterServer(stack.enter_context(running_cluster()))
        envs.append((ClusterEnv(env.sandbox, cluster, env.tmp, latency_ms=0, bodies=env.bodies,
                                overrides=env.overrides), "@cluster"))
    if against is None:
        return envs
    return [pair for e, label in envs
            for pair in ((dataclasses.replace(e, repo=against), label + "@old"),
                         (e, label + "@new"))]


def _handler_sets(given: str | None, against: str | None) -> list[str]:
    """`--handlers` as a list; bulk-sender only where both builds have it."""
    lacks = against is not None and not (
        Path(against) / "consumer" / "handlers" / "bulk_sender.py").is_file()
    sets = [h for h in (given or "noop,bulk,bulk-sender").split(",") if h]
    if lacks and "bulk-sender" in sets:
        if given:
            raise SystemExit("--handlers bulk-sender: the --against tree has no bulk-sender "
                             "handler (leave it out: --handlers noop,bulk)")
        sets.remove("bulk-sender")
    return sets


def main(argv: Sequence[str] | None = None) -> int:
    args = _args(argv)
    load_at_start = os.getloadavg()[0]  # other work on the machine moves every figure
    # (the end's reading also holds the bench's own processes: the start's tells other work)
    latencies = [int(v) for v in args.latencies.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    counts = {"worker": dict.fromkeys(latencies, args.messages),
              "raw": _per_latency(args.raw_messages, latencies),
              "demo": _per_latency(args.demo_messages, latencies)}
    biggest = max(max(c.values()) for c in counts.values())
    # Sent in the last hours (each receipt 0-2 s after the one before), as a live sender's
    # receipts are: their send time is when the sending code tracked them (`track_sends`).
    fakes = FakeReceipts(seed=7, start_epoch_s=time.time() - 2.0 * biggest - 60)
    bodies = [fakes.body("SmsReport").body for _ in range(max(biggest, 16))]
    samples: list[Sample] = []
    long_run: LongRun | None = None
    handler_sets = _handler_sets(args.handlers, args.against)
    if (not handler_sets or set(handler_sets) - {"noop", "bulk", "bulk-sender"}
            or len(set(handler_sets)) < len(handler_sets)):
        raise SystemExit("--handlers: noop, bulk and/or bulk-sender, each once")
    kinds = _redis_kinds(args.redis)
    against = None if args.against is None else other_build(args.against)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="worker-bench-"))
        rds = stack.enter_context(running_redis())
        sandbox = stack.enter_context(running_sandbox(log_level="WARNING"))
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        env = Env(sandbox, rds, workdir, latency_ms=0, bodies=bodies, overrides=tuple(args.set))
        envs = _redis_envs(env, kinds, stack, against)
        for run in range(args.runs):
            workers = [(e, label, h) for e, label in envs for h in handler_sets]
            if run % 2:  # every other run in reverse: a steady drift within runs cancels out
                workers.reverse()
            for lat in latencies:
                for mode in modes:
                    n = counts[mode][lat]
                    batch = ([run_worker(e, lat, n, h, label) for e, label, h in workers]
                             if mode == "worker" else [run_loop(env, mode, lat, n)])
                    batch = [dataclasses.replace(s, run=run) for s in batch]
                    samples += batch
                    for s in batch:
                        _progress(s, run, args.runs)
        if args.long:
            long_run = env.long_run(args.long, args.rss_every, FakeReceipts(seed=11))
    _report(argv if argv is not None else sys.argv[1:], args.runs, samples, latencies, modes,
            long_run, load_at_start)
    return 0


def _report(argv: Sequence[str], runs: int, samples: Sequence[Sample],
            latencies: Sequence[int], modes: Sequence[str], long_run: LongRun | None,
            load_at_start: float) -> None:
    """Prints the command, the machine, the tables and the verdicts (markdown)."""
    command = "python bench/worker_bench.py " + " ".join(argv)
    print("\nWorker benchmark: `%s`\nPython %s, %d CPUs (sandbox, Redis and the worker share "
          "them), load average %.2f at the start and %.2f at the end, bench pid CPU %.1f s, "
          "medians of %d runs\n" % (
              command.strip(), platform.python_version(), os.cpu_count() or 0, load_at_start,
              os.getloadavg()[0], cpu_seconds(os.getpid()), runs))
    print(table(samples, latencies, modes))
    if "worker" in modes:
        print("\nDuring the worker runs (medians):\n")
        print(cpu_table(samples, latencies))
    if long_run is not None:
        print("\n" + long_run.summary())
    print()
    for line in verdicts(samples, latencies, modes, long_run):
        print("- " + line)


if __name__ == "__main__":
    sys.exit(main())
