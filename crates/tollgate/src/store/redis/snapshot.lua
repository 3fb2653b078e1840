-- snapshot.lua: reads a key's state and counts its queued reservations. Writes nothing.
--
-- KEYS[1]  the key's state hash (see reserve.lua)
-- KEYS[2..] the queues of every class (0, 1, ...)
--
-- Reply: {time_sec, time_usec, state, queue_depth} with the state as stored
-- (field s, see reserve.lua; nil for none).

local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local state = redis.call('HGET', KEYS[1], 's')
-- Queued means a slot still ahead: entries at or before now are stale.
local after_now = string.format('(%.17g', now)
local depth = 0
for k = 2, #KEYS do
  depth = depth + redis.call('ZCOUNT', KEYS[k], after_now, '+inf')
end
return {time[1], time[2], state or false, depth}
