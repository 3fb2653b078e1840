-- settle.lua: settles (or, with actual usage 0, cancels) one reservation.
-- The same arithmetic, in the same order of operations, as tollgate_core::settle.
--
-- KEYS[1]  the key's state hash (see reserve.lua)
-- KEYS[2]  the reservation's class queue; the reservation leaves it
-- KEYS[3..] the headroom indexes of classes 0, 1, ... (see reserve.lua): at
--          least those of the classes that ever queued on the key, or the
--          reply asks for more
-- ARGV[1]  the reservation's id
-- ARGV[2]  idle margin in milliseconds (see reserve.lua)
-- ARGV[3]  the reservation's class
-- ARGV[4]  the reservation's slot (seconds): when it lies in the past, what is
--          given back is added to the class's counters a<class>:<dimension>
--          of refunds by started reservations (see advance.lua)
-- ARGV[5]  the caller's deadline on this server's clock (seconds), "" for
--          none: a settlement that arrives later (its caller timed out and
--          will retry) writes nothing, so it is not applied twice
-- ARGV[6..] six values per limited dimension whose usage differs from the
--          estimate, in index order: index (0..3), charge = delta * T (seconds,
--          0 unless actual > estimated), most = -delta * T + gap (seconds, 0
--          unless actual < estimated), cost * T + gap, and the mark's end and
--          refunded_at (seconds); gap is the mark's gap for a cancellation, else 0
--
-- Reply: {time_sec, time_usec, state, later0..later3} with the key's state
-- before the settlement as stored (field s, see reserve.lua; nil for none)
-- and per dimension the least headroom of the reservations queued after
-- this one ("" when none, or when it could not matter): the caller
-- computes the outcome from these with tollgate_core::settle, as this script
-- does. {5} when past the caller's deadline; {6, classes} when a class that
-- queued on the key has no headroom index in KEYS (nothing written but the
-- reservation leaving its queue: call again with more keys).

-- Redis 5 or later: a script that reads TIME may write (effects replication).
-- A key's numbers live in one field as binary doubles (see reserve.lua).
local STATE = '<ddddddddddd'
local unpack_d, pack = struct.unpack, struct.pack
local tonumber, min = tonumber, math.min

local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000
if ARGV[5] ~= '' and now > tonumber(ARGV[5]) then return {5} end
local class = ARGV[3]
local started = tonumber(ARGV[4]) <= now
local n = (#ARGV - 5) / 6
-- The state, then the class's counter of refunds by started reservations
-- for each dimension refunded (see advance.lua).
local fields = {KEYS[1], 's'}
local a_at = {}
if started then
  local m = 2
  for k = 1, n do
    if tonumber(ARGV[6 * k + 2]) > 0 then
      m = m + 1
      fields[m] = 'a' .. class .. ':' .. ARGV[6 * k]
      a_at[k] = m - 1
    end
  end
end
local h
if #fields == 2 then h = {redis.call('HGET', KEYS[1], 's')} else h = redis.call('HMGET', unpack(fields)) end
local blob = h[1]
local st
if blob then st = {unpack_d(STATE, blob)} else st = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} end
local classes = st[3]
-- Only a class that ever queued has a queue to leave.
if classes > 0 then
  local class_bit = 2 ^ tonumber(class)
  if classes % (2 * class_bit) >= class_bit then redis.call('ZREM', KEYS[2], ARGV[1]) end
end
local out = {time[1], time[2], blob or false, '', '', '', ''}
-- Reservations charged after this one exist only when it is not the last.
local later_ones = classes > 0 and tonumber(ARGV[1]) < st[1]
local id_w = nil

