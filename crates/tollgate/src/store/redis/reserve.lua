-- reserve.lua: one GCRA reservation over up to four dimensions, atomically.
-- The same arithmetic, in the same order of operations, as tollgate_core::reserve.
--
-- KEYS[1]  the key's state hash: t0..t3 (TAT per dimension, seconds),
--          r0..r3 (refunds so far per dimension, seconds), n (last reservation id),
--          c (bit set of the classes that ever queued), x (when the keys expire,
--          Unix milliseconds), a<class>:<dimension> (see advance.lua); every
--          number but c an 8-byte little-endian double
-- KEYS[2]  the class's queue: sorted set, member = reservation id, score = slot
-- KEYS[3]  the class's headroom index: one sorted set, all scores 0, members
--          "<dimension>:<id, 20 digits>:<slot>:<headroom>" in lexicographic
--          (= dimension, then id) order. Per dimension it is the monotonic
--          queue of the memory store: headrooms grow with the id, so the first
--          entry after an id holds the least headroom of the later reservations
--          (see settle.lua).
-- KEYS[4]  the store's epoch: "<id> <lost_at>", written once when the first
--          key of an empty store is created; lost_at (seconds) is when the
--          store was found to have lost its state, 0 for a store that was new.
--          A store that restarted empty has lost it too.
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
-- ARGV[7]  tau, the tolerance of a full bucket (seconds); 0 when a store that
--          lost its state is trusted to be full (AfterReset::Full)
-- ARGV[8]  the epoch the caller last saw, "" for none
-- ARGV[9..] three values per limited dimension, in index order: index (0..3),
--          charge = cost * T (seconds), and the highest TAT the caller was
--          told for this dimension of this key ("" for none)
--
-- A key without state (new, expired while idle, or lost) reads the epoch. An
-- epoch that is missing although the caller saw one means the store lost
-- everything: the epoch is written anew with lost_at = now. While a lost
-- store's buckets would still be refilling (lost_at + tau ahead), a key
-- without state starts drained: its TAT is lost_at + tau, or the TAT the
-- caller was told if that is later (its own reservations still waiting).
--
-- Reply, computed floats as '%.17g' strings (Redis would truncate Lua numbers to
-- integers), the state's as stored (8-byte doubles; nil for none):
--   {1, slot ("" when it is the time of the call), time_sec, time_usec, id, position,
--    classes (the bit set c), epoch ("" unless read), then for each limited
--    dimension in index order its tat before the charge and refunded_at}
--   The caller derives the mark's end (max(tat, slot) + cost * T, the new TAT)
--   and gap (max(slot - tat, 0)) from these with the same operations; an
--   unlimited dimension's are 0.
--   followed, when the reservation is queued, by the class's refund counters
--   a<class>:<dimension> for each limited dimension (see advance.lua)
--   {3, wait}               the slot is further than the longest acceptable wait
--   {4, wait, queued}       the class's queue is full
--   {5}                     past the caller's deadline
-- Nothing is written unless the reply is 1 (but a missing epoch).
-- (A request that costs more than the bucket holds never gets here: the
-- caller refuses it.)

-- Redis 5 or later: a script that reads TIME may write (effects replication).
-- The numbers of the state hash are stored as 8-byte little-endian doubles
-- (struct.pack '<d'): exact, and far cheaper than decimal text to write and
-- read (the formatting was most of what these scripts cost).
local pack, unpack_d = struct.pack, struct.unpack
local function num(s)
  if s then return (unpack_d('<d', s)) end
end

