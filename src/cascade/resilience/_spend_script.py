"""The Lua script behind the shared spending budgets (the gateway's USD per key per UTC
day, :mod:`cascade.gateway._budget`), run atomically by Redis through
:class:`~cascade.resilience.shared.SharedState` (``script("spend", ...)``).

It follows the rules of the breakers' and rate limits' scripts (``_redis_scripts.py``):
the time from Redis's ``TIME``, every argument checked before the first write, a garbage
value in the hash taken as absent and reported, no TTL longer than
:data:`~._redis_scripts.MAX_TTL_S`.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SPEND_LUA"]

# A spending budget over one period (the gateway's USD per key per UTC day), reserved
# before a request runs and settled with what it cost. KEYS[1] is the hash
# {prefix}:spend:{name}:{period}: fields spent (settled) and reserved (in flight). The
# period is in the key, so a new day starts from nothing; the key lives at most
# MAX_TTL seconds (the caller asks for the rest of its period).
#
# ARGV[1]  "reserve": admit when spent + reserved < ARGV[2] (the budget), then add ARGV[3]
#                     (the estimate) to reserved and keep it as the field r:{ARGV[6]} (the
#                     reservation's id) until ARGV[7] ms from now; else change nothing. A
#                     reserve finding x:{id} (settled before it ran: its reply was lost)
#                     holds nothing. Before refusing, holds past their time are dropped
#                     and reserved is counted again from the r: fields (a replica that
#                     stopped without settling holds nothing for longer), when the field
#                     "due" says a hold may be past (not at every refusal: O(fields)).
#          "settle":  add ARGV[4] to spent, take ARGV[3] off reserved (never below 0),
#                     and release each reservation ARGV[6..] names: "h:{id}" (its
#                     reserve answered) or "u:{id}" (its reply never came: if it has not
#                     run yet, x:{id} tells it not to hold, until ARGV[2] ms from now)
# ARGV[5]  the TTL in milliseconds
# Returns {status ("ok" / "over"), spent, reserved, dropped}: strings; dropped names the
# fields found unusable (not a number, negative, or beyond 1e15) and taken as 0, or is
# "record" for a key that was not a hash (replaced).
SPEND_LUA: Final = """
local key = KEYS[1]
local op = ARGV[1]
local function num(i, high)
  local x = tonumber(ARGV[i])
  if x == nil or x ~= x or x < 0 or x > high then return nil end
  return x
end
if op ~= 'reserve' and op ~= 'settle' then
  return redis.error_reply('ERR cascade: unknown op')
end
if num(2, 1e15) == nil or num(3, 1e15) == nil or num(4, 1e15) == nil
    or num(5, 86400000) == nil or tonumber(ARGV[5]) < 1 then
  return redis.error_reply('ERR cascade: bad spend arguments')
end
local dropped = {}
local kind = redis.call('TYPE', key)
if type(kind) == 'table' then kind = kind.ok end
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', key)
  dropped[1] = 'record'
end
local function stored(field)
  local raw = redis.call('HGET', key, field)
  if raw == false then return 0 end
  local x = tonumber(raw)
  if x == nil or x ~= x or x < 0 or x > 1e15 then
    redis.call('HDEL', key, field)
    dropped[#dropped + 1] = field
    return 0
  end
  return x
end
local spent = stored('spent')
local reserved = stored('reserved')
local function fmt(x) return string.format('%.17g', x) end
local status = 'ok'
-- sums stay within the bound a read trusts: past it they would read as garbage, reset to 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function held(raw)  -- a hold's "amount|until" (ms): its amount, or nil once past
  local amount, till = string.match(raw, '^([^|]+)|(%d+)$')
  amount, till = tonumber(amount), tonumber(till)
  if amount == nil or till == nil or amount ~= amount or amount < 0 or amount > 1e15
      or till <= now then
    return nil
  end
  return amount
end
local recounted = false
-- 'due': when the first hold (r: or x:) may be past its time (at most a second late): a
-- refusal reads every hold only then (or when no hold was made since the last reading:
-- a record of a few fields), not at each refused request
local function hold_until(till)
  local due = tonumber(redis.call('HGET', key, 'due') or '')
  if due == nil or due ~= due or till < due then
    redis.call('HSET', key, 'due', string.format('%d', till))
  end
end
if op == 'reserve' then
  local id = ARGV[6]
  if id == nil or #id == 0 or #id > 64 or num(7, 86400000) == nil then
    return redis.error_reply('ERR cascade: bad reservation')
  end
  if redis.call('HDEL', key, 'x:' .. id) == 1 then
    return {'ok', fmt(spent), fmt(reserved), table.concat(dropped, ',')}  -- settled already
  end
  local due = tonumber(redis.call('HGET', key, 'due') or '')
  if spent + reserved >= tonumber(ARGV[2]) and (due == nil or not (due > now)) then
    -- before refusing: drop the holds past their time, count reserved again from the rest
    recounted = true
    local total, first = 0, nil
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do
      local field = all[i]
      local kind = string.sub(field, 1, 2)
      if kind == 'r:' or kind == 'x:' then
        local amount = held(all[i + 1])
        if amount == nil then
          redis.call('HDEL', key, field)
        else
          local till = tonumber(string.match(all[i + 1], '|(%d+)$'))
          if first == nil or till < first then first = till end
          if kind == 'r:' then total = total + amount end
        end
      end
    end
    reserved = math.min(total, 1e15)
    if first == nil then
      redis.call('HDEL', key, 'due')
    else
      redis.call('HSET', key, 'due', string.format('%d', math.max(first, now + 1000)))
    end
  end
  if spent + reserved < tonumber(ARGV[2]) then
    reserved = math.min(reserved + tonumber(ARGV[3]), 1e15)
    local till = now + math.floor(tonumber(ARGV[7]))
    redis.call('HSET', key, 'r:' .. id, fmt(tonumber(ARGV[3])) .. '|' .. string.format('%d', till))
    hold_until(till)
  else
    status = 'over'
  end
else
  reserved = math.max(0, reserved - tonumber(ARGV[3]))
  spent = math.min(spent + tonumber(ARGV[4]), 1e15)
  for i = 6, #ARGV do
    local kind, id = string.sub(ARGV[i], 1, 2), string.sub(ARGV[i], 3)
    if #id > 0 and #id <= 64 and (kind == 'h:' or kind == 'u:') then
      local raw = redis.call('HGET', key, 'r:' .. id)
      if raw then
        local amount = tonumber(string.match(raw, '^([^|]+)|')) or 0
        if amount == amount and amount > 0 then
          reserved = math.max(0, reserved - math.min(amount, 1e15))
        end
        redis.call('HDEL', key, 'r:' .. id)
      elseif kind == 'u:' then
        local till = now + math.floor(tonumber(ARGV[2]))
        redis.call('HSET', key, 'x:' .. id, '0|' .. string.format('%d', till))
        hold_until(till)
      end
    end
  end
end
if status == 'ok' or recounted or #dropped > 0 then
  redis.call('HSET', key, 'spent', fmt(spent), 'reserved', fmt(reserved))
end
if status == 'ok' or #dropped > 0 or redis.call('PTTL', key) == -1 then
  redis.call('PEXPIRE', key, math.floor(tonumber(ARGV[5])))
end
return {status, fmt(spent), fmt(reserved), table.concat(dropped, ',')}
"""
