"""The Lua scripts behind :mod:`cascade.resilience.shared`, run atomically by Redis.

Every script reads the time from Redis (``TIME``), never from the caller: replicas on
different hosts then agree on "now" whatever their clocks say. Floats travel as strings
(Redis truncates Lua numbers to integers in replies).
"""

from __future__ import annotations

from typing import Final

__all__ = ["BREAKER_LUA", "LIMIT_LUA"]

# GCRA ("generic cell rate algorithm"), the token bucket kept as one number per budget:
# the theoretical arrival time (TAT) at which the bucket would be full again. A budget of
# ``rate`` units per second holding ``burst_s`` seconds of refill has emission interval
# T = 1 / rate and tolerance tau = burst_s; its level is (tau - (TAT - now)) / T units.
# A cost ``c`` fits when TAT + min(c * T, tau) - tau <= now (an oversized request waits
# for a full bucket, then runs it into debt, exactly as the in-memory Bucket does).
#
# KEYS[1]  the provider's hash {prefix}:limit:{provider}; fields requests, tokens (TATs)
#          and blocked (a 429's retry-after, shared by every replica)
# ARGV[1]  "take": check both budgets (and the block) and charge both only if both fit;
#                   returns "0" when granted, else the seconds to wait, as a string
#          "adjust": charge (or, negative, refund) unconditionally; a refund never fills a
#                   bucket past full
#          "block": ARGV[2] seconds from now nobody is admitted
# ARGV[2..4] requests: T (0 = not limited), tau, cost;  ARGV[5..7] tokens: the same
LIMIT_LUA: Final = """
local key = KEYS[1]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end
local function expire()
  local far = now
  for _, v in ipairs(redis.call('HMGET', key, 'requests', 'tokens', 'blocked')) do
    local x = tonumber(v)
    if x ~= nil and x > far then far = x end
  end
  redis.call('PEXPIRE', key, math.ceil((far - now) * 1000) + 1000)
end
if op == 'block' then
  local block_until = now + tonumber(ARGV[2])
  local old = tonumber(redis.call('HGET', key, 'blocked'))
  if old == nil or old < block_until then
    redis.call('HSET', key, 'blocked', fmt(block_until))
  end
  expire()
  return '0'
end
local fields = {'requests', 'tokens'}
local wait = 0
if op == 'take' then
  local blocked = tonumber(redis.call('HGET', key, 'blocked'))
  if blocked ~= nil and blocked - now > wait then wait = blocked - now end
end
local tats = {}
for i = 1, 2 do
  local interval = tonumber(ARGV[3 * i - 1])
  if interval > 0 then
    local tat = tonumber(redis.call('HGET', key, fields[i]))
    if tat == nil or tat < now then tat = now end
    tats[i] = tat
    if op == 'take' then
      local tau = tonumber(ARGV[3 * i])
      local cost = tonumber(ARGV[3 * i + 1])
      local w = tat + math.min(cost * interval, tau) - tau - now
      if w > wait then wait = w end
    end
  end
end
if wait > 0.000001 then return fmt(wait) end
for i = 1, 2 do
  if tats[i] ~= nil then
    local interval = tonumber(ARGV[3 * i - 1])
    local cost = tonumber(ARGV[3 * i + 1])
    redis.call('HSET', key, fields[i], fmt(math.max(now, tats[i] + cost * interval)))
  end
end
expire()
return '0'
"""

# A breaker's shared record. KEYS[1] is the hash {prefix}:breaker:{provider}: state
# ("open" / "closed"), open_until (Redis time), epoch (bumped on every published
# transition, so a replica applies each one once) and failures (consecutive, across
# every replica).
#
# ARGV[1]  "fail": count a failure; at ARGV[2] (fail_max) the breaker opens for ARGV[3]
#                  seconds. While it is open already the failure is not counted: the
#                  reply tells the caller to open too.
#          "open": a replica's breaker opened on its own (a failed probe): publish it
#          "close": a replica's probe succeeded: publish closed
#          "ok": a success: the consecutive count starts again
# Returns {state, epoch, seconds until half-open (string), failures}.
BREAKER_LUA: Final = """
local key = KEYS[1]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end
local state = redis.call('HGET', key, 'state')
local open_until = tonumber(redis.call('HGET', key, 'open_until')) or 0
local epoch = tonumber(redis.call('HGET', key, 'epoch')) or 0
if op == 'ok' then
  if redis.call('HEXISTS', key, 'failures') == 1 then
    redis.call('HSET', key, 'failures', 0)
  end
  return {'ok', epoch, '0', 0}
end
if op == 'fail' then
  if state == 'open' and open_until > now then
    return {'open', epoch, fmt(open_until - now), 0}
  end
  local n = redis.call('HINCRBY', key, 'failures', 1)
  if n < tonumber(ARGV[2]) then
    redis.call('EXPIRE', key, 86400)
    return {'counted', epoch, '0', n}
  end
  op = 'open'
end
epoch = redis.call('HINCRBY', key, 'epoch', 1)
if op == 'open' then
  local until_ = math.max(open_until, now + tonumber(ARGV[3]))
  redis.call('HSET', key, 'state', 'open', 'open_until', fmt(until_), 'failures', 0)
  redis.call('EXPIRE', key, 86400)
  return {'open', epoch, fmt(until_ - now), 0}
end
redis.call('HSET', key, 'state', 'closed', 'open_until', 0, 'failures', 0)
redis.call('EXPIRE', key, 86400)
return {'closed', epoch, '0', 0}
"""
