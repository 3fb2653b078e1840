-- Reserve an estimated cost against a client's daily and monthly budgets,
-- atomically: either both counters take it or nothing is written. The hold
-- key makes it idempotent: a retry of a reservation already made changes
-- nothing, and a reservation whose cancellation arrived first (its caller
-- gave up on it) is not made.
--
-- KEYS[1]  spend of the day    (integer nano-USD), e.g. tollgate:spend:{acme}:d:20000
-- KEYS[2]  spend of the month  (integer nano-USD), e.g. tollgate:spend:{acme}:m:202406
-- KEYS[3]  the hold,           e.g. tollgate:spend:{acme}:h:0192f0c1...: the amount
--          reserved, or 's' once settled or cancelled
-- KEYS[4]  the month's seed mark (see seed.lua), e.g. tollgate:spend:{acme}:seeded:202406
-- ARGV[1]  amount to reserve (nano-USD, >= 0)
-- ARGV[2]  daily limit (nano-USD), -1 for none
-- ARGV[3]  monthly limit (nano-USD), -1 for none
-- ARGV[4]  TTL of the day key, seconds
-- ARGV[5]  TTL of the month key, seconds
-- ARGV[6]  TTL of the hold key, seconds
-- ARGV[7]  1 when spend is rebuilt from a ledger: without the seed mark the
--          counters may have been lost, and nothing is reserved (status 4)
-- Returns {status, day_spent, month_spent}: status 0 = reserved (now or by
-- an earlier try), 1 = daily budget refused, 2 = monthly budget refused,
-- 3 = already settled or cancelled (spent values before the call), 4 = the
-- month is not seeded from the ledger yet (nothing written).
local day = tonumber(redis.call('GET', KEYS[1]) or '0')
local month = tonumber(redis.call('GET', KEYS[2]) or '0')
local held = redis.call('GET', KEYS[3])
if held == 's' then
  return {3, day, month}
end
if held then
  return {0, day, month}
end
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[4]) == 0 then
  return {4, day, month}
end
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
redis.call('SET', KEYS[3], amount, 'EX', ARGV[6])
return {0, day + amount, month + amount}
