-- Reserve an estimated cost against a client's daily and monthly budgets,
-- atomically: either both counters take it or nothing is written.
--
-- KEYS[1]  spend of the day    (integer nano-USD), e.g. tollgate:spend:{acme}:d:20000
-- KEYS[2]  spend of the month  (integer nano-USD), e.g. tollgate:spend:{acme}:m:202406
-- ARGV[1]  amount to reserve (nano-USD, >= 0)
-- ARGV[2]  daily limit (nano-USD), -1 for none
-- ARGV[3]  monthly limit (nano-USD), -1 for none
-- ARGV[4]  TTL of the day key, seconds
-- ARGV[5]  TTL of the month key, seconds
-- Returns {status, day_spent, month_spent}: status 0 = reserved, 1 = daily
-- budget refused, 2 = monthly budget refused (spent values before the call).
local day = tonumber(redis.call('GET', KEYS[1]) or '0')
local month = tonumber(redis.call('GET', KEYS[2]) or '0')
local amount = tonumber(ARGV[1])
local daily = tonumber(ARGV[2])
local monthly = tonumber(ARGV[3])
if daily >= 0 and day + amount > daily then
  return {1, day, month}
end
if monthly >= 0 and month + amount > monthly then
  return {2, day, month}
end
redis.call('INCRBY', KEYS[1], amount)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('INCRBY', KEYS[2], amount)
redis.call('EXPIRE', KEYS[2], ARGV[5])
return {0, day + amount, month + amount}
