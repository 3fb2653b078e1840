-- reserve.lua: one GCRA reservation over up to four dimensions, atomically.
-- The same arithmetic, in the same order of operations, as tollgate_core::reserve.
--
-- KEYS[1]  the key's state hash: t0..t3 (TAT per dimension, seconds),
--          r0..r3 (refunds so far per dimension, seconds), n (last reservation id),
--          c (bit set of the classes that ever queued), x (when the keys expire,
--          Unix milliseconds)
-- KEYS[2]  the class's queue: sorted set, member = reservation id, score = slot
-- KEYS[3]  the class's headroom index: one sorted set, all scores 0, members
--          "<dimension>:<id, 20 digits>:<slot>:<headroom>" in lexicographic
--          (= dimension, then id) order. Per dimension it is the monotonic
--          queue of the memory store: headrooms grow with the id, so the first
--          entry after an id holds the least headroom of the later reservations
--          (see settle.lua).
-- ARGV[1]  tolerance of the class, tau * headroom (seconds)
-- ARGV[2]  longest acceptable wait in seconds, "" for none
-- ARGV[3]  most reservations that may wait in the class's queue, "" for none
-- ARGV[4]  idle margin in milliseconds: the keys expire between one and two
--          margins after the backlog has drained (the expiry moves only when it
--          falls short, so a busy key is not re-expired on every call)
-- ARGV[5]  the class (0..15)
-- ARGV[6]  the caller's deadline on this server's clock (seconds), "" for
--          none: a call that arrives later (its caller timed out, e.g. while
--          Redis was paused) writes nothing
-- ARGV[7..] four values per limited dimension, in index order:
--          index (0..3), increment T (seconds per unit), cost (units),
--          capacity (burst * limit, units)
--
-- Reply, floats as '%.17g' strings (Redis would truncate Lua numbers to integers):
--   {1, slot ("" when it is the time of the call), time_sec, time_usec, id, position,
--    tat0..tat3 before the charge, refunded_at0..refunded_at3}
--   The caller derives the mark's end (max(tat, slot) + cost * T, the new TAT)
--   and gap (max(slot - tat, 0)) from these with the same operations.
--   followed, when the reservation is queued, by the class's refund counters
--   a<class>:0..3 (refunds by its started reservations, seconds; see advance.lua)
--   {2, dimension}          the request costs more than the bucket holds
--   {3, wait}               the slot is further than the longest acceptable wait
--   {4, wait, queued}       the class's queue is full
--   {5}                     past the caller's deadline
-- Nothing is written unless the reply is 1.

if redis.replicate_commands then redis.replicate_commands() end

local fmt = string.format
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
if ARGV[6] ~= '' and now > tonumber(ARGV[6]) then return {5} end
local h = redis.call('HMGET', KEYS[1], 't0', 't1', 't2', 't3', 'r0', 'r1', 'r2', 'r3', 'n', 'c', 'x')
local tolerance = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local max_queue = tonumber(ARGV[3])
local classes = tonumber(h[10]) or 0
local class_bit = 2 ^ tonumber(ARGV[5])
local class_used = classes % (2 * class_bit) >= class_bit

-- The queue holds reservations whose slot is still ahead; drop the rest and
-- start no earlier than the last one (FIFO within the class). A class that
-- never queued has nothing to look at.
local slot = now
local queued = 0
if class_used then queued = redis.call('ZCARD', KEYS[2]) end
if queued > 0 then
  queued = queued - redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt('%.17g', now))
  if queued > 0 then
    local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    slot = math.max(now, tonumber(last[2]))
  end
end

