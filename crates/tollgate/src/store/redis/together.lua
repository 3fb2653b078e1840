-- together.lua: reservations on several keys in one call, all or nothing
-- (see store/redis/together.rs). reserve.lua runs ahead of this as the
-- function reserve_one(KEYS, ARGV), once per part, with that part's state
-- key and the epoch; a caller's gate (gate(KEYS, ARGV) and
-- ungate(KEYS, ARGV), e.g. a spend budget) runs ahead of the part it is
-- placed before.
--
-- KEYS[1]      the store's epoch (one for a standalone server)
-- KEYS[1 + i]  part i's state hash, i = 1..n
-- KEYS[n + 2…] the gate's keys
-- ARGV[1]      n, the number of parts
-- ARGV[2]      the part the gate runs before (1..n; 0: no gate)
-- ARGV[3]      the number of the gate's keys
-- ARGV[3 + i]  part i's argument (reserve.lua's ARGV[1]); every part but
--              the last asks not to wait (its longest wait 0), so that it
--              is granted at once or writes nothing
-- ARGV[n + 4…] the gate's arguments
--
-- Reply: {stop, gate, record_1, …, record_k}: stop 0 when every part was
-- granted (k = n); i when part i was refused (k = i); -i when the gate
-- before part i refused (k = i - 1). gate: the gate's reply (0 for none).
-- A refusal leaves nothing reserved: the parts granted before it get their
-- state and expiry back (they were granted at once, so that is all they
-- wrote), and a gate that passed is undone by ungate. Only the store's
-- epoch, written when it was missing, stays (as after any refusal).

local n, gate_at, gate_keys = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local gk, ga = {}, {}
for i = 1, gate_keys do gk[i] = KEYS[n + 1 + i] end
for i = n + 4, #ARGV do ga[#ga + 1] = ARGV[i] end

local saved, out = {}, {0, 0}
-- Gives parts `upto` down to 1 their state before this call back.
local function undo(upto)
  for i = upto, 1, -1 do
    local key, blob = KEYS[1 + i], saved[i]
    if blob then
      redis.call('HSET', key, 's', blob)
      -- The hash expires when its state says (reserve.lua keeps them equal).
      local x = load(blob)[2]
      if x > 0 then redis.call('PEXPIREAT', key, x) end
    else
      redis.call('HDEL', key, 's')
    end
  end
end

local gated = false
for i = 1, n do
  if i == gate_at then
    local g = gate(gk, ga)
    out[2] = g
    if g[1] ~= 0 then
      undo(i - 1)
      out[1] = -i
      return out
    end
    gated = true
  end
  local key = KEYS[1 + i]
  saved[i] = redis.call('HGET', key, 's')
  local rec = reserve_one({key, KEYS[1]}, {ARGV[3 + i]})
  out[2 + i] = rec
  if string.byte(rec, 1) ~= 1 then
    if gated then ungate(gk, ga) end
    undo(i - 1)
    out[1] = i
    return out
  end
end
return out
