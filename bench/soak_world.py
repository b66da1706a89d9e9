"""The soak's plan, its processes and the state its threads share (bench/soak.py runs them).

`SoakPlan` is what one run does (the defaults are `make soak`'s); `Proc` is one long-running
process, started again after each kill and sampled for its RSS; `World` is what the load,
fault and sampling threads write and the end's count reads (bench/soak_report.py).
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from alicom_sandbox.redis_server import RedisServer
from alicom_sandbox.testing import SandboxHandle
from bench.common import rss_kb, stop_process

__all__ = ["REPO", "Proc", "SoakPlan", "World"]

REPO = Path(__file__).resolve().parent.parent


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
        """Its exit status (SIGTERM, then SIGKILL after 60 s); None if it never started."""
        return None if self.proc is None else stop_process(self.proc)


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
