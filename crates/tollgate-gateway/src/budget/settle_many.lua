-- settle_many.lua: settles the spend of several requests (of any clients, on
-- a standalone Redis; of one account, sharing its hash tag, on a Cluster) in
-- one call, in the order given, each exactly as settle.lua alone would
-- (settle.lua runs ahead of this as the function settle_one(KEYS, ARGV),
-- once per settlement, with that settlement's keys and arguments): a batch
-- pays one call's fixed cost, and each settlement stays idempotent through
-- its own hold key, so a batch sent again changes nothing.
--
-- KEYS[3j - 2], KEYS[3j - 1], KEYS[3j]  settlement j's keys (settle.lua's KEYS)
-- ARGV[5j - 4] .. ARGV[5j]              settlement j's arguments (settle.lua's ARGV)
--
-- Reply: settle.lua's reply of each settlement (1 settled now, 0 settled
-- before), in order.

local out = {}
for j = 1, #KEYS / 3 do
  local k, a = 3 * (j - 1), 5 * (j - 1)
  out[j] = settle_one({KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]},
    {ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]})
end
return out
