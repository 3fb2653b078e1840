-- settle_many.lua: settles (or cancels) one or more reservations of one key
-- in one call, in the order given, each exactly as settle.lua alone would
-- (settle.lua runs ahead of this as the function settle_one(KEYS, ARGV),
-- once per settlement, with that settlement's keys and arguments): a batch
-- of concurrent settlements pays one call's fixed cost.
--
-- KEYS[1]  the key's state hash (see reserve.lua)
-- ARGV[j]  settlement j's argument (settle.lua's ARGV[1])
--
-- Reply: one settlement's reply as settle.lua gives it; for several, each
-- one's reply after its length (two bytes, little-endian), in order.

local n = #ARGV
if n == 1 then return settle_one(KEYS, ARGV) end
local out = {}
for j = 1, n do
  local r = settle_one(KEYS, {ARGV[j]})
  out[j] = struct.pack('<I2', #r) .. r
end
return table.concat(out)
