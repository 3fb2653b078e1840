-- snapshot.lua: reads a key's state and counts its queued reservations. Writes nothing.
--
-- KEYS[1]  the key's state hash (see reserve.lua)
-- KEYS[2..] the queues of every class (0, 1, ...)
--
-- Reply: {time_sec, time_usec, tat0..tat3, refunded0..refunded3, queue_depth}
-- with the floats as stored (8-byte little-endian doubles; nil for a missing
-- field).

local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 't0', 't1', 't2', 't3', 'r0', 'r1', 'r2', 'r3')
-- Queued means a slot still ahead: entries at or before now are stale.
local after_now = string.format('(%.17g', now)
local depth = 0
for k = 2, #KEYS do
  depth = depth + redis.call('ZCOUNT', KEYS[k], after_now, '+inf')
end
return {time[1], time[2],
  h[1] or false, h[2] or false, h[3] or false, h[4] or false,
  h[5] or false, h[6] or false, h[7] or false, h[8] or false,
  depth}
