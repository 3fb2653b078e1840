-- settle.lua: settles (or, with actual usage 0, cancels) one reservation.
-- The same arithmetic, in the same order of operations, as tollgate_core::settle.
--
-- KEYS[1]  the key's state hash (see reserve.lua). The reservation's class
--          queue <prefix>:{K}:q<class>, which it leaves, the other classes'
--          queues and the headroom indexes (<prefix>:{K}:h<class>, see
--          reserve.lua) of the classes that queued on the key (the bit set c
--          of its state) are named from it: they share the key's hash tag.
-- ARGV[1]  one argument (Redis makes a string of each for the script): a
--          byte, the length of the reservation's id; the id (text); then
--          the numbers, as little-endian doubles: the idle margin in
--          milliseconds (see reserve.lua); the reservation's class; its slot
--          (seconds: when it lies in the past, or the reservation is the
--          first of its class's queue, what is given back is added to the
--          class's counters a<class>:<dimension> of refunds made ahead of
--          every reservation queued in it, see advance.lua, when the class
--          ever queued: only reservations queued later read them, as they
--          stand then); the caller's deadline on this
--          server's clock (seconds, -1 for none: a settlement that arrives
--          later writes nothing); 1 for a cancellation (all actual usage 0),
--          else 0; then seven per limited dimension whose usage differs from
--          the estimate (every limited dimension for a cancellation), in index
--          order: index (0..3), charge = delta * T (seconds, 0 unless actual >
--          estimated), most = -delta * T + gap (seconds, 0 unless actual <
--          estimated), cost * T + gap, the mark's end and refunded_at
--          (seconds), and end - cost * T - gap (where its charge starts); gap
--          is the mark's gap for a cancellation, else 0
--
-- A reservation whose slot is still ahead was queued. Its settlement takes
-- its own entries, in every dimension, out of the headroom index where they
-- stand for no others (members ending ":p" do). Its cancellation (see
-- tollgate_core::settle_vacated) also adds the seconds that cancelled
-- predecessors vacated just ahead of it
-- (field k<id> of the key's vacancy hash <prefix>:{K}:v, four doubles by
-- dimension), and hands what it cannot give back to the reservation charged
-- right after it when that one is queued behind it in its class, directly or
-- through cancelled ones (fields w<id> of the vacancy hash: where each
-- cancellation's seconds went). A class none of whose queued reservations
-- came after this one caps nothing. Its lease (<prefix>:{K}:l, :m) goes.
-- A reservation that had started and whose refund the headroom of those
-- queued behind held back hands the seconds held back to the reservation
-- charged right after it, when that one is the first queued in its class
-- (field k<id> of the vacancy hash, as for a cancellation).
--
-- Reply: one string (see reserve.lua): the code 0, time_sec and time_usec
-- (d), then (B each) 1 when it was queued (else 0), the dimensions whose
-- headroom follows (bit i for dimension i), the length of the key's state
-- before the settlement as stored (field s, see reserve.lua; 0 for none)
-- and of the vacated seconds it took (32 or 0); then, per dimension in that
-- set, the least headroom of the reservations queued after this one (d; a
-- dimension is left out when none is queued after it, or when it could not
-- matter), the state, and the vacated seconds (four doubles): the caller
-- computes the outcome from these with tollgate_core::settle_vacated, as this
-- script does. The code 5 alone when past the caller's deadline; 7,
-- time_sec, time_usec (d) when the reservation was cancelled already
-- (nothing written).

-- Redis 5 or later: a script that reads TIME may write (effects replication).
-- A key's numbers live in one field as binary doubles (see reserve.lua).
-- `load` and `store` (state.lua, run ahead of this script) read and write it.
-- Only what a settlement needs is made: every table and function costs an
-- allocation on every call (see reserve.lua).
local unpack_d, pack = struct.unpack, struct.pack
local min = math.min

local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000
-- The numbers after the id: five, then seven per dimension passed.
local nums = ARGV[1]
local id_len = string.byte(nums, 1)
local size, format = #nums - 1 - id_len, nil
if size == 96 then format = '<dddddddddddd'
elseif size == 152 then format = '<ddddddddddddddddddd'
else format = '<' .. string.rep('d', size / 8) end
local A = {struct.unpack(format, nums, 2 + id_len)}
if A[4] >= 0 and now > A[4] then return '\5' end
local class = A[2]
local slot = A[3]
local started = slot <= now
local cancelled = A[5] == 1
local n = (size / 8 - 5) / 7
local base = nil
-- The class's counters of refunds by started reservations for each
-- dimension refunded (see advance.lua), and where each was read.
local fields = nil
local a_at = nil
local blob = redis.call('HGET', KEYS[1], 's')
local st = load(blob)
local classes = st[3]
-- The id and the class's queue, which only a key whose classes queued, or
-- a reservation that was queued, needs.
local id, id_s, queue_key = nil, nil, nil
if classes > 0 or not started then
  id_s = string.sub(nums, 2, 1 + id_len)
  id = tonumber(id_s)
  queue_key = string.format('%sq%d', string.sub(KEYS[1], 1, -2), class)
end
-- The first reservation of its class's queue was charged before every
-- other one queued in it (FIFO): what it gives back counts there as a
-- started one's does. (Its queue's live members are those whose slot is
-- still ahead; ids of one length sort as their numbers.)
local counts = started
if not started then
  local head = redis.call('ZRANGEBYSCORE', queue_key, '(' .. string.format('%.17g', now), string.format('%.17g', slot), 'LIMIT', 0, 1)[1]
  counts = head == id_s
