-- Settle a request's spend, exactly once however often it is sent: add the
-- difference between its actual cost and what its hold reserved (negative
-- when it cost less) to the client's daily and monthly counters, renew their
-- expiry, and delete the hold (a retry then finds none and charges nothing).
-- A client without a budget reserved nothing: its whole cost is added (this
-- may create the counters) and the hold is marked settled for a while.
--
-- KEYS[1]  spend of the day    (integer nano-USD), e.g. tollgate:spend:{acme}:d:20000
-- KEYS[2]  spend of the month  (integer nano-USD), e.g. tollgate:spend:{acme}:m:202406
-- KEYS[3]  the hold (see reserve.lua)
-- ARGV[1]  actual cost (nano-USD, >= 0; 0 cancels a reservation)
-- ARGV[2]  1 when the hold was reserved by reserve.lua, 0 when nothing was
-- ARGV[3]  TTL of the day key, seconds
-- ARGV[4]  TTL of the month key, seconds
-- ARGV[5]  TTL of a settled mark, seconds (longer than any retry)
-- Returns 1 when this call settled, 0 when an earlier one had.
local held = redis.call('GET', KEYS[3])
if held == 's' then
  return 0
end
local delta = tonumber(ARGV[1])
if ARGV[2] == '1' then
  if not held then
    -- The reservation has not arrived (or its hold expired): mark it, so
    -- that a late reservation is not made, and charge nothing.
    redis.call('SET', KEYS[3], 's', 'EX', ARGV[5])
    return 0
  end
  delta = delta - tonumber(held)
end
if delta ~= 0 then
  redis.call('INCRBY', KEYS[1], delta)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('INCRBY', KEYS[2], delta)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[3])
else
  redis.call('SET', KEYS[3], 's', 'EX', ARGV[5])
end
return 1
