"""The Lua scripts of the dedup store (consumer.pipeline.dedup), one per transition.

Each call handles one record: its key is KEYS[1], written literally (the rule of Tair's
cluster proxy and of a Redis Cluster, see consumer.clients.redis_scripts); a batch is one
pipeline of calls, one round trip (per node on a cluster).

Record values (see dedup.py's docstring for why they are plain strings):

* ``"1"``: COMPLETED (every handler finished), PX = the retention.
* ``"I:<owner>"``: INPROGRESS, PX = the lease (an orphan disappears with it).
* ``"P:<tags>"``: some handlers finished (``<tags>``: their `handler_tag`s, comma-separated),
  the others failed: a retry or a dead letter. PX = the retention. ``"P:"`` (no tags) is a
  bare release: nothing finished, but the delivery ended with an outcome (a retry, a hand
  back), which tells a re-delivery from one after a crash (consumer.pipeline.poison); it
  answers every transition as an absent record would.
* ``"I:<owner>@<deadline ms>/<tags>"``: INPROGRESS over a ``P:`` record. It keeps the
  record's TTL (KEEPTTL) so that the finished handlers are not forgotten when the lease
  ends: the lease is the deadline (server time), and a claim past it takes the record over.

ARGV[1] is always the owner token, which never holds ``@`` or ``/`` (the store checks).

`CLAIM_MANY` and `COMPLETE_MANY` are the same transitions over a whole batch in one call,
for a single Redis only (a standalone server or a Sentinel-watched primary): their keys are
read in a loop (``KEYS[i]``) and lie in many slots, which a Redis Cluster and Tair's proxy
refuse. They are made from the per-key text (`_many`), so the two can never differ.
"""

from __future__ import annotations

import re

# `ours(v)` is true for our INPROGRESS record in either form; `parts(v)` splits
# "I:<owner>@<deadline>/<tags>" (nil for any other value).
_COMMON = """
local owner = ARGV[1]
local mine = 'I:' .. owner
local function parts(v)
  local o, d, t = string.match(v, '^I:([^@/]*)@(%d+)/(.*)$')
  if o then return o, tonumber(d), t end
  return nil
end
local function ours(v)
  if v == mine then return true end
  local o = parts(v)
  return o == owner
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# ARGV[2] lease ms; ARGV[3] '1' when KEYS[2] is the record's legacy name (from before keys
# were hashed), read when KEYS[1] is absent and never written. Returns {code, tags, settled}:
# code 1 claimed, 2 in progress elsewhere, 3 completed; tags "" when none finished before;
# settled 1 when the claim found a release (P:) or our own claim, 0 when it found nothing or
# an orphan (the previous delivery's process died, or never got that far).
CLAIM = _COMMON + """
local lease_ms = tonumber(ARGV[2])
local value = redis.call('GET', KEYS[1])
if not value and ARGV[3] == '1' then
  value = redis.call('GET', KEYS[2])  -- completed ('1') or claimed by an old process
end
if not value then
  redis.call('SET', KEYS[1], mine, 'PX', lease_ms)
  return {1, '', 0}
end
if value == mine then
  redis.call('PEXPIRE', KEYS[1], lease_ms)  -- an idempotent re-claim renews the lease
  return {1, '', 1}
end
if value == '1' then return {3, ''} end
local o, deadline, tags = parts(value)
local settled = 0
if string.sub(value, 1, 2) == 'P:' then
  tags, settled = string.sub(value, 3), 1
elseif not o or (o ~= owner and deadline > now_ms()) then
  return {2, '', 0}  -- a live claim of someone else
end
redis.call('SET', KEYS[1], mine .. '@' .. (now_ms() + lease_ms) .. '/' .. tags, 'KEEPTTL')
return {1, tags, settled}
"""

# ARGV[2] retention ms. 1 recorded, 2 already completed, 0 lost (someone else's live claim:
# that delivery settles the receipt, nothing is written over it). Whatever no live claim
# holds is completed too: absent (our lease expired and nobody took it over), released
# ("P:", or "P:<tags>" by a later delivery that failed a handler), or a claim over finished
# handlers whose deadline passed (its owner died or lost its lease too). Our handlers did
# apply the receipt, so recording that prevents a re-run on the next delivery.
COMPLETE = _COMMON + """
local value = redis.call('GET', KEYS[1])
if value == '1' then return 2 end
if value and not ours(value) and string.sub(value, 1, 2) ~= 'P:' then
  local o, deadline = parts(value)
  if not o or deadline > now_ms() then return 0 end
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
return 1
"""

# ARGV[2] retention ms, ARGV[3] the tags of the finished handlers ("": a bare "P:" is left
# for ARGV[4] ms, or the record goes without ARGV[4]). 1 released, 0 not ours.
RELEASE = _COMMON + """
local value = redis.call('GET', KEYS[1])
if not (value and ours(value)) then return 0 end
if ARGV[3] == '' and ARGV[4] then
  redis.call('SET', KEYS[1], 'P:', 'PX', ARGV[4])
elseif ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], 'P:' .. ARGV[3], 'PX', ARGV[2])
end
return 1
"""

# ARGV[2] lease ms. 1 renewed, 0 not ours. An absent record is taken back: our lease lapsed
# (a renewal Redis could not take in time, a restart that lost it) and nobody claimed it
# since, as the claim would take it; every outcome leaves a record ("1", "P:..."), so absent
# never means that this delivery (or another) finished with it.
EXTEND = _COMMON + """
local lease_ms = tonumber(ARGV[2])
local value = redis.call('GET', KEYS[1])
if value == mine or not value then
  redis.call('SET', KEYS[1], mine, 'PX', lease_ms)
  return 1
end
local o, _, tags = parts(value)
if o ~= owner then return 0 end
redis.call('SET', KEYS[1], mine .. '@' .. (now_ms() + lease_ms) .. '/' .. tags, 'KEEPTTL')
return 1
"""


def _many(per_key: str, keys_per_record: int) -> str:
    """`per_key` (a single-key script after `_COMMON`) run for every record of a batch: the
    body becomes a function of the record's index `i`, its `KEYS[1]` the record's key
    `KEYS[i]` and its `KEYS[2]` (a claim's legacy name, when ARGV[3] is '1') `KEYS[n + i]`;
    returns one reply per record, in order."""
    body = per_key.removeprefix(_COMMON)
    body = body.replace("KEYS[1]", "KEYS[i]").replace("KEYS[2]", "KEYS[n + i]")
    if re.search(r"KEYS\[\d", body):
        raise AssertionError("a batch script reads only KEYS[1] and KEYS[2] per record")
    records = "#KEYS" if keys_per_record == 1 else (
        "(ARGV[3] == '1' and #KEYS / 2 or #KEYS)")
    indented = "\n".join("  " + line if line else line for line in body.strip().split("\n"))
    return (_COMMON + "-- single Redis only: one call for the batch, its keys read in a loop\n"
            "local n = " + records + "\nlocal function one(i)\n" + indented + "\nend\n"
            "local out = {}\nfor i = 1, n do out[i] = one(i) end\nreturn out\n")


#: CLAIM over a batch: KEYS = the records' keys, then (ARGV[3] '1') their legacy names.
CLAIM_MANY = _many(CLAIM, 2)
#: COMPLETE over a batch: KEYS = the records' keys.
COMPLETE_MANY = _many(COMPLETE, 1)
