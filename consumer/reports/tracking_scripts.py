"""The send tracker's Lua scripts (`consumer.reports.tracking`).

Every key is under the tracked sends' hash tag (one cluster slot per call). All but one name
their keys literally as ``KEYS[n]`` (the rule of `consumer.clients.redis_scripts`);
`CLEAR_ON_DAY_AND_SETTLE_MANY` reads them by index to take a whole batch in one call, which
a Redis Cluster accepts (one slot) and a proxy that checks scripts as text may refuse: the
tracker then sends `CLEAR_ON_DAY_AND_SETTLE` once per group instead. Both are made from one
text (`_clear_on_day_and_settle`) with the keys written in, so the two can never differ.
"""

from __future__ import annotations

# Keys in KEYS only, written literally, all under the hash-tagged prefix (one slot per call):
# see consumer.clients.redis_scripts.
# KEYS[1] the sorted set. ARGV: cutoff (epoch s). Members sent before it go.
TRIM = """
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
"""

# KEYS[1] the sorted set, KEYS[2] the send day's out_id hash. ARGV: member, score, out_id,
# the day hash's EXPIREAT, the set's ttl (s). 1 when newly tracked, 0 when it was already
# (its first record is kept).
RECORD = """
local added = redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
if added == 1 and ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('EXPIREAT', KEYS[2], ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return added
"""

# KEYS[1] the sorted set, KEYS[2] the send day's out_id hash. ARGV: member. 1 when cleared.
CLEAR = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then redis.call('HDEL', KEYS[2], ARGV[1]) end
return removed
"""

# KEYS[1] the sorted set. ARGV: members. Their scores (send times), nil when not tracked.
SCORES = """
return redis.call('ZMSCORE', KEYS[1], unpack(ARGV))
"""


def _clear_on_day_and_settle(day: str, t: str, n: str) -> str:
    """The Lua that clears and settles one (send day, BizId) group, with its keys written as
    given (`day` the day's out_id hash, `t` t:<biz>, `n` n:<biz>; KEYS[1] is the sorted set).
    It reads the locals `first` (the day's first second, epoch) and `rows` (the group's
    receipts, decoded from JSON: [member, number, 'd'] for a delivery, [member, number, 'f',
    err_code, reason] for a failure: `SendTracker.settle_plan`), and appends one answer per
    receipt to `out`: 1 when its send was cleared, 0 when it was not tracked, its score (a
    string) when it was tracked on another day (left for CLEAR). A pending task number
    moves to its outcome (consumer.reports.tasks' settle script, over each receipt);
    ARGV[1] is now, ARGV[2] the task keys' ttl."""
    return f"""local moved = false
for _, row in ipairs(rows) do
  local score = redis.call('ZSCORE', KEYS[1], row[1])
  if not score then
    out[#out + 1] = 0
  elseif tonumber(score) >= first and tonumber(score) < first + 86400 then
    redis.call('ZREM', KEYS[1], row[1])
    redis.call('HDEL', {day}, row[1])
    out[#out + 1] = 1
  else
    out[#out + 1] = score
  end
  if redis.call('HGET', {n}, row[2]) == 'p' then
    moved = true
    if row[3] == 'd' then
      redis.call('HSET', {n}, row[2], 'd')
      redis.call('HINCRBY', {t}, 'delivered', 1)
    else
      redis.call('HSET', {n}, row[2], 'f' .. row[4])
      redis.call('HINCRBY', {t}, 'failed', 1)
      redis.call('HINCRBY', {t}, 'fail:' .. row[4], 1)
      redis.call('HINCRBY', {t}, 'why:' .. row[5], 1)
    end
  end
end
if moved then
  redis.call('HSET', {t}, 'updated', ARGV[1])
  redis.call('EXPIRE', {t}, ARGV[2])
  redis.call('EXPIRE', {n}, ARGV[2])
end
"""


# Clearing sends and settling their task numbers in one call per BizId and send day, when
# the task keys share the tracked sends' slot (the default). The day is the one the
# receipts' send time gives (or, read first, the one their sends were tracked on): a send
# tracked on another day is left for a second call (CLEAR) with its day's hash.
# KEYS[1] the sorted set, KEYS[2] the day's out_id hash, KEYS[3] t:<biz>, KEYS[4] n:<biz>.
# ARGV: now, ttl, the day's first second (epoch), the receipts as one JSON array of rows
# (above). Per receipt, in order: see `_clear_on_day_and_settle`.
CLEAR_ON_DAY_AND_SETTLE = (
    "local out, first, rows = {}, tonumber(ARGV[3]), cjson.decode(ARGV[4])\n"
    + _clear_on_day_and_settle("KEYS[2]", "KEYS[3]", "KEYS[4]") + "return out\n")


def _indented(lua: str) -> str:
    return "".join("  " + line if line.strip() else line for line in lua.splitlines(True))


# CLEAR_ON_DAY_AND_SETTLE over every (send day, BizId) group of a batch: one call, one reply.
# KEYS[1] the sorted set, then per group its day's hash, t:<biz> and n:<biz>. ARGV: now,
# ttl, then the groups as one JSON array, each [its day's first second (epoch), its rows].
# Per receipt, in order: as the per-group call.
CLEAR_ON_DAY_AND_SETTLE_MANY = (
    "-- one slot, keys by index: a batch's groups in one call (see the module docstring)\n"
    "local out = {}\n"
    "for g, group in ipairs(cjson.decode(ARGV[3])) do\n"
    "  local day, t, n = 3 * g - 1, 3 * g, 3 * g + 1\n"
    "  local first, rows = group[1], group[2]\n"
    + _indented(_clear_on_day_and_settle("KEYS[day]", "KEYS[t]", "KEYS[n]"))
    + "end\nreturn out\n")
