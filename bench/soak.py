"""The soak: the whole product for a long while under mixed faults, counting every receipt.

`make soak` (not in CI; a short version runs in CI as tests/e2e/test_soak_short.py):

- SmsReport receipts with platform duplicates (same body, new MessageId), undecodable bodies
  and poison receipts (the handler refuses them for good) are put on the sandbox's queue;
- `workers` worker processes consume it; every 5-10 s one of them, at random, gets kill -9
  and is started again (as systemd's Restart=always would);
- the sandbox answers 5% of MNS requests 500/503 and drops 1% of connections; its tokens
  live 30 s;
- Redis (with AOF) is restarted every few minutes;
- a push server and a push worker run beside them: SmsUp bodies are pushed throughout, some
  pushed twice; a refused push is pushed again, as the platform does;
- the handler (tests.e2e.recording:Recorder) appends and fsyncs one line per application.

At the end (counted and judged by bench/soak_report.py): published, applied, lost (goal 0),
applied twice outside the crash window (goal 0) and inside it (counted: the handler ran,
then its process was killed before the completion was recorded, so the receipt ran again on
re-delivery), dead letters (only the poison), and the RSS of each process at its start and
at the end. The exit status is 1 when a goal is missed. The report is also written as JSON
next to the run's files. The plan, processes and shared state are bench/soak_world.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis

from alicom_sandbox.config_file import write_config
from alicom_sandbox.fakes import FakeReceipts
from alicom_sandbox.publisher import Publisher, PublishError
from alicom_sandbox.redis_server import free_port, running_redis
from alicom_sandbox.testing import SandboxHandle, running_sandbox
from consumer.pipeline.deadletter_store import DeadLetterSettings, RedisDeadLetterStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/soak.py`

from bench.soak_report import (
    goals_met,
    key_of,
    letter_key,
    letter_kind,
    markdown,
    read_applied,
    twice,
)
from bench.soak_world import REPO, Proc, SoakPlan, World

ACCOUNT_ID = "1000000000000042"
QUEUE = "Alicom-Queue-%s-SmsReport" % ACCOUNT_ID


# ------------------------------------------------------------------------------------------
# Setting up


def _config(world_tmp: Path, sandbox: SandboxHandle, redis_url: str, push_port: int,
            poison_keys: Sequence[str]) -> Path:
    endpoint = sandbox.endpoint
    sections: dict[str, dict[str, Any]] = {
        "alicom": {"preset": "custom", "mns_endpoint": endpoint,
                   "token_endpoint": endpoint.removeprefix("http://"), "token_protocol": "http",
                   "account_id": ACCOUNT_ID, "queues": ["SmsReport"]},
        "redis": {"url": redis_url},
        "poll": {"pollers": 4, "wait_seconds": 2, "socket_timeout_s": 10},
        "ack": {"visibility_timeout_s": 10, "extend_before_s": 3, "retry_base_s": 1,
                "retry_max_s": 5},
        "worker": {"shutdown_budget_s": 10, "handler_deadline_s": 5},
        "token": {"refresh_before_s": 10},
        "log": {"format": "json", "level": "warning"},
        "push": {"listen": "127.0.0.1:%d" % push_port, "block_s": 0.5, "reclaim_idle_s": 15,
                 "batch_size": 8},
    }
    handler = {"use": "tests.e2e.recording:Recorder",
               "options": {"path": str(world_tmp / "applied.jsonl"),
                           "poison_keys": list(poison_keys)}}
    return write_config(world_tmp / "soak.toml", sections, [handler])


def _publish_chunk(pub: Publisher, world: World, count: int, chunk_no: int) -> list[str]:
    """Publishes `count` messages (their share of the malformed ones included); the keys of
    the receipts among them. Raises PublishError when a fault refused a batch part-way."""
    plan = world.plan
    before = round(plan.malformed * world.published / plan.receipts)
    after = round(plan.malformed * (world.published + count) / plan.receipts)
    report = pub.publish("SmsReport", count, duplicate_rate=plan.duplicate_rate,
                         malformed=after - before, seed=plan.seed * 100_000 + chunk_no)
    world.published += count
    world.malformed += len(report.malformed)
    return [key_of("SmsReport", m.obj) for m in report.originals]


def _publisher_of(world: World) -> Publisher:
    s = world.sandbox
    return Publisher(s.endpoint, s.access_key_id, s.access_key_secret, account_id=ACCOUNT_ID)


def _publish_first(world: World) -> set[str]:
    """The first chunk, before the workers start and the faults are on; the poison keys
    (chosen among its receipts)."""
    with _publisher_of(world) as pub:
        keys = _publish_chunk(pub, world, min(world.plan.first_chunk, world.plan.receipts), 0)
    rng = random.Random(world.plan.seed)
    poison = set(rng.sample(keys, min(world.plan.poison, len(keys))))
    world.good.update(set(keys) - poison)
    return poison


def _publisher(world: World) -> None:
    """The rest of the receipts, paced, through the faults (5xx, resets), one BatchSendMessage
    (16) at a time: a batch is stored whole or not at all, so a refused one is sent again
    (with fresh bodies) and nothing goes uncounted."""
    plan = world.plan
    chunk, chunk_no = 16, 1
    with _publisher_of(world) as pub:
        while world.published < plan.receipts and not world.stop.is_set():
            count = min(chunk, plan.receipts - world.published)
            try:
                world.good.update(_publish_chunk(pub, world, count, chunk_no))
            except PublishError:  # a 5xx or a reset: nothing of the batch was stored
                world.publish_retries += 1
            chunk_no += 1
            world.stop.wait(count / plan.publish_rate_per_s)
    world.published_all.set()


def _env(sandbox: SandboxHandle) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICOM_RECEIPTS_")}
    env["ALIBABA_CLOUD_ACCESS_KEY_ID"] = sandbox.access_key_id
    env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = sandbox.access_key_secret
    env["PYTHONPATH"] = str(REPO)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "consumer", *args]


# ------------------------------------------------------------------------------------------
# The faults and the load, each a thread


def _killer(world: World) -> None:
    rng = random.Random(world.plan.seed + 1)
    low, high = world.plan.kill_every_s
    while not world.stop.wait(rng.uniform(low, high)):
        victim = rng.choice(world.workers)
        if victim.proc is None or victim.proc.poll() is not None:
            continue
        world.kills.append((victim.pid, time.time()))
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        victim.start()


def _redis_restarter(world: World) -> None:
    while not world.stop.wait(world.plan.redis_restart_every_s):
        world.redis_restarts.append(time.time())
        world.redis_server.stop()  # SIGTERM: Redis writes its AOF and exits
        time.sleep(1.0)
        world.redis_server.start_again()
        world.fixed[0].proc = world.redis_server.process
        world.fixed[0].incarnations += 1


def _pusher(world: World, url: str) -> None:
    plan = world.plan
    fakes = FakeReceipts(plan.seed + 2, start_epoch_s=time.time())
    rng = random.Random(plan.seed + 3)
    answered: list[bytes] = []
    interval = plan.push_batch / plan.push_rate_per_s
    while world.push_sent < plan.push_receipts and not world.stop.is_set():
        objs = [fakes.make("SmsUp") for _ in range(plan.push_batch)]
        body = json.dumps(objs, ensure_ascii=False).encode()
        world.push_expected.update(key_of("SmsUp", o) for o in objs)
        _push_until_taken(world, url, body)
        world.push_sent += len(objs)
        answered.append(body)
        if rng.random() < plan.push_duplicate_rate:
            _push_until_taken(world, url, rng.choice(answered))  # the platform repeats one
        world.stop.wait(interval)


def _push_until_taken(world: World, url: str, body: bytes) -> None:
    """POSTs until answered {"code":0}; a refusal is pushed again after 1 s (the platform
    waits about 1, 5 and 10 minutes; the soak is shorter)."""
    while not world.stop.is_set():
        request = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if json.loads(answer.read()).get("code") == 0:
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        world.push_refused += 1
        world.stop.wait(1.0)


def _sampler(world: World) -> None:
    while not world.stop.wait(5.0):
        for proc in [*world.workers, *world.others, *world.fixed]:
            proc.sample_rss()


# ------------------------------------------------------------------------------------------
# Counting


def _settled(world: World) -> bool:
    """Everything published and pushed, all of it applied, the queue empty."""
    if not world.published_all.is_set() or world.push_sent < world.plan.push_receipts:
        return False
    applied = {str(r["key"]) for r in read_applied(world.records)}
    if not world.good <= applied or not world.push_expected <= applied:
        return False
    state = world.sandbox.queue_state(QUEUE)
    return int(state["active"]) + int(state["inactive"]) + int(state["delayed"]) == 0


def _report(world: World, poison: set[str], duration_s: float) -> dict[str, Any]:
    applied = read_applied(world.records)
    keys = Counter(str(r["key"]) for r in applied)
    inside, outside = twice(applied, world.kills)
    letters = RedisDeadLetterStore(world.redis_server.client(), DeadLetterSettings()).list(
        10_000_000, 0)
    kinds = Counter(letter_kind(d, poison) for d in letters)
    poison_lettered = {k for d in letters if (k := letter_key(d)) in poison}
    return {
        "plan": asdict(world.plan),
        "duration_s": round(duration_s, 1),
        "published_mns_messages": world.published,
        "publish_batches_resent": world.publish_retries,
        "published_receipts": len(world.good) + len(poison),
        "pushed_receipts": len(world.push_expected),
        "push_refusals_repushed": world.push_refused,
        "applied": sum(keys.values()),
        "applied_distinct": len(keys),
        "lost": len((world.good | world.push_expected) - set(keys)),
        "poison_applied": len(poison & set(keys)),
        "applied_twice_outside_crash_window": outside,
        "applied_twice_inside_crash_window": inside,
        "dead_letters": len(letters),
        "dead_letters_poison": kinds["poison"],
        "dead_letters_malformed": kinds["malformed"],
        "dead_letters_other": kinds["other"],
        "poison_published": len(poison),
        "poison_without_dead_letter": len(poison - poison_lettered),
        "malformed_published": world.malformed,
        "kills": len(world.kills),
        "redis_restarts": len(world.redis_restarts),
        "rss_kb": {p.name: _rss(p, world.began)
                   for p in [*world.workers, *world.others, *world.fixed]},
    }


#: RSS "at start" is the first sample this long after the run began (imports done, warm).
WARM_S = 15.0


def _rss(proc: Proc, began: float) -> dict[str, int]:
    warm = [s for s in proc.rss_kb if s[2] >= began + WARM_S] or proc.rss_kb
    if not warm:
        return {}
    return {"start_kb": warm[0][1], "end_kb": proc.rss_kb[-1][1],
            "incarnations": proc.incarnations}


# ------------------------------------------------------------------------------------------
# The run


def run(plan: SoakPlan, tmp: Path) -> dict[str, Any]:
    """Runs one soak in `tmp`; returns its report."""
    with running_redis(persistent=True) as rds, \
            running_sandbox(token_lifetime_s=plan.token_lifetime_s, seed=plan.seed) as sandbox:
        sandbox.create_queue(QUEUE, visibility_timeout_s=10)
        env = _env(sandbox)
        fixed = [Proc("redis", [], tmp / "redis.log", env, rds.process, 1),
                 Proc("sandbox", [], tmp / "sandbox.log", env, sandbox.process, 1)]
        world = World(plan, tmp, sandbox, rds, [], [], fixed)
        poison = _publish_first(world)
        push_port = free_port()
        config = _config(tmp, sandbox, rds.url, push_port, sorted(poison))
        world.workers = [Proc("worker-%d" % (i + 1),
                              _command("worker", "--queue", "SmsReport", "--config", str(config)),
                              tmp / ("worker-%d.log" % (i + 1)), env)
                         for i in range(plan.workers)]
        world.others = [Proc(name, _command(name, "--config", str(config)),
                             tmp / ("%s.log" % name), env)
                        for name in ("push-server", "push-worker")]
        for proc in [*world.workers, *world.others]:
            proc.start()
        sandbox.set_faults(error_rate=plan.mns_error_rate, drop_rate=plan.mns_drop_rate)
        world.began = time.monotonic()
        push_url = "http://127.0.0.1:%d/alicom/SmsUp" % push_port
        threads = [threading.Thread(target=t, args=a, daemon=True) for t, a in (
            (_killer, (world,)), (_redis_restarter, (world,)), (_pusher, (world, push_url)),
            (_publisher, (world,)), (_sampler, (world,)))]
        for thread in threads:
            thread.start()
        try:
            while (time.monotonic() - world.began < plan.timeout_s
                   and not _settled_quietly(world)):
                _fail_on_exit(world)
                time.sleep(2.0)
        finally:
            world.stop.set()
            for thread in threads:
                thread.join(60)
            for proc in [*world.workers, *world.others, *world.fixed]:
                proc.sample_rss()
            sandbox.set_faults(error_rate=0, drop_rate=0)
            for proc in [*world.workers, *world.others]:
                proc.stop()
        return _report(world, poison, time.monotonic() - world.began)


def _fail_on_exit(world: World) -> None:
    """Raises when a process exited on its own (a refused start, a crash): the soak kills
    workers, never the push processes, and a killed worker is started again at once."""
    for proc in [*world.workers, *world.others]:
        code = proc.proc.poll() if proc.proc is not None else None
        if code is not None and code != -signal.SIGKILL:
            tail = proc.log.read_text(errors="replace")[-2000:]
            raise RuntimeError("%s exited with %s:\n%s" % (proc.name, code, tail))


def _settled_quietly(world: World) -> bool:
    """`_settled`, False while Redis or the sandbox is briefly away (a restart)."""
    try:
        return _settled(world)
    except (redis.RedisError, OSError, Exception):  # noqa: BLE001 - any failure: not yet
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receipts", type=int, default=SoakPlan.receipts)
    parser.add_argument("--push-receipts", type=int, default=SoakPlan.push_receipts)
    parser.add_argument("--timeout-s", type=float, default=SoakPlan.timeout_s)
    parser.add_argument("--redis-restart-every-s", type=float,
                        default=SoakPlan.redis_restart_every_s)
    args = parser.parse_args(argv)
    plan = SoakPlan(receipts=args.receipts, push_receipts=args.push_receipts,
                    timeout_s=args.timeout_s, redis_restart_every_s=args.redis_restart_every_s)
    tmp = Path(tempfile.mkdtemp(prefix="alicom-soak-"))
    report = run(plan, tmp)
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print("files: %s" % tmp)
    return 0 if goals_met(report) else 1


if __name__ == "__main__":
    sys.exit(main())
