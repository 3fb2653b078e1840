-- settle.lua: settles (or, with actual usage 0, cancels) one reservation.
-- The same arithmetic, in the same order of operations, as tollgate_core::settle.
--
-- KEYS[1]  the key's state hash (see reserve.lua)
-- KEYS[2]  the reservation's class queue; the reservation leaves it
-- KEYS[3..18] the headroom indexes of classes 0..15 (see reserve.lua)
-- ARGV[1]  the reservation's id
-- ARGV[2]  idle margin in milliseconds (see reserve.lua)
-- ARGV[3]  1 when this is a cancellation (all actual usage 0), else 0
-- ARGV[4]  the reservation's class
-- ARGV[5]  the reservation's slot (seconds): when it lies in the past, what is
--          given back is added to the class's counters a<class>:<dimension>
--          of refunds by started reservations (see advance.lua)
-- ARGV[6]  the caller's deadline on this server's clock (seconds), "" for
--          none: a settlement that arrives later (its caller timed out and
--          will retry) writes nothing, so it is not applied twice
-- ARGV[7..] seven values per limited dimension, in index order:
--          index (0..3), increment T (seconds per unit),
--          delta = actual - estimated cost (units), estimated cost (units),
--          and the mark's end, refunded_at and gap (seconds)
--
-- Reply, floats as '%.17g' strings:
--   {time_sec, time_usec, tat0..tat3, refunded0..refunded3, given0..given3,
--    returned0..returned3}
-- where tat and refunded are the key's new state, given the units refunded and
-- returned the seconds the TAT moved back; {5} when past the caller's deadline.

if redis.replicate_commands then redis.replicate_commands() end

local fmt = string.format
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
if ARGV[6] ~= '' and now > tonumber(ARGV[6]) then return {5} end
redis.call('ZREM', KEYS[2], ARGV[1])
local h = redis.call('HMGET', KEYS[1], 't0', 't1', 't2', 't3', 'r0', 'r1', 'r2', 'r3', 'c', 'x')
local out = {time[1], time[2],
  h[1] or '0', h[2] or '0', h[3] or '0', h[4] or '0',
  h[5] or '0', h[6] or '0', h[7] or '0', h[8] or '0',
  '0', '0', '0', '0', '0', '0', '0', '0'}
local cancelled = ARGV[3] == '1'
local classes = tonumber(h[9]) or 0
-- Just after every member of this reservation in lexicographic order.
local after_id = fmt('%020.0f', tonumber(ARGV[1])) .. ';'

-- The least headroom, in dimension i, of the reservations still queued (in any
-- class) that were charged after this one; infinite when there are none.
local function later_headroom(i)
  local least = math.huge
  local lo, hi = '[' .. i .. ':', '[' .. i .. ';'
  local c = 0
  while classes > 0 and c < 16 do
    if classes % (2 ^ (c + 1)) >= 2 ^ c then
      local key = KEYS[3 + c]
      -- Entries whose slot has passed leave from the front (as in reserve.lua).
      while true do
        local first = redis.call('ZRANGEBYLEX', key, lo, hi, 'LIMIT', 0, 1)[1]
        if not first or tonumber(string.match(first, '^%d+:%d+:([^:]+):')) > now then break end
        redis.call('ZREM', key, first)
      end
      local next_one = redis.call('ZRANGEBYLEX', key, '(' .. i .. ':' .. after_id, hi, 'LIMIT', 0, 1)[1]
      if next_one then
        least = math.min(least, tonumber(string.match(next_one, ':([^:]+)$')))
      end
    end
    c = c + 1
  end
  return least
end

local fields = {}
local charged = false
local full = now
local started = tonumber(ARGV[5]) <= now
local given = {}
for a = 7, #ARGV, 7 do
  local i = tonumber(ARGV[a])
  local inc, delta, cost = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local tat = tonumber(h[i + 1]) or 0
  if delta > 0 then
    local next_tat = math.max(tat, now) + delta * inc
    local s = fmt('%.17g', next_tat)
    fields[#fields + 1] = 't' .. i
    fields[#fields + 1] = s
    out[i + 3] = s
    charged = true
    if next_tat > full then full = next_tat end
  elseif delta < 0 then
    -- Refund only what of this reservation still lies ahead on the TAT line,
    -- moved back by the refunds made since it was taken, and never below what
    -- the reservations queued after it were promised.
    local refunded = tonumber(h[i + 5]) or 0
    local gap = 0
    if cancelled then gap = tonumber(ARGV[a + 6]) end
    local shift = refunded - tonumber(ARGV[a + 5])
    local later = later_headroom(i) - refunded
    local undrained = math.min(math.min(math.min(
      tonumber(ARGV[a + 4]) - shift - now, cost * inc + gap), tat - now), later)
    local give = math.min(-delta * inc + gap, undrained)
    if give > 0 then
      local t, r = fmt('%.17g', tat - give), fmt('%.17g', refunded + give)
      fields[#fields + 1] = 't' .. i
      fields[#fields + 1] = t
      fields[#fields + 1] = 'r' .. i
      fields[#fields + 1] = r
      out[i + 3] = t
      out[i + 7] = r
      out[i + 11] = fmt('%.17g', math.min(give / inc, -delta))
      out[i + 15] = fmt('%.17g', give)
      if started then given[#given + 1] = {i, give} end
    end
  end
end

if #given > 0 then
  local c = ARGV[4]
  for _, g in ipairs(given) do
    local field = 'a' .. c .. ':' .. g[1]
    fields[#fields + 1] = field
    fields[#fields + 1] = (tonumber(redis.call('HGET', KEYS[1], field)) or 0) + g[2]
  end
end

-- Only a charge moves a TAT later; the hash must outlive the new backlog
-- (as in reserve.lua).
local expire_at
if charged then
  local margin = tonumber(ARGV[2])
  local needed = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    + math.ceil((full - now) * 1000) + margin
  local x = tonumber(h[10])
  if not x or x < needed then
    expire_at = needed + margin
    fields[#fields + 1] = 'x'
    fields[#fields + 1] = fmt('%.17g', expire_at)
  end
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
  if expire_at then redis.call('PEXPIREAT', KEYS[1], expire_at) end
end

return out
