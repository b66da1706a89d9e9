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

At the end: published, applied, lost (goal 0), applied twice outside the crash window (goal
0) and inside it (counted: the handler ran, then its process was killed before the
completion was recorded, so the receipt ran again on re-delivery), dead letters (only the
poison), and the RSS of each process at its start and at the end. The exit status is 1 when
a goal is missed. The report is also written as JSON next to the run's files.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from alicom_sandbox.config_file import write_config
from alicom_sandbox.fakes import FakeReceipts
from alicom_sandbox.publisher import Publisher, PublishError
from alicom_sandbox.redis_server import RedisServer, free_port, running_redis
from alicom_sandbox.testing import SandboxHandle, running_sandbox
from consumer.errors import DecodeError
from consumer.keys import business_key
from consumer.pipeline.deadletter import DeadLetter
from consumer.pipeline.deadletter_store import DeadLetterSettings, RedisDeadLetterStore
from consumer.pipeline.decode import parse_object
from consumer.receipts import ReceiptMeta

REPO = Path(__file__).resolve().parent.parent
ACCOUNT_ID = "1000000000000042"
QUEUE = "Alicom-Queue-%s-SmsReport" % ACCOUNT_ID


@dataclass(frozen=True)
class SoakPlan:
    """What one soak run does. The defaults are `make soak`'s."""

    receipts: int = 100_000  # SmsReport messages on the queue, duplicates and poison included
    first_chunk: int = 10_000  # on the queue before the workers start (the poison is in it)
    publish_rate_per_s: float = 200.0  # the rest arrives at this pace while the faults run
    duplicate_rate: float = 0.05
    malformed: int = 100  # undecodable bodies: dead-lettered by the decoder
    poison: int = 100  # receipts the handler refuses for good: dead-lettered
    workers: int = 4
    kill_every_s: tuple[float, float] = (5.0, 10.0)
    mns_error_rate: float = 0.05
    mns_drop_rate: float = 0.01
    token_lifetime_s: float = 30.0
    redis_restart_every_s: float = 120.0
    push_receipts: int = 10_000  # SmsUp receipts through the push server
    push_batch: int = 20
    push_duplicate_rate: float = 0.05  # bodies pushed a second time after their 200
    push_rate_per_s: float = 25.0
    timeout_s: float = 3600.0
    seed: int = 16


@dataclass
class Proc:
    """One long-running process of the soak; `start` runs it again after a kill."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    incarnations: int = 0
    rss_kb: list[tuple[int, int, float]] = field(default_factory=list)  # (incarnation, kB, t)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.incarnations += 1

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def sample_rss(self) -> None:
        kb = rss_kb(self.pid)
        if kb:
            self.rss_kb.append((self.incarnations, kb, time.monotonic()))

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def rss_kb(pid: int) -> int:
    """Resident memory of a process in kB (0 when it is gone)."""
    try:
        with open("/proc/%d/status" % pid, encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class World:
    """The run's state shared by its threads."""

    plan: SoakPlan
    tmp: Path
    sandbox: SandboxHandle
    redis_server: RedisServer
    workers: list[Proc]
    others: list[Proc]
    fixed: list[Proc]  # Redis and the sandbox: sampled, never stopped by the soak
    stop: threading.Event = field(default_factory=threading.Event)
    kills: list[tuple[int, float]] = field(default_factory=list)  # (pid, when)
    redis_restarts: list[float] = field(default_factory=list)
    push_expected: set[str] = field(default_factory=set)
    push_sent: int = 0
    push_refused: int = 0
    good: set[str] = field(default_factory=set)  # receipts published (not poison)
    malformed: int = 0
    published: int = 0  # messages, in chunks that went through whole
    publish_retries: int = 0  # batches refused by a fault (sent again, fresh)
    published_all: threading.Event = field(default_factory=threading.Event)
    began: float = field(default_factory=time.monotonic)

    @property
    def records(self) -> Path:
        return self.tmp / "applied.jsonl"


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


def key_of(message_type: str, obj: Any) -> str:
    """The identity the recording handler writes for a receipt object."""
    return business_key(parse_object(message_type, obj, ReceiptMeta("soak")))


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


