"""Handlers written to misbehave (slow, hung, killing their process), and the check that no
two runs of one receipt ever overlap in time.

`Stamper` appends a `start` line before its work and an `end` line after it (JSONL, one
write with O_APPEND + fsync each, wall-clock `t`). While a run is on, a marker file named
after the receipt holds the pid of its process; a run that starts while the marker names a
live process (another worker, or the same one) appends an `overlap` line. A marker left by a
process that died is stale, not an overlap: its run ended with the process.

What a run does between its stamps is chosen per receipt by the options (keys are
`consumer.keys.business_key`, e.g. "SmsReport:<biz_id>:<phone>"):
  sleep_s       sleep this long (every receipt)
  hang_keys     never return (sleep an hour); `hang_every` N: the receipts `hangs(key, N)` picks
  exit_keys     os._exit(9): the whole process dies in the handler
  leak_mb       keep this many MiB alive for good on every call (a leak); every stamp
                carries the process's RSS in MiB (`rss_mb`)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consumer import Receipt
from consumer.keys import business_key

HANG_S = 3600.0
_LEAKED: list[bytearray] = []


class Stamper:
    name = "stamper"

    def __init__(self, path: str, markers: str, sleep_s: float = 0.0,
                 hang_keys: Sequence[str] = (), hang_every: int = 0,
                 exit_keys: Sequence[str] = (), leak_mb: int = 0) -> None:
        self._path = path
        self._markers = Path(markers)
        self._markers.mkdir(parents=True, exist_ok=True)
        self._sleep_s = sleep_s
        self._hang = frozenset(hang_keys)
        self._hang_every = hang_every
        self._exit = frozenset(exit_keys)
        self._leak_mb = leak_mb

    def handle(self, receipt: Receipt) -> None:
        key = business_key(receipt)
        marker = self._markers / hashlib.sha1(key.encode()).hexdigest()
        self._stamp("start", receipt, key)
        if not _claim_marker(marker):
            self._stamp("overlap", receipt, key)
        if key in self._exit:
            os._exit(9)
        if key in self._hang or hangs(key, self._hang_every):
            time.sleep(HANG_S)
        if self._sleep_s:
            time.sleep(self._sleep_s)
        if self._leak_mb:
            leak = bytearray(self._leak_mb << 20)
            leak[::4096] = b"x" * len(range(0, len(leak), 4096))  # every page touched
            _LEAKED.append(leak)
        self._stamp("end", receipt, key)
        marker.unlink(missing_ok=True)

    def _stamp(self, what: str, receipt: Receipt, key: str) -> None:
        line = json.dumps({"what": what, "key": key, "t": time.time(), "pid": os.getpid(),
                           "rss_mb": _rss_mb(),
                           "out_id": receipt.raw.get("out_id"),
                           "message_id": receipt.meta.message_id,
                           "dequeue_count": receipt.meta.dequeue_count}) + "\n"
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def hangs(key: str, every: int) -> bool:
    """About one receipt in `every` (by a hash of its key), none for 0."""
    digest = hashlib.sha1(key.encode()).digest()
    return every > 0 and int.from_bytes(digest[:4], "big") % every == 0


def _claim_marker(marker: Path) -> bool:
    """Writes our pid into the marker; False when a live process holds it already."""
    for _ in range(3):
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = int(marker.read_text() or "0")
            except (OSError, ValueError):
                holder = 0
            if holder and _alive(holder):
                return False
            marker.unlink(missing_ok=True)  # left by a process that died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _alive(pid: int) -> bool:
    """True for a running process (a zombie, dead but not yet reaped, is not)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def read_stamps(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


class Stamps:
    """What the stamper wrote, read back."""

    def __init__(self, path: Path) -> None:
        self.lines = read_stamps(path)

    def of(self, what: str) -> list[dict[str, Any]]:
        return [s for s in self.lines if s["what"] == what]

    def ended(self) -> dict[str, int]:
        """Key -> how many runs of it finished (were applied)."""
        counts: dict[str, int] = defaultdict(int)
        for s in self.of("end"):
            counts[s["key"]] += 1
        return dict(counts)

    def started(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for s in self.of("start"):
            counts[s["key"]] += 1
        return dict(counts)

    def assert_no_overlap(self) -> None:
        """No run of a receipt started while another run of it was alive."""
        overlaps = self.of("overlap")
        assert not overlaps, "runs overlapped: %s" % overlaps[:5]
