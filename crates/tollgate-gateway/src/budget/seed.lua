-- Rebuild a client's spend from the ledger after the store lost it (Redis
-- restarted empty, or a new month): raise each counter to at least what the
-- ledger holds (never lower: settlements that arrived since the loss are
-- already in it, and the ledger may lack this instance's last rows), then
-- mark the month seeded so that reservations go ahead again.
--
-- KEYS[1]  spend of the day    (integer nano-USD), e.g. tollgate:spend:{acme}:d:20000
-- KEYS[2]  spend of the month  (integer nano-USD), e.g. tollgate:spend:{acme}:m:202406
-- KEYS[3]  the seed mark, e.g. tollgate:spend:{acme}:seeded:202406
-- ARGV[1]  the ledger's spend today (nano-USD)
-- ARGV[2]  the ledger's spend this month (nano-USD)
-- ARGV[3]  TTL of the day key, seconds
-- ARGV[4]  TTL of the month key and of the mark, seconds
-- Returns 1 when this call seeded, 0 when the month was seeded already.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local day = tonumber(redis.call('GET', KEYS[1]) or '0')
local month = tonumber(redis.call('GET', KEYS[2]) or '0')
local want_day = tonumber(ARGV[1])
local want_month = tonumber(ARGV[2])
if want_day > day then
  redis.call('SET', KEYS[1], want_day, 'EX', ARGV[3])
end
if want_month > month then
  redis.call('SET', KEYS[2], want_month, 'EX', ARGV[4])
end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[4])
return 1