end
-- Only a class that ever queued (bit set in c) can have reservations that
-- count its refunds: a class that never did keeps no counters (a
-- reservation queued later reads them as they stand then).
local class_bit = 2 ^ class
local class_used = classes % (2 * class_bit) >= class_bit
local h = nil
if counts and class_used then
  local m = 1
  for k = 1, n do
    if A[7 * k + 1] > 0 then
      if m == 1 then fields, a_at = {KEYS[1]}, {} end
      m = m + 1
      -- (Formatting a number with .. costs a %.14g; %d is cheaper.)
      fields[m] = string.format('a%d:%d', class, A[7 * k - 1])
      a_at[k] = m - 1
    end
  end
  if fields then h = redis.call('HMGET', unpack(fields)) end
end
-- Reservations charged after this one exist only when it is not the last.
local later_ones = classes > 0 and id < st[1]
-- Only a class that ever queued has a queue to leave. A reservation whose
-- slot is still ahead was queued: it leaves its queue now, or had left it
-- when its lease ran out (advance.lua marked it in <prefix>:{K}:r); if
-- neither, it was cancelled already and nothing more is written.
local queued = false
if classes > 0 then
  local removed = 0
  if class_used then removed = redis.call('ZREM', queue_key, id_s) end
  if not started then
    base = string.sub(KEYS[1], 1, -2)
    if removed == 0 then removed = redis.call('HDEL', base .. 'r', id_s) end
    if removed == 0 then return pack('<Bdd', 7, sec, usec) end
    queued = true
  end
