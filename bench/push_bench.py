"""The push receiver's answer time under the platform's load: `make bench-push`.

Starts a real redis-server, `alicom-receipts push-server` and (unless --no-worker)
`alicom-receipts push-worker` with a no-op handler, as separate processes with their logs
at info level going to files. An aiohttp client in this process then sends POSTs of
10-receipt SmsReport arrays on a fixed schedule (open loop: a slow answer does not delay
the next request) at --rate requests a second for --seconds, after a short warm-up, and
reports the answer time (request start to the whole answer read) as p50 / p99 / max, the
statuses, how late the client itself started requests, and whether every receipt of the
measured run was applied exactly once.

    .venv/bin/python bench/push_bench.py [--rate 200] [--seconds 20] [--no-worker]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from alicom_sandbox.config_file import write_config
from alicom_sandbox.redis_server import free_port, running_redis
from consumer.handler_api import handler
from consumer.receipts import Receipt

REPO = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 50.0
WARMUP_FIRST = 10**6  # request numbers of the warm-up start here; the measured run's at 0


@handler(name="noop")
def noop(receipt: Receipt) -> None:
    """Accepts every receipt: the worker's cost is the pipeline's, not a handler's."""


def body_of(request_no: int, size: int = 10) -> bytes:
    return json.dumps([{
        "phone_number": "138%08d" % (request_no * size + i), "send_time": "2024-01-01 10:00:00",
        "report_time": "2024-01-01 10:00:02", "success": True, "err_code": "DELIVERED",
        "err_msg": "用户接收成功", "sms_size": "1", "biz_id": "bench^%d" % request_no,
        "out_id": "o%d" % i} for i in range(size)]).encode()


def push_config(tmp: Path, redis_url: str, port: int) -> Path:
    return write_config(tmp / "push.toml", {
        "alicom": {"preset": "sandbox"},
        "redis": {"url": redis_url},
        "log": {"level": "info", "format": "json"},
        "push": {"listen": "127.0.0.1:%d" % port},
    }, [{"use": "bench.push_bench:noop"}])


def start(command: str, config: Path, tmp: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp / ("%s.log" % command), "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "consumer", command, "--config",
                                 str(config)], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with session.get(url) as answer:
                if answer.status == 200:
                    return
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def one(session: aiohttp.ClientSession, url: str, body: bytes, due: float,
              out: list[tuple[float, float, int]]) -> None:
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    started = time.perf_counter()
    async with session.post(url, data=body,
                            headers={"Content-Type": "application/json"}) as answer:
        await answer.read()
        status = answer.status
    out.append((time.perf_counter() - started, started - due, status))


async def load(url: str, rate: float, seconds: float, first: int,
               ) -> list[tuple[float, float, int]]:
    out: list[tuple[float, float, int]] = []
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_ready(session, url)
        t0 = time.perf_counter() + 0.2
        count = int(rate * seconds)
        bodies = [body_of(first + i) for i in range(count)]  # built before the clock runs
        await asyncio.gather(*(one(session, url, bodies[i], t0 + i / rate, out)
                               for i in range(count)))
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--no-worker", action="store_true")
    args = parser.parse_args()
    with running_redis() as redis_server, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        config = push_config(tmp, redis_server.url, port)
        procs = [start("push-server", config, tmp)]
        if not args.no_worker:
            procs.append(start("push-worker", config, tmp))
        url = "http://127.0.0.1:%d/alicom/SmsReport" % port
        try:
            asyncio.run(load(url, args.rate, args.warmup, WARMUP_FIRST))
            results = asyncio.run(load(url, args.rate, args.seconds, 0))
            applied = None if args.no_worker else count_applied(redis_server.client(),
                                                               len(results) * 10)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
        inside = server_times(tmp / "push-server.log")
    report(args, results, applied)
    if inside:
        print("  inside the server (aiohttp handler, from its log): p50 %.2f ms  p99 %.2f ms  "
              "max %.2f ms" % (pct(inside, 0.5), pct(inside, 0.99), max(inside)))
    return 0


def server_times(log: Path) -> list[float]:
    """duration_ms of every POST the server logged (warm-up included)."""
    out = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"push_request"' in line and '"POST"' in line:
            out.append(float(json.loads(line)["duration_ms"]))
    return out


def count_applied(client: object, expected: int) -> int:
    """Waits for the worker to drain the stream; returns the receipts completed."""
    import redis  # noqa: PLC0415 - only needed here

    assert isinstance(client, redis.Redis)
    deadline = time.monotonic() + 120
    while client.xlen("alicom:push") and time.monotonic() < deadline:
        time.sleep(0.2)
    keys = sum(1 for key in client.scan_iter("alicom:dedup:SmsReport:bench^*", count=1000)
               if int(key.decode().split(":")[3].removeprefix("bench^")) < WARMUP_FIRST)
    return keys if keys <= expected else -1


def report(args: argparse.Namespace, results: list[tuple[float, float, int]],
           applied: int | None) -> None:
    times = [r[0] * 1000 for r in results]
    lag = [r[1] * 1000 for r in results]
    statuses = Counter(r[2] for r in results)
    p99 = pct(times, 0.99)
    print("push receiver: %d POSTs of 10 receipts at %.0f/s for %.0f s (worker %s)"
          % (len(results), args.rate, args.seconds, "off" if args.no_worker else "on"))
    print("  answer time  p50 %.2f ms  p99 %.2f ms  max %.2f ms   (target p99 <= %.0f ms)"
          % (pct(times, 0.5), p99, max(times), TARGET_P99_MS))
    print("  client start lag p99 %.2f ms, max %.2f ms" % (pct(lag, 0.99), max(lag)))
    print("  statuses %s" % dict(statuses))
    if applied is not None:
        print("  receipts applied once by the worker: %d (answered 200: %d; a 503 may still "
              "have been stored, the platform would push it again)"
              % (applied, statuses[200] * 10))
    print("  %s" % ("PASS" if p99 <= TARGET_P99_MS and set(statuses) == {200} else "FAIL"))


if __name__ == "__main__":
    sys.exit(main())