local dims = (#ARGV - 6) / 4
local index, tat, charge = {}, {}, {}
for k = 1, dims do
  local a = 4 * k + 3
  local i = tonumber(ARGV[a])
  local inc, cost, capacity = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if cost > capacity then
    return {2, i}
  end
  index[k] = i
  tat[k] = tonumber(h[i + 1]) or 0
  charge[k] = cost * inc
  slot = math.max(slot, tat[k] + charge[k] - tolerance)
end

local wait = slot - now
if wait > 0 then
  if max_wait and wait > max_wait then
    return {3, fmt('%.17g', wait)}
  end
  if max_queue and queued >= max_queue then
    return {4, fmt('%.17g', wait), queued}
  end
end

local id = tonumber(h[9])
if not id then
  -- A new (or expired) key: ids continue from the clock in microseconds, so
  -- they never repeat.
  id = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
id = id + 1

-- Numbers handed to redis.call are written with 17 significant digits by Redis
-- itself (integers exactly): as exact as string.format, and much cheaper.
local fields = {'n', id}
local headroom = {}
local full = slot
for k = 1, dims do
  local next_tat = math.max(tat[k], slot) + charge[k]
  fields[#fields + 1] = 't' .. index[k]
  fields[#fields + 1] = next_tat
  if next_tat > full then full = next_tat end
  -- How far the TAT lay beyond the slot before this charge.
  headroom[k] = tat[k] - slot
end

local queue_it = slot > now
if queue_it and not class_used then
  fields[#fields + 1] = 'c'
  fields[#fields + 1] = classes + class_bit
end
-- Keep the keys until the backlog has drained plus the margin; the queues
-- below expire with the hash.
local margin = tonumber(ARGV[4])
local ttl = math.ceil((full - now) * 1000) + margin
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expire_at = tonumber(h[11])
local extend = not expire_at or expire_at < now_ms + ttl
if extend then
  expire_at = now_ms + ttl + margin
  fields[#fields + 1] = 'x'
  fields[#fields + 1] = expire_at
end
redis.call('HSET', KEYS[1], unpack(fields))
if extend then redis.call('PEXPIREAT', KEYS[1], expire_at) end

-- A slot at the time of the call goes back as "", the usual case, and costs no
-- formatting.
local slot_s = ''
if queue_it then
  slot_s = fmt('%.17g', slot)
  redis.call('ZADD', KEYS[2], slot_s, id)
  redis.call('PEXPIREAT', KEYS[2], expire_at)
  local id_w = fmt('%020.0f', id)
  for k = 1, dims do
    local i = index[k]
    local lo, hi = '[' .. i .. ':', '[' .. i .. ';'
    -- Entries whose slot has passed leave from the front...
    while true do
      local first = redis.call('ZRANGEBYLEX', KEYS[3], lo, hi, 'LIMIT', 0, 1)[1]
      if not first or tonumber(string.match(first, '^%d+:%d+:([^:]+):')) > now then break end
      redis.call('ZREM', KEYS[3], first)
    end
    -- ...and entries with at least this headroom from the back.
    local value = headroom[k] + (tonumber(h[i + 5]) or 0)
    while true do
      local last = redis.call('ZREVRANGEBYLEX', KEYS[3], hi, lo, 'LIMIT', 0, 1)[1]
      if not last or tonumber(string.match(last, ':([^:]+)$')) < value then break end
      redis.call('ZREM', KEYS[3], last)
    end
    redis.call('ZADD', KEYS[3], 0, i .. ':' .. id_w .. ':' .. slot_s .. ':' .. fmt('%.17g', value))
  end
  redis.call('PEXPIREAT', KEYS[3], expire_at)
end

local reply = {1, slot_s, time[1], time[2], id, queued,
  h[1] or '0', h[2] or '0', h[3] or '0', h[4] or '0',
  h[5] or '0', h[6] or '0', h[7] or '0', h[8] or '0'}
if queue_it then
  -- A queued reservation remembers its class's refunds by started reservations
  -- (see advance.lua).
  local c = ARGV[5]
  local a = redis.call('HMGET', KEYS[1], 'a' .. c .. ':0', 'a' .. c .. ':1', 'a' .. c .. ':2', 'a' .. c .. ':3')
  for i = 1, 4 do reply[#reply + 1] = a[i] or '0' end
end
return reply
