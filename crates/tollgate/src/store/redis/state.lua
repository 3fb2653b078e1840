-- state.lua: how reserve.lua and settle.lua (which run with this ahead of
-- them) read and write a key's numbers.
--
-- A key's state, field s of its hash: a header of n (7 bytes), x (6 bytes), c (2
-- bytes) and a byte whose bit i says dimension i follows, then t_i and r_i
-- as doubles for each such dimension (a dimension with both 0 is left out).
-- At most 64 bytes for up to three dimensions, so the hash stays a listpack.
-- The usual set (requests and tokens, bits 3) is read and written without a
-- loop.
--
-- Everything a script defines is made anew on every call, and a function
-- that captures locals of the script costs one allocation per captured
-- local: these two capture none (constants are written out where they are
-- used), so each costs one allocation.

-- The state as eleven numbers: n, x, c, t0..t3, r0..r3.
local function load(blob)
  if not blob then return {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} end
  local bits = string.byte(blob, 16)
  if bits == 3 then
    local n, x, c, _, t0, r0, t1, r1 = struct.unpack('<I7I6I2Bdddd', blob)
    return {n, x, c, t0, t1, 0, 0, r0, r1, 0, 0}
  end
  -- Pairs that follow: the bits set in `bits` (0..15).
  local pairs_n = string.byte('\0\1\1\2\1\2\2\3\1\2\2\3\2\3\3\4', bits + 1)
  local v = {struct.unpack('<I7I6I2B' .. string.rep('dd', pairs_n), blob)}
  local st = {v[1], v[2], v[3], 0, 0, 0, 0, 0, 0, 0, 0}
  local k = 5
  for i = 0, 3 do
    if bits % 2 == 1 then st[4 + i], st[8 + i], k = v[k], v[k + 1], k + 2 end
    bits = (bits - bits % 2) / 2
  end
  return st
end

-- The stored form of `st`.
local function store(st)
  if st[6] == 0 and st[10] == 0 and st[7] == 0 and st[11] == 0
    and (st[4] ~= 0 or st[8] ~= 0) and (st[5] ~= 0 or st[9] ~= 0) then
    return struct.pack('<I7I6I2Bdddd', st[1], st[2], st[3], 3, st[4], st[8], st[5], st[9])
  end
  local v, bits = {st[1], st[2], st[3], 0}, 0
  for i = 0, 3 do
    if st[4 + i] ~= 0 or st[8 + i] ~= 0 then
      bits = bits + 2 ^ i
      v[#v + 1], v[#v + 2] = st[4 + i], st[8 + i]
    end
  end
  v[4] = bits
  return struct.pack('<I7I6I2B' .. string.rep('dd', (#v - 4) / 2), unpack(v))
end
