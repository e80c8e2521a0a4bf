"""The Lua scripts behind :mod:`cascade.resilience.shared`'s breakers and rate limits, run
atomically by Redis. (The spending budgets' script is ``_spend_script.py``'s, written to
the same rules.)

Every script reads the time from Redis (``TIME``), never from the caller: replicas on
different hosts then agree on "now" whatever their clocks say. Floats travel as strings
(Redis truncates Lua numbers to integers in replies).

A script checks every argument before its first write (Redis does not roll a script back:
an error halfway would leave a record half-updated), reads what it finds in a hash with
``tonumber`` (a garbage value is taken as absent and overwritten, never an error), and
never sets a TTL longer than :data:`MAX_TTL_S`.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BREAKER_LUA", "LIMIT_LUA", "MAX_SPAN_S", "MAX_TTL_S", "PROBE_LUA"]

MAX_TTL_S: Final = 86400
"""The longest TTL any script sets, and the furthest ahead a record may block."""
MAX_SPAN_S: Final = 1e9
"""The largest interval, burst or breaker window a script accepts (about 31 years)."""

# GCRA ("generic cell rate algorithm"), the token bucket kept as one number per budget:
# the theoretical arrival time (TAT) at which the bucket would be full again. A budget of
# ``rate`` units per second holding ``burst_s`` seconds of refill has emission interval
# T = 1 / rate and tolerance tau = burst_s; its level is (tau - (TAT - now)) / T units.
# A cost ``c`` fits when TAT + min(c * T, tau) - tau <= now (an oversized request waits
# for a full bucket, then runs it into debt, exactly as the in-memory Bucket does).
#
#
# No charge leaves more than ``span`` seconds of debt (ARGV[8]: the limiter's max_wait_s,
# at most its burst): a TAT is never written beyond now + tau + span, so neither an
# oversized request nor a server reporting absurd usage blocks a budget for longer. A
# stored TAT beyond that, or a block beyond now + MAX_TTL, was not written by this script
# (garbage, a replica with other limits, an older version): it is dropped (a full budget,
# no block), the key gets a TTL even when the take is denied, and the reply names it.
#
# KEYS[1]  the provider's hash {prefix}:limit:{provider}; fields requests, tokens (TATs)
#          and blocked (a 429's retry-after, shared by every replica)
# ARGV[1]  "take": check both budgets (and the block) and charge both only if both fit;
#                   the wait is "0" when granted, else the seconds to wait
#          "adjust": charge (or, negative, refund) unconditionally; a refund never fills a
#                   bucket past full
#          "block": ARGV[2] seconds from now nobody is admitted
# ARGV[2..4] requests: T (0 = not limited), tau, cost;  ARGV[5..7] tokens: the same;
# ARGV[8]  span (take and adjust)
# Returns {wait, dropped}: strings, the wait in seconds and the comma-separated names of
# the fields dropped as garbage ("" when none; "record" for a key that was not a hash,
# deleted).
LIMIT_LUA: Final = """
local key = KEYS[1]
local op = ARGV[1]
local MAX_TTL = 86400
local MAX_SPAN = 1e9
local function num(i, low, high)
  local x = tonumber(ARGV[i])
  if x == nil or x ~= x or x < low or x > high then return nil end
  return x
end
if op == 'block' then
  if num(2, 0, MAX_TTL) == nil then return redis.error_reply('ERR cascade: bad block') end
elseif op == 'take' or op == 'adjust' then
  local low = op == 'take' and 0 or -1e15
  for i = 0, 3, 3 do
    if num(2 + i, 0, MAX_SPAN) == nil or num(3 + i, 0, MAX_SPAN) == nil
        or num(4 + i, low, 1e15) == nil then
      return redis.error_reply('ERR cascade: bad budget arguments')
    end
  end
  if num(8, 0, MAX_SPAN) == nil then return redis.error_reply('ERR cascade: bad span') end
else
  return redis.error_reply('ERR cascade: unknown op')
end
local dropped = {}
local kind = redis.call('TYPE', key)
if type(kind) == 'table' then kind = kind.ok end
if kind ~= 'hash' and kind ~= 'none' then
  -- not a hash (garbage, another tenant): every H* call would be an error
  redis.call('DEL', key)
  dropped[1] = 'record'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end
local function expire()
  local far = now
  for _, v in ipairs(redis.call('HMGET', key, 'requests', 'tokens', 'blocked')) do
    local x = tonumber(v)
    if x ~= nil and x == x and x > far then far = x end
  end
  local ttl = math.min(far - now, MAX_TTL)
  redis.call('PEXPIRE', key, math.ceil(ttl * 1000) + 1000)
end
if op == 'block' then
  local block_until = now + tonumber(ARGV[2])
  local old = tonumber(redis.call('HGET', key, 'blocked'))
  if old == nil or old ~= old or old < block_until or old > now + MAX_TTL then
    redis.call('HSET', key, 'blocked', fmt(block_until))
  end
  expire()
  return {'0', table.concat(dropped, ',')}