-- Only a settlement with reservations charged after it looks at them (and
-- pays for making these functions).
local later_headroom
if later_ones then
  -- Removes entries from the front of a range of a headroom index while
  -- `gone` says so, eight at a time (as in reserve.lua).
  local function trim(key, from, to, gone)
    while true do
      local batch = redis.call('ZRANGEBYLEX', key, from, to, 'LIMIT', 0, 8)
      local out = {}
      for _, e in ipairs(batch) do
        if not gone(e) then break end
        out[#out + 1] = e
      end
      if #out > 0 then redis.call('ZREM', key, unpack(out)) end
      if #out < 8 then return end
    end
  end

  -- The least headroom, in dimension i, of the reservations still queued (in any
  -- class) that were charged after this one, as its string; nil when none;
  -- false when a class that queued has no index among KEYS.
  later_headroom = function(i)
    if classes >= 2 ^ (#KEYS - 2) then return false end
    local least, least_s = math.huge, nil
    local lo, hi = '[' .. i .. ':', '[' .. i .. ';'
    id_w = id_w or string.format('%020.0f', tonumber(ARGV[1]))
    -- Just after every member of this reservation in lexicographic order.
    local from = '(' .. i .. ':' .. id_w .. ';'
    local c = 0
    while classes >= 2 ^ c do
      if classes % (2 ^ (c + 1)) >= 2 ^ c then
        local key = KEYS[3 + c]
        local next_one = redis.call('ZRANGEBYLEX', key, from, hi, 'LIMIT', 0, 1)[1]
        -- An entry whose slot has passed may sit in the expired front of the
        -- index (which leaves first, as in reserve.lua): then look again.
        if next_one and tonumber(string.match(next_one, '^%d+:%d+:([^:]+):')) <= now then
          trim(key, lo, hi, function(e)
            return tonumber(string.match(e, '^%d+:%d+:([^:]+):')) <= now
          end)
          next_one = redis.call('ZRANGEBYLEX', key, from, hi, 'LIMIT', 0, 1)[1]
        end
        if next_one then
          local s = string.match(next_one, ':([^:]+)$')
          local v = tonumber(s)
          if v < least then least, least_s = v, s end
        end
      end
      c = c + 1
    end
    return least_s
  end
end

local changed = false
local set = {KEYS[1], 's', ''}
local m = 3
local full = now
local charged = false
for k = 1, n do
  local a = 6 * k
  local i = tonumber(ARGV[a])
  local tat = st[4 + i]
  local charge = tonumber(ARGV[a + 1])
  if charge > 0 then
    local next_tat = math.max(tat, now) + charge
    st[4 + i] = next_tat
    changed, charged = true, true
    if next_tat > full then full = next_tat end
  else
    -- Refund only what of this reservation still lies ahead on the TAT line,
    -- moved back by the refunds made since it was taken, and never below what
    -- the reservations queued after it were promised.
    local most = tonumber(ARGV[a + 2])
    local refunded = st[8 + i]
    local shift = refunded - tonumber(ARGV[a + 5])
    local undrained = min(min(tonumber(ARGV[a + 4]) - shift - now, tonumber(ARGV[a + 3])), tat - now)
    -- The reservations behind can only lower a refund there is.
    if later_ones and min(most, undrained) > 0 then
      local later_s = later_headroom(ARGV[a])
      if later_s == false then return {6, classes} end
      if later_s then
        out[4 + i] = later_s
        undrained = min(undrained, tonumber(later_s) - refunded)
      end
    end
    local give = min(most, undrained)
    if give > 0 then
      st[4 + i] = tat - give
      st[8 + i] = refunded + give
      changed = true
      if a_at[k] then
        set[m + 1] = fields[a_at[k] + 1]
        local before = h[a_at[k]]
        set[m + 2] = pack('<d', (before and unpack_d('<d', before) or 0) + give)
        m = m + 2
      end
    end
  end
end

-- Only a charge moves a TAT later; the hash must outlive the new backlog
-- (as in reserve.lua).
local expire_at
if charged then
  local margin = tonumber(ARGV[2])
  local needed = sec * 1000 + math.floor(usec / 1000) + math.ceil((full - now) * 1000) + margin
  local x = st[2]
  if x == 0 or x < needed then
    expire_at = needed + margin
    st[2] = expire_at
  end
end
if changed then
  set[3] = pack(STATE, unpack(st, 1, 11))
  redis.call('HSET', unpack(set))
  if expire_at then redis.call('PEXPIREAT', KEYS[1], expire_at) end
end

return out