def read_applied(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [r for r in (json.loads(line) for line in f if line.strip())
                if r["what"] == "applied"]


def twice(applied: list[dict[str, Any]], kills: list[tuple[int, float]]) -> tuple[int, int]:
    """Repeated applications of one receipt: (inside the crash window, outside it).

    Inside: the earlier application's process was killed (kill -9) between that application
    and the next one, so its completion may not have been recorded: the one window the
    README admits. Anything else is outside.
    """
    killed_at: dict[int, float] = dict(kills)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for record in applied:
        by_key.setdefault(str(record["key"]), []).append(record)
    inside = outside = 0
    for records in by_key.values():
        records.sort(key=lambda r: float(r["t"]))
        for first, again in itertools.pairwise(records):
            k = killed_at.get(int(first["pid"]))
            if k is not None and float(first["t"]) <= k <= float(again["t"]):
                inside += 1
            else:
                outside += 1
    return inside, outside


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
    kinds = Counter(_letter_kind(d, poison) for d in letters)
    poison_lettered = {k for d in letters if (k := _letter_key(d)) in poison}
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


def _letter_key(letter: DeadLetter) -> str | None:
    """The identity of a dead-lettered receipt; None when its body does not decode."""
    try:
        text = (base64.b64decode(letter.raw_body).decode("utf-8") if letter.source == "mns"
                else letter.raw_body)
        return key_of(letter.message_type or "SmsReport", json.loads(text))
    except (ValueError, DecodeError):
        return None


def _letter_kind(letter: DeadLetter, poison: set[str]) -> str:
    key = _letter_key(letter)
    if key is None:
        return "malformed"
    return "poison" if key in poison else "other"


#: RSS "at start" is the first sample this long after the run began (imports done, warm).
WARM_S = 15.0


def _rss(proc: Proc, began: float) -> dict[str, int]:
    warm = [s for s in proc.rss_kb if s[2] >= began + WARM_S] or proc.rss_kb
    if not warm:
        return {}
    return {"start_kb": warm[0][1], "end_kb": proc.rss_kb[-1][1],
            "incarnations": proc.incarnations}


def goals_met(report: dict[str, Any]) -> bool:
    """Nothing lost, nothing applied twice outside the crash window, the dead letters only
    (and all) the poison and the malformed bodies."""
    return (report["lost"] == 0 and report["applied_twice_outside_crash_window"] == 0
            and report["poison_applied"] == 0 and report["dead_letters_other"] == 0
            and report["poison_without_dead_letter"] == 0
            and report["dead_letters_malformed"] >= report["malformed_published"])


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


def markdown(report: dict[str, Any]) -> str:
    """The README's table of one report."""
    rows = [
        ("SmsReport messages published (duplicates, malformed, poison included)",
         report["published_mns_messages"]),
        ("publish batches refused by a fault and sent again",
         report["publish_batches_resent"]),
        ("distinct receipts published through MNS / pushed", "%d / %d" % (
            report["published_receipts"], report["pushed_receipts"])),
        ("applications recorded (fsync each)", report["applied"]),
        ("lost (goal 0)", report["lost"]),
        ("applied twice outside the crash window (goal 0)",
         report["applied_twice_outside_crash_window"]),
        ("applied twice inside the crash window (counted)",
         report["applied_twice_inside_crash_window"]),
        ("dead letters: poison / malformed / anything else (goal 0)", "%d / %d / %d" % (
            report["dead_letters_poison"], report["dead_letters_malformed"],
            report["dead_letters_other"])),
        ("poison / malformed published", "%d / %d" % (
            report["poison_published"], report["malformed_published"])),
        ("kill -9 of a worker / Redis restarts", "%d / %d" % (
            report["kills"], report["redis_restarts"])),
        ("duration", "%.0f s" % report["duration_s"]),
    ]
    lines = ["| | |", "|---|---:|", *("| %s | %s |" % row for row in rows), "",
             "| process | RSS at start | RSS at end | starts |", "|---|---:|---:|---:|"]
    for name, rss in report["rss_kb"].items():
        if rss:
            lines.append("| %s | %.1f MB | %.1f MB | %d |" % (
                name, rss["start_kb"] / 1024, rss["end_kb"] / 1024, rss["incarnations"]))
    return "\n".join(lines)


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
