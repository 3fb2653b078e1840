-- advance.lua: moves a queued reservation to an earlier slot when refunds of
-- the started reservations of its class made room ahead of it.
-- The same arithmetic as tollgate_core::advance (see it for why this is safe).
--
-- KEYS[1]  the key's state hash (see reserve.lua): a<class>:<dimension> are the
--          class's refunds by started reservations (seconds, see settle.lua)
-- KEYS[2]  the reservation's class queue (member = id, score = slot)
-- ARGV[1]  the reservation's id
-- ARGV[2]  tolerance of the class, tau * headroom (seconds)
-- ARGV[3]  the class
-- ARGV[4..] five values per limited dimension, in index order: index (0..3),
--          increment T (seconds per unit), cost (units), the TAT before the
--          reservation's charge, and the class's refund counter when it was taken
--
-- Reply: {0} when it stays (or is no longer queued);
--        {1, slot, time_sec, time_usec} when it moved (slot as '%.17g').

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
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score then return {0} end
local slot = tonumber(score)
if slot <= now then return {0} end
-- FIFO: never before the reservation queued just ahead: one at the very same
-- slot with a smaller id pins it; otherwise the latest slot before its own.
local id = tonumber(ARGV[1])
for _, other in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], score, score)) do
  if tonumber(other) < id then return {0} end
end
local earliest = now
local prev = redis.call('ZREVRANGEBYSCORE', KEYS[2], '(' .. score, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
if prev[2] then earliest = math.max(earliest, tonumber(prev[2])) end

local tolerance = tonumber(ARGV[2])
local c = ARGV[3]
for a = 4, #ARGV, 5 do
  local i = ARGV[a]
  local inc, cost, before, at = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local since = (num(redis.call('HGET', KEYS[1], 'a' .. c .. ':' .. i)) or 0) - at
  earliest = math.max(earliest, before - since + cost * inc - tolerance)
end
if earliest >= slot then return {0} end

local slot_s = string.format('%.17g', earliest)
if earliest > now then
  redis.call('ZADD', KEYS[2], 'XX', slot_s, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return {1, slot_s, time[1], time[2]}