end
local span = tonumber(ARGV[8])
local function stored(field, far)
  local raw = redis.call('HGET', key, field)
  local x = tonumber(raw)
  if raw ~= false and (x == nil or x ~= x or x > far) then
    redis.call('HDEL', key, field)
    dropped[#dropped + 1] = field
    return nil
  end
  return x
end
local fields = {'requests', 'tokens'}
local wait = 0
if op == 'take' then
  local blocked = stored('blocked', now + MAX_TTL + 1)
  if blocked ~= nil and blocked - now > wait then wait = blocked - now end
end
local tats = {}
local ceilings = {}
for i = 1, 2 do
  local interval = tonumber(ARGV[3 * i - 1])
  if interval > 0 then
    local tau = tonumber(ARGV[3 * i])
    ceilings[i] = now + tau + span
    local tat = stored(fields[i], ceilings[i])
    if tat == nil or tat < now then tat = now end
    tats[i] = tat
    if op == 'take' then
      local cost = tonumber(ARGV[3 * i + 1])
      local w = tat + math.min(cost * interval, tau) - tau - now
      if w > wait then wait = w end
    end
  end
end
if wait > 0.000001 then
  -- a denied take writes nothing but what it dropped; a key left without a TTL gets one
  if #dropped > 0 or redis.call('PTTL', key) == -1 then expire() end
  return {fmt(wait), table.concat(dropped, ',')}
end
for i = 1, 2 do
  if tats[i] ~= nil then
    local interval = tonumber(ARGV[3 * i - 1])
    local cost = tonumber(ARGV[3 * i + 1])
    -- a charge never leaves more than span seconds of debt
    local tat = math.min(math.max(now, tats[i] + cost * interval), ceilings[i])
    redis.call('HSET', key, fields[i], fmt(tat))
  end
end
expire()
return {'0', table.concat(dropped, ',')}
"""

# A breaker's shared record. KEYS[1] is the hash {prefix}:breaker:{provider}: state
# ("open" / "closed"), open_until (Redis time), epoch (bumped on every published
# transition, so a replica applies each one once) and failures (consecutive, across
# every replica).
#
# KEYS[2] is the half-open probe lease {prefix}:probe:{provider} (see PROBE_LUA): a
# published transition ends the half-open period, so "open" and "close" delete it.
#
# ARGV[1]  "fail": count a failure; at ARGV[2] (fail_max) the breaker opens for ARGV[3]
#                  seconds. While it is open already the failure is not counted: the
#                  reply tells the caller to open too.
#          "open": a replica's breaker opened on its own (a failed probe): publish it
#          "close": a replica's probe succeeded: publish closed
#          "ok": a success: the consecutive count starts again
# Returns {state, epoch, seconds until half-open (string), failures}. A key that is not a
# hash (an older version, another tenant) is replaced (the poll logs it once).
BREAKER_LUA: Final = """
local key = KEYS[1]
local op = ARGV[1]
local fail_max = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
if op ~= 'ok' and op ~= 'fail' and op ~= 'open' and op ~= 'close' then
  return redis.error_reply('ERR cascade: unknown op')
end
if fail_max == nil or fail_max ~= fail_max or fail_max < 1 or fail_max > 1e9
    or window == nil or window ~= window or window < 0 or window > 1e9 then
  return redis.error_reply('ERR cascade: bad breaker arguments')
end
local kind = redis.call('TYPE', key)
if type(kind) == 'table' then kind = kind.ok end
if kind ~= 'hash' and kind ~= 'none' then
  -- not a hash (garbage, another tenant): every H* call would be an error
  redis.call('DEL', key)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end
local function count(field)
  local x = tonumber(redis.call('HGET', key, field))
  if x == nil or x ~= x or x < 0 or x >= 1e13 then return 0 end
  return math.floor(x)
end
local state = redis.call('HGET', key, 'state')
local open_until = tonumber(redis.call('HGET', key, 'open_until')) or 0
if open_until ~= open_until then open_until = 0 end
open_until = math.min(open_until, now + 1e9)
local epoch = count('epoch')
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
  local n = count('failures') + 1
  redis.call('HSET', key, 'failures', n)
  if n < fail_max then
    redis.call('EXPIRE', key, 86400)
    return {'counted', epoch, '0', n}
  end
  op = 'open'
end
epoch = epoch + 1
if KEYS[2] ~= nil then redis.call('DEL', KEYS[2]) end
if op == 'open' then
  local until_ = math.max(open_until, now + window)
  redis.call('HSET', key, 'state', 'open', 'open_until', fmt(until_), 'failures', 0,
             'epoch', epoch)
  redis.call('EXPIRE', key, 86400)
  return {'open', epoch, fmt(until_ - now), 0}
end
redis.call('HSET', key, 'state', 'closed', 'open_until', 0, 'failures', 0, 'epoch', epoch)
redis.call('EXPIRE', key, 86400)
return {'closed', epoch, '0', 0}
"""

# The half-open probe lease of one breaker across replicas. KEYS[1] is
# {prefix}:probe:{provider}; ARGV[2] the caller's token (one per SharedState).
#
# ARGV[1]  "take": SET NX PX ARGV[3] milliseconds. Returns 0 when the caller holds the
#                  lease (now, or already), else the milliseconds it is held elsewhere.
#          "drop": delete the lease if the caller holds it.
# A key that is not a string (not a lease) is deleted first.
PROBE_LUA: Final = """
local key = KEYS[1]
local op = ARGV[1]
local token = ARGV[2]
local ms = tonumber(ARGV[3])
if ms == nil or ms ~= ms or ms < 1 or ms > 86400000 then
  return redis.error_reply('ERR cascade: bad lease time')
end
ms = math.floor(ms)
local kind = redis.call('TYPE', key)
if type(kind) == 'table' then kind = kind.ok end
if kind ~= 'string' and kind ~= 'none' then
  redis.call('DEL', key)  -- not a lease (garbage, another tenant): GET would be an error
end
local holder = redis.call('GET', key)
if op == 'drop' then
  if holder == token then redis.call('DEL', key) end
  return 0
end
if op ~= 'take' then return redis.error_reply('ERR cascade: unknown op') end
if holder == false or holder == token then
  redis.call('SET', key, token, 'PX', ms)
  return 0
end
local left = redis.call('PTTL', key)
if left < 0 then
  redis.call('PEXPIRE', key, ms)  -- a lease without a TTL would block every probe forever
  left = ms
end
return left
"""