-- Every number below is parsed from a string once: parsing and formatting
-- are most of what this script costs.
local tonumber, max = tonumber, math.max
-- Removes entries from one end of a range of a headroom index while `gone`
-- says so, eight at a time (one look and one removal in the usual case).
local function trim(key, cmd, from, to, gone)
  local n = 8
  while true do
    local batch = redis.call(cmd, key, from, to, 'LIMIT', 0, n)
    local out = {}
    for _, e in ipairs(batch) do
      if not gone(e) then break end
      out[#out + 1] = e
    end
    if #out > 0 then redis.call('ZREM', key, unpack(out)) end
    if #out < n then return end
  end
end

local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000
if ARGV[6] ~= '' and now > tonumber(ARGV[6]) then return {5} end
local dims = (#ARGV - 8) / 3
-- n, c, x, then TAT and refunds of each limited dimension.
local fields = {KEYS[1], 'n', 'c', 'x'}
for k = 1, dims do
  local i = ARGV[3 * k + 6]
  fields[2 * k + 3] = 't' .. i
  fields[2 * k + 4] = 'r' .. i
end
local h = redis.call('HMGET', unpack(fields))
local classes = tonumber(h[2]) or 0
local class = ARGV[5]

-- The queue holds reservations whose slot is still ahead; drop the rest and
-- start no earlier than the last one (FIFO within the class). A class that
-- never queued has nothing to look at.
local slot = now
local queued = 0
local class_bit, class_used = 0, false
if classes > 0 then
  class_bit = 2 ^ tonumber(class)
  class_used = classes % (2 * class_bit) >= class_bit
end
if class_used then queued = redis.call('ZCARD', KEYS[2]) end
if queued > 0 then
  queued = queued - redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.17g', now))
  if queued > 0 then
    local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    slot = max(now, tonumber(last[2]))
  end
end

-- A key without state: is it new, idle, or lost with the whole store?
local epoch = ''
local floor = nil
if not h[1] then
  epoch = redis.call('GET', KEYS[4])
  if not epoch then
    local lost = '0'
    if ARGV[8] ~= '' then lost = string.format('%.17g', now) end
    epoch = string.format('%s%06d %s', time[1], usec, lost)
    redis.call('SET', KEYS[4], epoch)
  end
  local lost = tonumber(string.match(epoch, ' (%S+)$')) or 0
  local tau = tonumber(ARGV[7])
  if lost > 0 and tau > 0 and lost + tau > now then floor = lost + tau end
end

local tolerance = tonumber(ARGV[1])
local tat, charge = {}, {}
for k = 1, dims do
  local a = 3 * k + 6
  local t = num(h[2 * k + 2]) or 0
  if floor then
    -- Drained: as if the last window had been used in full, or as far as
    -- the caller's own reservations reach.
    local known = tonumber(ARGV[a + 2])
    local drained = floor
    if known and known > drained then drained = known end
    if drained > t then
      t = drained
      h[2 * k + 2] = pack('<d', t)
    end
  end
  tat[k] = t
  local c = tonumber(ARGV[a + 1])
  charge[k] = c
  slot = max(slot, t + c - tolerance)
end

local wait = slot - now
if wait > 0 then
  local max_wait = tonumber(ARGV[2])
  if max_wait and wait > max_wait then
    return {3, string.format('%.17g', wait)}
  end
  local max_queue = tonumber(ARGV[3])
  if max_queue and queued >= max_queue then
    return {4, string.format('%.17g', wait), queued}
  end
end

-- A new (or expired) key: ids continue from the clock in microseconds, so
-- they never repeat.
local id = (num(h[1]) or (sec * 1000000 + usec)) + 1

local set = {KEYS[1], 'n', pack('<d', id)}
local m = 3
local full = slot
for k = 1, dims do
  local next_tat = max(tat[k], slot) + charge[k]
  set[m + 1] = fields[2 * k + 3]
  set[m + 2] = pack('<d', next_tat)
  m = m + 2
  if next_tat > full then full = next_tat end
end

local queue_it = slot > now
if queue_it and not class_used then
  if class_bit == 0 then class_bit = 2 ^ tonumber(class) end
  classes = classes + class_bit
  set[m + 1] = 'c'
  set[m + 2] = classes
  m = m + 2
  h[2] = tostring(classes)
end
-- Keep the keys until the backlog has drained plus the margin; the queues
-- below expire with the hash.
local margin = tonumber(ARGV[4])
local now_ms = sec * 1000 + math.floor(usec / 1000)
local needed = now_ms + math.ceil((full - now) * 1000) + margin
local expire_at = num(h[3])
local extend = not expire_at or expire_at < needed
if extend then
  expire_at = needed + margin
  set[m + 1] = 'x'
  set[m + 2] = pack('<d', expire_at)
end
redis.call('HSET', unpack(set))
if extend then redis.call('PEXPIREAT', KEYS[1], expire_at) end

-- A slot at the time of the call goes back as "", the usual case, and costs no
-- formatting.
local slot_s = ''
local reply = {1, slot_s, time[1], time[2], id, queued, h[2] or '0', epoch}
for k = 1, dims do
  reply[2 * k + 7] = h[2 * k + 2] or false
  reply[2 * k + 8] = h[2 * k + 3] or false
end
if queue_it then
  slot_s = string.format('%.17g', slot)
  reply[2] = slot_s
  redis.call('ZADD', KEYS[2], slot_s, id)
  redis.call('PEXPIREAT', KEYS[2], expire_at)
  local id_w = string.format('%020.0f', id)
  for k = 1, dims do
    local i = ARGV[3 * k + 6]
    local lo, hi = '[' .. i .. ':', '[' .. i .. ';'
    -- Entries whose slot has passed leave from the front...
    trim(KEYS[3], 'ZRANGEBYLEX', lo, hi, function(e)
      return tonumber(string.match(e, '^%d+:%d+:([^:]+):')) <= now
    end)
    -- ...and entries with at least this headroom from the back.
    local value = tat[k] - slot + (num(h[2 * k + 3]) or 0)
    trim(KEYS[3], 'ZREVRANGEBYLEX', hi, lo, function(e)
      return tonumber(string.match(e, ':([^:]+)$')) >= value
    end)
    redis.call('ZADD', KEYS[3], 0, i .. ':' .. id_w .. ':' .. slot_s .. ':' .. string.format('%.17g', value))
  end
  redis.call('PEXPIREAT', KEYS[3], expire_at)
  -- A queued reservation remembers its class's refunds by started
  -- reservations (see advance.lua).
  local a = {KEYS[1]}
  for k = 1, dims do a[k + 1] = 'a' .. class .. ':' .. ARGV[3 * k + 6] end
  a = redis.call('HMGET', unpack(a))
  for k = 1, dims do reply[2 * dims + 8 + k] = a[k] or false end
end
return reply