end
local ahead = nil
-- What the cancellations before it gave back (j<id>) and what the one before
-- it vacated by moving (h<id>, kept as stored): see advance.lua.
local given_in, moved_in, moved_gen = nil, nil, nil
local id_w = nil
if queued then
  id_w = string.format('%020.0f', id)
  local own = base .. 'h' .. class
  -- Its entries in every dimension it queued in, as the memory store
  -- forgets them: a settlement passes only the dimensions whose usage
  -- differs from the estimate (a cancellation passes all), and an entry left
  -- behind would cap the refunds of those charged before it by a headroom
  -- that no queued reservation holds any more.
  for k = 1, cancelled and n or 4 do
    local i_s = string.format('%d', cancelled and A[7 * k - 1] or k - 1)
    local e = redis.call('ZRANGEBYLEX', own, '[' .. i_s .. ':' .. id_w .. ':', '[' .. i_s .. ':' .. id_w .. ';', 'LIMIT', 0, 1)[1]
    if e and string.sub(e, -2) ~= ':p' then redis.call('ZREM', own, e) end
  end
  local got = redis.call('HMGET', base .. 'v', 'k' .. id_s, 'j' .. id_s, 'h' .. id_s, 'g' .. class)
  if got[1] then ahead = {unpack_d('<dddd', got[1])} end
  if got[2] then given_in = {unpack_d('<dddddddd', got[2])} end
  -- (What moved in counts only when handed on in the class's generation,
  -- see advance.lua; its first 64 bytes are the seconds and their basis.)
  local gen = tonumber(got[4]) or 0
  if got[3] and #got[3] == 72 and unpack_d('<d', got[3], 65) == gen then
    moved_in = string.sub(got[3], 1, 64)
  end
  if got[1] or got[2] or got[3] then
    redis.call('HDEL', base .. 'v', 'k' .. id_s, 'j' .. id_s, 'h' .. id_s, 'p' .. id_s)
  end
  redis.call('ZREM', base .. 'l', id_s)
  redis.call('HDEL', base .. 'm', id_s)
  -- Every reservation queued behind the first counts what it gives back,
  -- which includes what it had handed on by moving (its gap and credit):
  -- what was handed down the queue (h<id>, p<id>) would count twice, and
  -- is forgotten (safe: they only start later): a new generation of the
  -- class, one write however long the queue.
  if counts then
    gen = redis.call('HINCRBY', base .. 'v', 'g' .. class, 1)
    if gen == 1 and st[2] > 0 then redis.call('PEXPIREAT', base .. 'v', st[2]) end
  end
  moved_gen = gen
end
-- The headroom of those queued behind, per dimension looked at (bit i of
-- `later_bits` for dimension i), for the reply.
local later_bits, later = 0, nil

-- Only a settlement with reservations charged after it looks at them (and
-- pays for making these functions).
local later_headroom
if later_ones then
  base = base or string.sub(KEYS[1], 1, -2)
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

  -- Whether class c still queues a reservation charged after this one (in
  -- a FIFO class the last slot has the latest id): if not, what its index
  -- holds after this one was left by cancelled ones and caps nothing.
  local behind = {}
  local function queues_after(c)
    if behind[c] == nil then
      local last = redis.call('ZRANGE', string.format('%sq%d', base, c), -1, -1)[1]
      behind[c] = last ~= nil and tonumber(last) > id
    end
    return behind[c]
  end

  -- The least headroom, in dimension i, of the reservations still queued (in any
  -- class) that were charged after this one, as its string; nil when none.
  later_headroom = function(i)
    local least, least_s = math.huge, nil
    local i_s = string.format('%d', i)
    local lo, hi = '[' .. i_s .. ':', '[' .. i_s .. ';'
    id_w = id_w or string.format('%020.0f', id)
    -- Just after every member of this reservation in lexicographic order.
    local from = '(' .. i_s .. ':' .. id_w .. ';'
    local c = 0
    while classes >= 2 ^ c do
      if classes % (2 ^ (c + 1)) >= 2 ^ c and queues_after(c) then
        local key = base .. 'h' .. c
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
          local s = string.match(next_one, '^%d+:%d+:[^:]+:([^:]+)')
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
-- The fields to write: the state, then refund counters (made on first need).
local set = nil
local m = 3
local full = now
local charged = false
-- What a cancellation could not give back, by dimension.
local left, returned, refunded_before = nil, nil, nil
if cancelled then
  left, returned = {0, 0, 0, 0}, {0, 0, 0, 0}
  refunded_before = {st[8], st[9], st[10], st[11]}
