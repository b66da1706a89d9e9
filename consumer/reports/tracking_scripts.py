"""The send tracker's Lua scripts (`consumer.reports.tracking`).

Every key is under the tracked sends' hash tag (one cluster slot per call). All but one name
their keys literally as ``KEYS[n]`` (the rule of `consumer.clients.redis_scripts`);
`CLEAR_ON_DAY_AND_SETTLE_MANY` reads them by index to take a whole batch in one call, which
a Redis Cluster accepts (one slot) and a proxy that checks scripts as text may refuse: the
tracker then sends `CLEAR_ON_DAY_AND_SETTLE` once per group instead.
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

# Clearing sends and settling their task numbers in one call per BizId and send day, when
# the task keys share the tracked sends' slot (the default): CLEAR, then consumer.reports
# .tasks' settle script, over each receipt (kept literal: scripts are checked as text).
# KEYS[1] the sorted set, KEYS[2] the send day's out_id hash, KEYS[3] t:<biz>, KEYS[4]
# n:<biz>. ARGV: now, ttl, then per receipt: member, number, 'd' | 'f', err_code, reason.
# Per receipt 1 when its send was cleared, else 0.
CLEAR_AND_SETTLE = """
local out, moved = {}, false
for i = 3, #ARGV, 5 do
  local removed = redis.call('ZREM', KEYS[1], ARGV[i])
  if removed == 1 then redis.call('HDEL', KEYS[2], ARGV[i]) end
  out[#out + 1] = removed
  if redis.call('HGET', KEYS[4], ARGV[i + 1]) == 'p' then
    moved = true
    if ARGV[i + 2] == 'd' then
      redis.call('HSET', KEYS[4], ARGV[i + 1], 'd')
      redis.call('HINCRBY', KEYS[3], 'delivered', 1)
    else
      redis.call('HSET', KEYS[4], ARGV[i + 1], 'f' .. ARGV[i + 3])
      redis.call('HINCRBY', KEYS[3], 'failed', 1)
      redis.call('HINCRBY', KEYS[3], 'fail:' .. ARGV[i + 3], 1)
      redis.call('HINCRBY', KEYS[3], 'why:' .. ARGV[i + 4], 1)
    end
  end
end
if moved then
  redis.call('HSET', KEYS[3], 'updated', ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
return out
"""

# The same in one round trip, with the send day guessed from the receipts' send time: a
# send tracked on another day is left for a second call (CLEAR) with its day's hash.
# KEYS as above, KEYS[2] the guessed day's hash. ARGV: now, ttl, the guessed day's first and
# after-last second (epoch), then per receipt as above. Per receipt 1 when its send was
# cleared, 0 when it was not tracked, its score (a string) when sent on another day.
CLEAR_ON_DAY_AND_SETTLE = """
local out, moved = {}, false
local first, after = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 5, #ARGV, 5 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not score then
    out[#out + 1] = 0
  elseif tonumber(score) >= first and tonumber(score) < after then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = score
  end
  if redis.call('HGET', KEYS[4], ARGV[i + 1]) == 'p' then
    moved = true
    if ARGV[i + 2] == 'd' then
      redis.call('HSET', KEYS[4], ARGV[i + 1], 'd')
      redis.call('HINCRBY', KEYS[3], 'delivered', 1)
    else
      redis.call('HSET', KEYS[4], ARGV[i + 1], 'f' .. ARGV[i + 3])
      redis.call('HINCRBY', KEYS[3], 'failed', 1)
      redis.call('HINCRBY', KEYS[3], 'fail:' .. ARGV[i + 3], 1)
      redis.call('HINCRBY', KEYS[3], 'why:' .. ARGV[i + 4], 1)
    end
  end
end
if moved then
  redis.call('HSET', KEYS[3], 'updated', ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
return out
"""

# KEYS[1] the sorted set. ARGV: members. Their scores (send times), nil when not tracked.
SCORES = """
return redis.call('ZMSCORE', KEYS[1], unpack(ARGV))
"""

# CLEAR_ON_DAY_AND_SETTLE over every (send day, BizId) group of a batch: one call, one reply.
# KEYS[1] the sorted set, then per group its day's hash, t:<biz> and n:<biz>. ARGV: now,
# ttl, the group count, then per group: its day's first second (epoch), its receipt count,
# and per receipt: member, number, 'd' | 'f', err_code, reason. Per receipt, in order: as
# the per-group call.
CLEAR_ON_DAY_AND_SETTLE_MANY = """
-- one slot, keys by index: a batch's groups in one call (see the module docstring)
local out, a = {}, 4
for g = 1, tonumber(ARGV[3]) do
  local day, t, n = 3 * g - 1, 3 * g, 3 * g + 1
  local first, count = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local moved = false
  for i = a + 2, a + 1 + 5 * count, 5 do
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if not score then
      out[#out + 1] = 0
    elseif tonumber(score) >= first and tonumber(score) < first + 86400 then
      redis.call('ZREM', KEYS[1], ARGV[i])
      redis.call('HDEL', KEYS[day], ARGV[i])
      out[#out + 1] = 1
    else
      out[#out + 1] = score
    end
    if redis.call('HGET', KEYS[n], ARGV[i + 1]) == 'p' then
      moved = true
      if ARGV[i + 2] == 'd' then
        redis.call('HSET', KEYS[n], ARGV[i + 1], 'd')
        redis.call('HINCRBY', KEYS[t], 'delivered', 1)
      else
        redis.call('HSET', KEYS[n], ARGV[i + 1], 'f' .. ARGV[i + 3])
        redis.call('HINCRBY', KEYS[t], 'failed', 1)
        redis.call('HINCRBY', KEYS[t], 'fail:' .. ARGV[i + 3], 1)
        redis.call('HINCRBY', KEYS[t], 'why:' .. ARGV[i + 4], 1)
      end
    end
  end
  if moved then
    redis.call('HSET', KEYS[t], 'updated', ARGV[1])
    redis.call('EXPIRE', KEYS[t], ARGV[2])
    redis.call('EXPIRE', KEYS[n], ARGV[2])
  end
  a = a + 2 + 5 * count
end
return out
"""
