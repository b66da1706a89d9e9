"""`redis-stream`: XADD each receipt to a Redis stream for other services to consume.

Exactly-once under kill -9: one Lua script call per receipt (a batch in one round trip) checks
each receipt's completion
record (`{<stream>}:done:<dedup key>`), adds the entry and writes the record, so a receipt
delivered again (a platform duplicate, a redelivery after the worker died at any moment,
the script having run or not) never adds a second entry. A script runs whole in Redis;
an XADD the server refuses writes no record, so that receipt is retried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis
import structlog

from consumer.clients.redis_client import connect_option, redis_error_text
from consumer.clients.redis_scripts import ScriptCall, run_calls
from consumer.handler_api import BatchResult
from consumer.handlers import (
    receipt_json,
    redis_retry,
    require_number,
    require_text,
    sink_key_function,
)
from consumer.receipts import Receipt

log = structlog.get_logger(__name__)

_EIGHT_DAYS_S = 8 * 24 * 3600.0  # past the dedup records' default week

# One call per receipt, its keys in KEYS written literally (Tair proxy rule), both in the
# stream's slot: see consumer.clients.redis_scripts.
# KEYS[1] the stream, KEYS[2] the receipt's completion record. ARGV: maxlen, record TTL (ms),
# type, doc, message_id, dedup key. Returns "+<entry id>", "=" (recorded before: nothing
# added) or "!<error>" (refused: no record, retry it).
_ADD_ONCE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return '=' end
local id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[3],
                       'doc', ARGV[4], 'message_id', ARGV[5], 'key', ARGV[6])
if type(id) == 'table' and id.err then return '!' .. id.err end
redis.call('SET', KEYS[2], id, 'PX', ARGV[2])
return '+' .. id
"""


class RedisStreamHandler:
    """Adds one stream entry per receipt to `stream`, one script call per batch.

    Entry fields: `type` (message type), `doc` (`Receipt.to_dict()` as JSON), `message_id`
    (the MNS MessageId, "" for push) and `key` (the dedup key: downstream consumers can
    rely on it being unique per receipt). The stream is capped with an approximate
    `MAXLEN ~ maxlen`. Each receipt's completion record lives `done_ttl_s` (default 8 days,
    past the dedup records' week; about 100 bytes each). `dedup_keys`: only when the config
    overrides `[dedup_keys]`, the same table. An entry the server refuses is retried alone;
    a connection failure retries the whole batch. The URL (which may hold a password) never
    appears in errors or logs.
    """

    name = "redis-stream"
    types: tuple[str, ...] | None = None

    def __init__(self, url: str, stream: str = "alicom:receipts", maxlen: int = 1_000_000,
                 timeout_s: float = 5.0, done_ttl_s: float = _EIGHT_DAYS_S,
                 dedup_keys: Mapping[str, Sequence[str]] | None = None) -> None:
        require_text(self.name, "stream", stream)
        require_number(self.name, "maxlen", maxlen, at_least=1, whole=True)
        require_number(self.name, "timeout_s", timeout_s, above=0)
        require_number(self.name, "done_ttl_s", done_ttl_s, at_least=1)
        self._client = connect_option("redis-stream handler", url, timeout_s)
        self._stream = stream
        self._maxlen = maxlen
        self._ttl_ms = int(done_ttl_s * 1000)
        self._key_of = sink_key_function(dedup_keys)
        self._add_once = self._client.register_script(_ADD_ONCE)

    def handle_batch(self, receipts: Sequence[Receipt]) -> BatchResult:
        """Adds the batch's new receipts in one round trip; refused entries are retried."""
        calls = []
        for receipt in receipts:
            key = self._key_of(receipt)
            calls.append(ScriptCall(self._add_once, [self._stream, self.done_key(key)], [
                self._maxlen, self._ttl_ms, receipt.message_type, receipt_json(receipt),
                receipt.meta.message_id, key]))
        try:
            replies = run_calls(self._client, calls)
        except redis.RedisError as exc:
            raise redis_retry(f"redis stream {self._stream}", exc, self._client) from exc
        result = BatchResult()
        repeats = 0
        for receipt, reply in zip(receipts, replies, strict=True):
            if isinstance(reply, Exception):  # refused before the script ran
                text = "!" + redis_error_text(reply, self._client)
            else:
                text = reply.decode() if isinstance(reply, bytes) else str(reply)
            if text.startswith("!"):
                result.retry(receipt, f"redis stream {self._stream}: {text[1:]}")
            repeats += text == "="
        if repeats:  # receipts it had added before: the repeats this sink exists to absorb
            log.info("sink_repeats_skipped", handler=self.name, count=repeats)
        return result

    def done_key(self, dedup_key: str) -> str:
        """The completion record of one receipt in this stream (no phone number in it).

        `{<stream>}` is a hash tag: on a Redis Cluster the records sit in the stream's slot,
        so one script may touch them all."""
        return f"{{{self._stream}}}:done:{dedup_key}"

    def close(self) -> None:
        """Closes the connection pool."""
        self._client.close()