end
local any_left = false
-- What the headroom of those queued behind held back of a started one's
-- refund, by dimension (made on first need).
local held = nil
for k = 1, n do
  local a = 7 * k - 1
  local i = A[a]
  local tat = st[4 + i]
  local charge = A[a + 1]
  if charge > 0 then
    local next_tat = math.max(tat, now) + charge
    st[4 + i] = next_tat
    changed, charged = true, true
    if next_tat > full then full = next_tat end
  else
    -- Refund only what of this reservation still lies ahead on the TAT line
    -- (moved back by the refunds made since it was taken, unless it was still
    -- queued: then those stopped at its headroom), with what cancelled
    -- predecessors vacated just ahead of it and has not drained, and never
    -- below what the reservations queued after it were promised.
    local most = A[a + 2]
    local refunded = st[8 + i]
    local shift = 0
    if not queued then shift = refunded - A[a + 5] end
    local vac = 0
    if cancelled and ahead then vac = ahead[i + 1] end
    local vac_undrained = 0
    if vac > 0 then
      vac_undrained = min(math.max(min(slot, A[a + 6]) - now, 0), vac)
    end
    local wanted = most + vac
    local own = min(min(A[a + 4] - shift - now, A[a + 3]) + vac_undrained, tat - now)
    local undrained = own
    -- The reservations behind can only lower a refund there is.
    if later_ones and min(wanted, undrained) > 0 then
      local later_s = later_headroom(i)
      if later_s then
        later = later or {0, 0, 0, 0}
        later[i + 1] = tonumber(later_s)
        later_bits = later_bits + 2 ^ i
        undrained = min(undrained, tonumber(later_s) - refunded)
      end
    end
    local give = min(wanted, undrained)
    if started then
      -- What their headroom held back (tollgate_core::Settled::held).
      local kept = math.max(min(wanted, own) - math.max(give, 0), 0)
      if kept > 0 then
        held = held or {0, 0, 0, 0}
        held[i + 1] = kept
      end
    end
    if give > 0 then
      st[4 + i] = tat - give
      st[8 + i] = refunded + give
      changed = true
      if a_at and a_at[k] then
        set = set or {KEYS[1], 's', ''}
        set[m + 1] = fields[a_at[k] + 1]
        local before = h[a_at[k]]
        set[m + 2] = pack('<d', (before and unpack_d('<d', before) or 0) + give)
        m = m + 2
      end
    end
    if cancelled then
      left[i + 1] = wanted - math.max(give, 0)
      -- (The first of the queue gave it to every one behind already.)
      if give > 0 and not counts then returned[i + 1] = give end
    end
  end
end

