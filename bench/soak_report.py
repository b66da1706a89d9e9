"""Counting and judging a finished soak (bench/soak.py): what the recording handler applied,
what was dead-lettered, whether the goals hold, and the README's table of a report.

A receipt's identity is its business key (`consumer.keys.business_key`), the one the recording
handler (tests.e2e.recording:Recorder) writes with each application; the soak's publisher and
pusher note the same key for what they send, so lost and repeated receipts are set and
counter arithmetic over keys. Nothing here talks to a process or to Redis.
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Any

from consumer.errors import DecodeError
from consumer.keys import business_key
from consumer.pipeline.deadletter import DeadLetter
from consumer.pipeline.decode import parse_object
from consumer.receipts import ReceiptMeta

__all__ = ["goals_met", "key_of", "letter_key", "letter_kind", "markdown", "read_applied",
           "twice"]


def key_of(message_type: str, obj: Any) -> str:
    """The identity the recording handler writes for a receipt object."""
    return business_key(parse_object(message_type, obj, ReceiptMeta("soak")))


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


def letter_key(letter: DeadLetter) -> str | None:
    """The identity of a dead-lettered receipt; None when its body does not decode."""
    try:
        text = (base64.b64decode(letter.raw_body).decode("utf-8") if letter.source == "mns"
                else letter.raw_body)
        return key_of(letter.message_type or "SmsReport", json.loads(text))
    except (ValueError, DecodeError):
        return None


def letter_kind(letter: DeadLetter, poison: set[str]) -> str:
    """"poison" (one of `poison`), "malformed" (its body does not decode) or "other"."""
    key = letter_key(letter)
    if key is None:
        return "malformed"
    return "poison" if key in poison else "other"


def goals_met(report: dict[str, Any]) -> bool:
    """Nothing lost, nothing applied twice outside the crash window, the dead letters only
    (and all) the poison and the malformed bodies."""
    return (report["lost"] == 0 and report["applied_twice_outside_crash_window"] == 0
            and report["poison_applied"] == 0 and report["dead_letters_other"] == 0
            and report["poison_without_dead_letter"] == 0
            and report["dead_letters_malformed"] >= report["malformed_published"])


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
