-- settle_many.lua: settles (or cancels) one or more reservations of one key
-- in one call, in the order given, each exactly as settle.lua alone would
-- (settle.lua runs ahead of this as the function settle_one(KEYS, ARGV),
-- once per settlement, with that settlement's keys and arguments): a batch
-- of concurrent settlements pays one call's fixed cost.
--
-- KEYS[1]      the key's state hash (see reserve.lua)
-- KEYS[1 + j]  the class queue of settlement j (settle.lua's KEYS[2])
-- ARGV[2j - 1], ARGV[2j]  settlement j's two arguments (settle.lua's ARGV)
--
-- Reply: one settlement's reply as settle.lua gives it; for several, each
-- one's reply after its length (two bytes, little-endian), in order.

local n = #ARGV / 2
if n == 1 then return settle_one(KEYS, ARGV) end
local out = {}
for j = 1, n do
  local r = settle_one({KEYS[1], KEYS[1 + j]}, {ARGV[2 * j - 1], ARGV[2 * j]})
  out[j] = struct.pack('<I2', #r) .. r
end
return table.concat(out)