-- A cancelled queued reservation hands what it could not give back to the
-- one charged right after it, when that one is queued behind it in its class
-- (directly, or through cancelled ones that forward to it).
if queued and cancelled then
  local first = nil
  local after = redis.call('ZRANGEBYSCORE', queue_key, string.format('%.17g', slot), '+inf', 'WITHSCORES', 'LIMIT', 0, 8)
  for j = 1, #after, 2 do
    local other = tonumber(after[j])
    if tonumber(after[j + 1]) > slot or other > id then
      first = other
      break
    end
  end
  if first then
    local v = base .. 'v'
    local nxt = id + 1
    while nxt ~= first do
      local w = tonumber(redis.call('HGET', v, 'w' .. string.format('%.0f', nxt)))
      if w and w > nxt and w <= first then nxt = w else nxt = nil break end
    end
    if nxt then
      -- (A new hash starts the class's generations anew.)
      if redis.call('HLEN', v) >= 2048 then
        redis.call('DEL', v)
        moved_gen = 0
      end
      local first_s = string.format('%.0f', first)
      local had = redis.call('HMGET', v, 'k' .. first_s, 'j' .. first_s)
      local t = {0, 0, 0, 0}
      if had[1] then t = {unpack_d('<dddd', had[1])} end
      -- What it gave back, with what was given back before it (j<id>).
      local g = {returned[1], returned[2], returned[3], returned[4],
        refunded_before[1], refunded_before[2], refunded_before[3], refunded_before[4]}
      if given_in then
        for d = 1, 4 do
          g[d] = g[d] + given_in[d]
          g[4 + d] = min(g[4 + d], given_in[4 + d])
        end
      end
      if had[2] then
        local f = {unpack_d('<dddddddd', had[2])}
        for d = 1, 4 do
          f[d] = f[d] + g[d]
          f[4 + d] = min(f[4 + d], g[4 + d])
        end
        g = f
      end
      redis.call('HSET', v, 'w' .. id_s, first_s,
        'k' .. first_s, pack('<dddd', t[1] + left[1], t[2] + left[2], t[3] + left[3], t[4] + left[4]),
        'j' .. first_s, pack('<dddddddd', g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]))
      -- What moved in to it is now the next one's.
      if moved_in then
        redis.call('HSET', v, 'h' .. first_s, moved_in .. pack('<d', moved_gen))
      else
        redis.call('HDEL', v, 'h' .. first_s)
      end
      if st[2] > 0 then redis.call('PEXPIREAT', v, st[2]) end
    end
  end
end

-- A started reservation hands what the headroom of those queued behind held
-- back of its refund to the one charged right after it, when that one is the
-- first queued in its class: nothing lies between them on the TAT line.
if held then
  local nxt = redis.call('ZRANGEBYSCORE', queue_key, '(' .. string.format('%.17g', now), '+inf', 'LIMIT', 0, 1)[1]
  if nxt and tonumber(nxt) == id + 1 then
    base = base or string.sub(KEYS[1], 1, -2)
    local v = base .. 'v'
    if redis.call('HLEN', v) >= 2048 then redis.call('DEL', v) end
    local f = 'k' .. string.format('%.0f', id + 1)
    local had = redis.call('HGET', v, f)
    local t = {0, 0, 0, 0}
    if had then t = {unpack_d('<dddd', had)} end
    redis.call('HSET', v, f, pack('<dddd', t[1] + held[1], t[2] + held[2], t[3] + held[3], t[4] + held[4]))
    if st[2] > 0 then redis.call('PEXPIREAT', v, st[2]) end
  end
end

-- Only a charge moves a TAT later; the hash must outlive the new backlog
-- (as in reserve.lua).
local expire_at
if charged then
  local margin = A[1]
  local needed = sec * 1000 + math.floor(usec / 1000) + math.ceil((full - now) * 1000) + margin
  local x = st[2]
  if x == 0 or x < needed then
    expire_at = needed + margin
    st[2] = expire_at
  end
end
if changed then
  if set then
    set[3] = store(st)
    redis.call('HSET', unpack(set))
  else
    redis.call('HSET', KEYS[1], 's', store(st))
  end
  if expire_at then redis.call('PEXPIREAT', KEYS[1], expire_at) end
end

-- The reply: the code 0, the time, whether it was queued, which headrooms
-- follow, the lengths of the state and of the vacated seconds; then those.
-- ('c0' packs a whole string: one string made, not two.)
if not (later or ahead) then
  return pack('<BddBBBBc0', 0, sec, usec, queued and 1 or 0, later_bits, blob and #blob or 0, 0, blob or '')
end
local reply = pack('<BddBBBB', 0, sec, usec, queued and 1 or 0, later_bits, blob and #blob or 0, ahead and 32 or 0)
if later then
  for i = 0, 3 do
    if later_bits % (2 ^ (i + 1)) >= 2 ^ i then reply = reply .. pack('<d', later[i + 1]) end
  end
end
if blob then reply = reply .. blob end
if ahead then reply = reply .. pack('<dddd', ahead[1], ahead[2], ahead[3], ahead[4]) end
return reply
