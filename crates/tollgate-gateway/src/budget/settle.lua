-- Settle a request's spend: add the difference between its actual cost and
-- what was reserved for it (negative when it cost less) to the client's daily
-- and monthly counters, and renew their expiry (a client without a budget
-- reserved nothing, so this may create them).
--
-- KEYS[1]  spend of the day    (integer nano-USD), e.g. tollgate:spend:{acme}:d:20000
-- KEYS[2]  spend of the month  (integer nano-USD), e.g. tollgate:spend:{acme}:m:202406
-- ARGV[1]  difference (nano-USD)
-- ARGV[2]  TTL of the day key, seconds
-- ARGV[3]  TTL of the month key, seconds
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 0
