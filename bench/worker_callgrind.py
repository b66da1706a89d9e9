"""Instructions per receipt of the real worker, counted by valgrind's callgrind: a figure that
other processes on a shared machine do not move, where CPU time does.

`python bench/worker_callgrind.py [--messages 3000] [--handlers noop,bulk] [--against DIR]`
starts a real Redis and the sandbox, and for each handler set (as in `worker_bench.py`:
`noop`, and `bulk` = no-op + number-hygiene, send-tracker, review-status, every send tracked
at its send time) fills a fresh queue, starts `python -m consumer worker` under callgrind with
instrumentation off, switches it on (`callgrind_control -i on`) once the worker deleted its
first message and dumps the counts (`callgrind_control -d`) once the queue is empty: user
space instructions per receipt drained in between. With `--against DIR` every handler set
runs first with DIR's build (another checkout), then with this tree's.

What it does not count: the kernel's work for the process (socket round trips, thread
wake-ups), which the CPU time of `worker_bench.py` holds. Under valgrind the worker runs some
50x slower, so work done per second rather than per receipt (heartbeats, the log flusher,
idle polls) weighs more than in a normal run: compare builds and handler sets with each
other, not with CPU microseconds. Needs `valgrind` (Debian's package).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alicom_sandbox.fakes import FakeReceipts
from alicom_sandbox.redis_server import running_redis
from alicom_sandbox.testing import running_sandbox
from bench import common
from bench.worker_procs import Env


def _under_callgrind(out_dir: Path) -> None:
    """Every worker process the bench starts from now on runs under callgrind."""
    popen = subprocess.Popen

    def wrapped(args: Sequence[str], *rest: Any, **options: Any) -> Any:
        if "consumer" in args and "worker" in args:
            args = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    "--callgrind-out-file=%s/cg.%%p" % out_dir, *args]
        return popen(args, *rest, **options)

    common.subprocess.Popen = wrapped  # type: ignore[assignment]


def _control(pid: int, *options: str) -> None:
    subprocess.run(["callgrind_control", *options, str(pid)], check=True,
                   capture_output=True, timeout=600)


def count(env: Env, out_dir: Path, messages: int, handlers: str) -> float:
    """Instructions per receipt drained by one worker run."""
    queue = env.fresh_queue(messages, 0, flush_redis=True)
    if handlers == "bulk":
        env.track_sends(messages)
    worker = env.worker(queue, "callgrind-" + handlers, handlers)
    try:
        drained = env.wait_first_progress(queue, messages, worker)
        _control(worker.pid, "-i", "on")
        env.wait_empty(queue, worker)
        _control(worker.pid, "-d")
    finally:
        worker.stop(timeout_s=600)
    dump = (out_dir / ("cg.%d.1" % worker.pid)).read_text()
    match = re.search(r"^summary: (\d+)", dump, re.MULTILINE)
    if match is None:
        raise RuntimeError("no summary in the callgrind dump of pid %d" % worker.pid)
    return int(match.group(1)) / drained


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--handlers", default="noop,bulk")
    p.add_argument("--against", default=None, metavar="DIR",
                   help="another checkout: each handler set runs with its build first")
    args = p.parse_args(argv)
    builds = ([("old", Path(args.against).resolve())] if args.against else []) + [
        ("new" if args.against else "this", common.REPO)]
    # Sent in the last hours and tracked at their send time, as in worker_bench.py.
    fakes = FakeReceipts(seed=7, start_epoch_s=time.time() - 2.0 * args.messages - 60)
    bodies = [fakes.body("SmsReport").body for _ in range(args.messages)]
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="worker-callgrind-") as tmp, \
            running_redis() as rds, running_sandbox(log_level="WARNING") as sandbox:
        _under_callgrind(Path(tmp))
        env = Env(sandbox, rds, Path(tmp), latency_ms=0, bodies=bodies)
        for handlers in [h for h in args.handlers.split(",") if h]:
            for label, repo in builds:
                env.repo = repo
                rows.append((handlers, label, count(env, Path(tmp), args.messages, handlers)))
                print("%s@%s: %.0f instructions per receipt" % rows[-1], file=sys.stderr)
    print("Worker under callgrind: `python bench/worker_callgrind.py %s`, user-space "
          "instructions per receipt\n" % " ".join(argv if argv is not None else sys.argv[1:]))
    print("| handlers | build | instructions/receipt |\n|---|---|---:|")
    for handlers, label, per in rows:
        print("| %s | %s | %s |" % (handlers, label, f"{per:,.0f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
