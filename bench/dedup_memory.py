"""Bytes of Redis memory per idempotency record, for the store's format and the alternatives.

Starts its own redis-server (tests/redis_server.py), then for each layout writes N records
(default 100k) with realistic keys and reports, as the median over several runs:

* ``MEMORY USAGE`` of one record (key + value + dict entry; not the expiry entry), and
* the ``INFO memory`` ``used_memory`` delta divided by N (everything: the expiry entry and
  the amortised hash tables of the keyspace included), which is what capacity planning needs.

The rows marked "store" are written through ``RedisDedupStore`` itself, so they measure
exactly what the daemon stores, for 1 handler and for 3 (completion per handler: a retry
caused by one of them leaves a PARTIAL record naming the two that finished, which a later
claim and completion turn into the same COMPLETED record); the other rows are the layouts
it was chosen over.

    .venv/bin/python bench/dedup_memory.py [--records 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

# Run as a script from anywhere: the project root holds `consumer` and `tests`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alicom_sandbox.redis_server import running_redis
from consumer.handler_api import handler_tag
from consumer.pipeline.dedup import DedupSettings, RedisDedupStore

LEASE_S = 60.0
COMPLETED_TTL_S = 7 * 24 * 3600.0
BATCH = 1000  # keys per script call or pipeline while filling
PREFIX = DedupSettings().key_prefix


def dedup_key(i: int) -> str:
    """A key of consumer.keys' shape: "SmsReport:" + 32 hex characters of a keyed hash."""
    return "SmsReport:" + hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest()


#: Two of three handlers finished: the tags a PARTIAL record holds after the third failed.
TWO_OF_THREE = frozenset({handler_tag("postgres"), handler_tag("redis-stream")})


OWNER = uuid.uuid4().hex  # 32 characters: a uuid4 per received batch


@dataclass(frozen=True)
class Layout:
    name: str
    write: Callable[[redis.Redis, Sequence[str]], None]


def _store_in_progress(client: redis.Redis, keys: Sequence[str]) -> None:
    RedisDedupStore(client, DedupSettings()).claim(keys, OWNER, LEASE_S)


def _store_completed(client: redis.Redis, keys: Sequence[str]) -> None:
    store = RedisDedupStore(client, DedupSettings())
    store.claim(keys, OWNER, LEASE_S)
    store.complete(keys, OWNER, COMPLETED_TTL_S)


def _store_partial(client: redis.Redis, keys: Sequence[str]) -> None:
    """3 handlers, one failed: released with the two that finished."""
    store = RedisDedupStore(client, DedupSettings())
    store.claim(keys, OWNER, LEASE_S)
    store.release(keys, OWNER, [TWO_OF_THREE] * len(keys), COMPLETED_TTL_S)


def _store_reclaimed(client: redis.Redis, keys: Sequence[str]) -> None:
    """3 handlers: the redelivery after that retry, claimed (only the third runs)."""
    _store_partial(client, keys)
    RedisDedupStore(client, DedupSettings()).claim(keys, OWNER + "2", LEASE_S)


def _store_completed_after_retry(client: redis.Redis, keys: Sequence[str]) -> None:
    """3 handlers: the third finished on the redelivery."""
    _store_reclaimed(client, keys)
    RedisDedupStore(client, DedupSettings()).complete(keys, OWNER + "2", COMPLETED_TTL_S)


def _strings(value: str, ttl_ms: int) -> Callable[[redis.Redis, Sequence[str]], None]:
    def write(client: redis.Redis, keys: Sequence[str]) -> None:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(PREFIX + key, value, px=ttl_ms)
            pipe.execute()
    return write


def _hashes(mapping: dict[str, str], ttl_ms: int) -> Callable[[redis.Redis, Sequence[str]], None]:
    def write(client: redis.Redis, keys: Sequence[str]) -> None:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hset(PREFIX + key, mapping=mapping)  # type: ignore[arg-type]  # str values are valid; redis-py's stub is too narrow
                pipe.pexpire(PREFIX + key, ttl_ms)
            pipe.execute()
    return write


_WEEK_MS = int(COMPLETED_TTL_S * 1000)
_LEASE_MS = int(LEASE_S * 1000)
LAYOUTS = [
    Layout('store: COMPLETED  "1" PX (1 handler)', _store_completed),
    Layout('store: COMPLETED  "1" PX (3, after a retry)', _store_completed_after_retry),
    Layout('store: INPROGRESS "I:<owner>" PX', _store_in_progress),
    Layout('store: PARTIAL    "P:<2 tags>" PX (3 handlers)', _store_partial),
    Layout('store: INPROGRESS "I:<owner>@<ms>/<2 tags>"', _store_reclaimed),
    Layout('alt: COMPLETED  "C" PX', _strings("C", _WEEK_MS)),
    Layout("alt: COMPLETED  hash {s: C} PX", _hashes({"s": "C"}, _WEEK_MS)),
    Layout("alt: INPROGRESS hash {s: I, o: <owner>} PX",
           _hashes({"s": "I", "o": OWNER}, _LEASE_MS)),
]


def measure(client: redis.Redis, layout: Layout, records: int) -> tuple[int, float]:
    """(MEMORY USAGE of one record, used_memory delta per record) for one fresh fill."""
    client.flushall()
    before = int(client.info("memory")["used_memory"])
    keys = [dedup_key(i) for i in range(records)]
    for start in range(0, records, BATCH):
        layout.write(client, keys[start:start + BATCH])
    after = int(client.info("memory")["used_memory"])
    assert client.dbsize() == records, "records went missing while filling"
    probes = [keys[i] for i in range(0, records, max(1, records // 101))]
    usage = statistics.median(int(client.memory_usage(PREFIX + key, samples=0) or 0)
                              for key in probes)
    return int(usage), (after - before) / records


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args(argv)
    with running_redis() as server:
        client = server.client()
        version = client.info("server")["redis_version"]
        print(f"redis {version}, {options.records} records, median of {options.runs} runs, "
              f"key e.g. {PREFIX}{dedup_key(0)} ({len(PREFIX + dedup_key(0))} bytes), "
              f"owner {len(OWNER)} chars")
        print()
        print(f"| {'layout':<48} | MEMORY USAGE B | used_memory B/record |")
        print(f"|{'-' * 50}|---------------:|---------------------:|")
        for layout in LAYOUTS:
            runs = [measure(client, layout, options.records) for _ in range(options.runs)]
            usage = statistics.median(run[0] for run in runs)
            per_record = statistics.median(run[1] for run in runs)
            print(f"| {layout.name:<48} | {usage:>14.0f} | {per_record:>20.1f} |")
        client.flushall()
        client.close()


if __name__ == "__main__":
    main()
