"""Instructions per receipt of one worker draining a queue, under valgrind's callgrind.

`python bench/worker_instructions.py --against DIR` (DIR: another build's tree, e.g.
`git worktree add /tmp/old 50ba0b8`; refused in one line, as by bench/worker_bench.py,
unless this venv's python imports DIR's own `consumer`) runs, `--runs` times and
alternating (old, new, old, ...), the real `python -m consumer worker` of each build under
`valgrind --tool=callgrind` on a fresh queue of `--messages` SmsReport bodies (a real Redis
and the sandbox, as in bench/worker_bench.py, no-op handler, dedup on, logs at info). The
counters are zeroed at the first delete and dumped once the queue is empty, so start-up and
shutdown are left out.

An instruction count does not move with the other work on a shared machine, where the CPU
time per receipt moves by a third between runs; it is the steadier figure of the two (it
leaves out the kernel's work: system calls, context switches). Under valgrind the worker runs
some 50 times slower, so its batches can fill differently than at full speed: compare
builds with it, not absolute rates. Needs valgrind (Debian: `apt-get install valgrind`).

`--handlers bulk` adds the bulk sender's three handlers (number-hygiene, send-tracker,
review-status) to the no-op one, every send tracked at its send time beforehand (as
`worker_bench.py --handlers bulk`): the difference to a `--handlers noop` invocation is what
the three cost.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alicom_sandbox.fakes import FakeReceipts
from bench.common import REPO, World, bench_world, other_build
from bench.worker_procs import NOOP_HANDLER, bulk_entries, track_sends


def instructions_per_receipt(world: World, repo: Path, bodies: Sequence[str],
                             out: Path, handlers: str = "noop") -> tuple[float, int]:
    """(instructions per receipt drained, receipts drained) of `repo`'s worker."""
    queue = world.fill_queue(len(bodies), bodies=list(bodies))
    world.redis.client().flushdb()
    more = bulk_entries(world.redis.url, handlers)
    if handlers != "noop":
        track_sends(world.redis.client(), bodies)
    config = world.config(queue, out.name, handler=NOOP_HANDLER,
                          sections={"poll": {"pollers": 8}}, more=more)
    env = {**world.env(), "PYTHONPATH": str(repo)}
    with open(out.with_suffix(".log"), "wb") as log:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=%s.%%p" % out,
             sys.executable, "-m", "consumer", "worker", "--queue", "SmsReport",
             "--config", str(config)], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        world.wait_until(lambda: world.remaining(queue) < len(bodies), [], every_s=0.05)
        _control(proc, "-z")
        left = world.remaining(queue)
        world.wait_until(lambda: world.remaining(queue) == 0, [], every_s=0.1)
        _control(proc, "-d")
    finally:
        proc.terminate()
        proc.wait(120)
    dump = Path("%s.%d.1" % (out, proc.pid))
    for line in dump.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1]) / left, left
    raise RuntimeError("no summary in %s" % dump)


def _control(proc: subprocess.Popen[bytes], option: str) -> None:
    if proc.poll() is not None:
        raise RuntimeError("the worker under valgrind exited %s" % proc.returncode)
    subprocess.run(["callgrind_control", option, str(proc.pid)], check=True,
                   capture_output=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", required=True, metavar="DIR", help="the other build's tree")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--handlers", choices=("noop", "bulk", "bulk-sender"), default="noop",
                   help="bulk: the no-op handler and the bulk sender's three; bulk-sender: "
                        "the three as one handler")
    args = p.parse_args(argv)
    old = other_build(args.against)
    # Sent in the last hours, as a live sender's receipts are (see worker_bench.py).
    fakes = FakeReceipts(seed=7, start_epoch_s=time.time() - 2.0 * args.messages - 60)
    bodies = [fakes.body("SmsReport").body for _ in range(args.messages)]
    counts: dict[str, list[float]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="worker-ir-") as tmp, bench_world(0) as world:
        for run in range(args.runs):
            for name, repo in (("old", old), ("new", REPO)):
                began = time.monotonic()
                ir, drained = instructions_per_receipt(
                    world, repo, bodies, Path(tmp) / ("%s-%d" % (name, run)), args.handlers)
                counts[name].append(ir)
                print("run %d/%d %s: %s instructions/receipt over %d receipts (%.0f s)" % (
                    run + 1, args.runs, name, f"{ir:,.0f}", drained,
                    time.monotonic() - began), file=sys.stderr, flush=True)
    medians = {name: statistics.median(values) for name, values in counts.items()}
    print("\n`python bench/worker_instructions.py %s`: instructions per receipt, medians of %d "
          "alternating runs\n" % (" ".join(argv if argv is not None else sys.argv[1:]),
                                   args.runs))
    print("| build | instructions/receipt (median) | runs |\n|---|---:|---|")
    for name, values in counts.items():
        print("| %s | %s | %s |" % (name, f"{medians[name]:,.0f}",
                                     ", ".join(f"{v:,.0f}" for v in values)))
    print("\nnew / old: %.1f%%" % (medians["new"] / medians["old"] * 100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
