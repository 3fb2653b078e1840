-- advance.lua: moves a queued reservation to an earlier slot when refunds of
-- the started reservations of its class (or of the first of its queue) made
-- room ahead of it.
-- The same arithmetic as tollgate_core::advance (see it for why this is safe).
--
-- KEYS[1]  the key's state hash (see reserve.lua): a<class>:<dimension> are the
--          class's refunds by started reservations and by the first of
--          its queue (seconds, see settle.lua)
-- KEYS[2]  the reservation's class queue (member = id, score = slot)
-- ARGV[1]  the reservation's id
-- ARGV[2]  tolerance of the class, tau * headroom (seconds)
-- ARGV[3]  the class
-- ARGV[4]  the lease in seconds, "" for none: confirms the reservation's
--          lease for that long (see reserve.lua)
-- ARGV[5]  the reservation's slot as its owner knows it (seconds)
-- ARGV[6..] seven values per limited dimension, in index order: index (0..3),
--          increment T (seconds per unit), cost (units), the TAT before the
--          reservation's charge, the class's refund counter when it was taken,
--          the idle gap its slot skipped (the mark's gap) and the key's refund
--          counter when it was taken (the mark's refunded_at)
--
-- It may also start earlier by what cancelled reservations just ahead of it
-- vacated (field k<id> of <prefix>:{K}:v, see settle.lua). When it moves, it
-- hands on what it vacated in turn (tollgate_core::moved_vacated), less what
-- it handed on before (field p<id>), to the reservation charged
-- right after it when that one is queued behind it in its class, as
-- settle.lua does for a cancellation. And it looks for
-- reservations of the key whose lease ran out (their owner stopped
-- confirming: it died): up to four that still wait leave their queue at
-- once (so an owner that comes back finds itself gone) and the lease set,
-- are marked for their cancellation (field <id> of <prefix>:{K}:r, see
-- settle.lua) and go back in the reply for the caller to cancel.
--
-- Reply: {0, lapsed...} when it stays (or has started);
--        {3, lapsed...} when it stays and nothing of its class is queued
--        ahead of it (what lies before it in its queue has started);
--        {1, slot, time_sec, time_usec, lapsed...} when it moved (slot as '%.17g');
--        {2, lapsed...} when it is no longer queued though its slot is
--        still ahead: its lease ran out and it was taken out;
-- where each lapsed is "<id> <slot now> <record>" (the record as in reserve.lua).

-- Redis 5 or later: a script that reads TIME may write (effects replication).
-- The numbers of the state hash are stored as 8-byte little-endian doubles
-- (struct.pack '<d'): exact, and far cheaper than decimal text to write and
-- read (the formatting was most of what these scripts cost).
local pack, unpack_d = struct.pack, struct.unpack
local function num(s)
  if s then return (unpack_d('<d', s)) end
end

local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local base = string.sub(KEYS[1], 1, -2)

-- Reservations whose owner stopped confirming them.
local lapsed = {}
local due = redis.call('ZRANGEBYSCORE', base .. 'l', '-inf', string.format('%.17g', now), 'LIMIT', 0, 4)
for _, rid in ipairs(due) do
  redis.call('ZREM', base .. 'l', rid)
  local rec = redis.call('HGET', base .. 'm', rid)
  redis.call('HDEL', base .. 'm', rid)
  if rec and rid == ARGV[1] then
    -- Its own lease ran out, but nobody took it out yet: it confirms now.
    if ARGV[4] ~= '' then
      redis.call('HSET', base .. 'm', rid, rec)
      redis.call('ZADD', base .. 'l', now + tonumber(ARGV[4]), rid)
    end
  elseif rec then
    local c = string.match(rec, '^(%d+) ')
    local q = string.gsub(KEYS[2], 'q%d+$', 'q' .. c)
    local at = redis.call('ZSCORE', q, rid)
    -- Only one that still waits: one that started is running.
    if at and tonumber(at) > now then
      redis.call('ZREM', q, rid)
      redis.call('HSET', base .. 'r', rid, 1)
      redis.call('PEXPIRE', base .. 'r', 600000)
      lapsed[#lapsed + 1] = rid .. ' ' .. at .. ' ' .. rec
    end
  end
end
local function answer(head)
  for _, l in ipairs(lapsed) do head[#head + 1] = l end
  return head
end

local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score then
  -- Gone from its queue with its slot still ahead: taken out.
  if tonumber(ARGV[5]) > now then return answer({2}) end
  return answer({0})
end
local slot = tonumber(score)
if slot <= now then return answer({0}) end
if ARGV[4] ~= '' then redis.call('ZADD', base .. 'l', 'XX', now + tonumber(ARGV[4]), ARGV[1]) end
-- FIFO: never before the reservation queued just ahead: one at the very same
-- slot with a smaller id pins it; otherwise the latest slot before its own.
local id = tonumber(ARGV[1])
for _, other in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], score, score)) do
  if tonumber(other) < id then return answer({0}) end
end
local earliest = now
local prev = redis.call('ZREVRANGEBYSCORE', KEYS[2], '(' .. score, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
local stays = {3}
if prev[2] then
  earliest = math.max(earliest, tonumber(prev[2]))
  if tonumber(prev[2]) > now then stays = {0} end
end

local tolerance = tonumber(ARGV[2])
local c = ARGV[3]
-- What it may start earlier by (the same as the memory store's credits):
-- k<id> what cancelled predecessors vacated and could not give back; j<id>
-- what they gave back (four doubles, then per dimension the least refund
-- counter just before those refunds: a reservation charged after one of
-- them counts none); h<id> what the reservation before it vacated by moving
-- (four doubles, then the mover's refunded_at - class_refunds_at, which
-- corrects it for refunds made between the two charges); p<id> what it
-- handed on itself by moving. Each of h<id> and p<id> ends with the class's
-- generation g<class> when it was written (a double): when the first of the
-- queue leaves, settle.lua counts a new generation, and what was handed on
-- before counts as never handed (ClassQueue::forget_moves), in constant
-- time; one of another length (older scripts wrote none) counts so too.
local v = base .. 'v'
local got = redis.call('HMGET', v, 'k' .. ARGV[1], 'j' .. ARGV[1], 'h' .. ARGV[1], 'p' .. ARGV[1], 'g' .. c)
local owed, given, moved_in, handed = nil, nil, nil, nil
local gen = tonumber(got[5]) or 0
if got[1] then owed = {unpack_d('<dddd', got[1])} end
if got[2] then given = {unpack_d('<dddddddd', got[2])} end
if got[3] and #got[3] == 72 then
  moved_in = {unpack_d('<ddddddddd', got[3])}
  if moved_in[9] ~= gen then moved_in = nil end
end
if got[4] and #got[4] == 40 then
  handed = {unpack_d('<ddddd', got[4])}
  if handed[5] ~= gen then handed = nil end
end
local has_credit = owed or given or moved_in
-- Per dimension passed (by its ARGV position): the refunds of started
-- reservations since it was taken, and the credit.
local refunds, credit = {}, {}
local gapped = false
for a = 6, #ARGV, 7 do
  local i = ARGV[a]
  local d = tonumber(i) + 1
  local inc, cost, before, at = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local since = (num(redis.call('HGET', KEYS[1], 'a' .. c .. ':' .. i)) or 0) - at
  refunds[a] = since
  if tonumber(ARGV[a + 5]) > 0 then gapped = true end
  if has_credit then
    local t = 0
    if owed then t = owed[d] end
    if given then
      local x = 0
      if tonumber(ARGV[a + 6]) <= given[4 + d] then x = given[d] end
      t = t + x
    end
    if moved_in then
      t = t + math.max(moved_in[d] - ((tonumber(ARGV[a + 6]) - at) - moved_in[4 + d]), 0)
    end
    credit[a] = t
    since = since + t
  end
  earliest = math.max(earliest, before - since + cost * inc - tolerance)
end
if earliest >= slot then return answer(stays) end

local slot_s = string.format('%.17g', earliest)
if earliest > now then
  redis.call('ZADD', KEYS[2], 'XX', slot_s, ARGV[1])
else
  -- It starts now: it no longer waits, and needs no lease.
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', base .. 'l', ARGV[1])
  redis.call('HDEL', base .. 'm', ARGV[1])
end

-- What it vacated by moving (tollgate_core::moved_vacated), less what it
-- handed on before, goes to the one charged right after it.
if has_credit then
  handed = handed or {0, 0, 0, 0}
  local total = {handed[1], handed[2], handed[3], handed[4]}
  local more = {0, 0, 0, 0}
  local basis = {0, 0, 0, 0}
  local any = false
  for a = 6, #ARGV, 7 do
    local d = tonumber(ARGV[a]) + 1
    local room = tonumber(ARGV[a + 3]) - refunds[a] - earliest
    local out = math.max(tonumber(ARGV[a + 5]) + math.min(credit[a] or 0, room), 0)
    more[d] = math.max(out - handed[d], 0)
    basis[d] = tonumber(ARGV[a + 6]) - tonumber(ARGV[a + 4])
    if more[d] > 0 then any = true end
  end
  if any then
    -- The first queued after it in its class (FIFO: ordered by slot, then id).
    local first = nil
    local after = redis.call('ZRANGEBYSCORE', KEYS[2], slot_s, '+inf', 'WITHSCORES', 'LIMIT', 0, 8)
    for j = 1, #after, 2 do
      local other = tonumber(after[j])
      if tonumber(after[j + 1]) > earliest or other > id then
        first = other
        break
      end
    end
    if first then
      local nxt = id + 1
      while nxt ~= first do
        local w = tonumber(redis.call('HGET', v, 'w' .. string.format('%.0f', nxt)))
        if w and w > nxt and w <= first then nxt = w else nxt = nil break end
      end
      if nxt then
        -- (A new hash starts the class's generations anew.)
        if redis.call('HLEN', v) >= 2048 then
          redis.call('DEL', v)
          gen = 0
        end
        for d = 1, 4 do total[d] = total[d] + more[d] end
        local first_s = string.format('%.0f', first)
        local had = redis.call('HGET', v, 'h' .. first_s)
        local t = {0, 0, 0, 0}
        if had and #had == 72 then
          local o = {unpack_d('<ddddddddd', had)}
          if o[9] == gen then t = o end
        end
        redis.call('HSET', v, 'p' .. ARGV[1], pack('<ddddd', total[1], total[2], total[3], total[4], gen),
          'h' .. first_s, pack('<ddddddddd', t[1] + more[1], t[2] + more[2], t[3] + more[3], t[4] + more[4],
            basis[1], basis[2], basis[3], basis[4], gen))
        local ttl = redis.call('PTTL', KEYS[1])
        if ttl > 0 then redis.call('PEXPIRE', v, ttl) end
      end
    end
  end
end
return answer({1, slot_s, time[1], time[2]})
