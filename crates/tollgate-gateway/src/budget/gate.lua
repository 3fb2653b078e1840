-- gate.lua: an admission's spend budgets as the gate of the limit store's
-- joint reservation (together.lua, see tollgate's store::GateScript): each
-- level's reservation exactly as reserve.lua makes it alone (it runs ahead
-- of this as reserve_spend(KEYS, ARGV)), innermost level first, all or
-- nothing.
--
-- KEYS  four per level with budgets, innermost first: reserve.lua's KEYS
-- ARGV  seven per level, in the same order: reserve.lua's ARGV
-- gate replies {0} when every level took the estimate, else {level (1 =
-- innermost), status, day_spent, month_spent} with reserve.lua's status and
-- spent values for the level that did not, and nothing stays reserved.

-- Gives back a reservation reserve_spend made in this call (a fresh hold:
-- it added the amount to both counters and wrote the hold). The counters'
-- renewed expiry stays.
local function unreserve_spend(KEYS, ARGV)
  redis.call('DECRBY', KEYS[1], ARGV[1])
  redis.call('DECRBY', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
end

-- Level l's keys and arguments.
local function level(KEYS, ARGV, l)
  local k, a = {}, {}
  for i = 1, 4 do k[i] = KEYS[4 * (l - 1) + i] end
  for i = 1, 7 do a[i] = ARGV[7 * (l - 1) + i] end
  return k, a
end

local function gate(KEYS, ARGV)
  for l = 1, #KEYS / 4 do
    local k, a = level(KEYS, ARGV, l)
    local r = reserve_spend(k, a)
    if r[1] ~= 0 then
      for m = l - 1, 1, -1 do unreserve_spend(level(KEYS, ARGV, m)) end
      return {l, r[1], r[2], r[3]}
    end
  end
  return {0}
end

local function ungate(KEYS, ARGV)
  for l = #KEYS / 4, 1, -1 do unreserve_spend(level(KEYS, ARGV, l)) end
end
