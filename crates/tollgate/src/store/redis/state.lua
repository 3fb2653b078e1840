-- state.lua: how reserve.lua and settle.lua (which run with this ahead of
-- them) read and write a key's numbers.
--
-- A key's state, field s of its hash: a header of n (7 bytes), x (6 bytes), c (2
-- bytes) and a byte whose bit i says dimension i follows, then t_i and r_i
-- as doubles for each such dimension (a dimension with both 0 is left out).
-- At most 64 bytes for up to three dimensions, so the hash stays a listpack.
local HEAD = '<I7I6I2B'
local function load(blob)
  if not blob then return {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} end
  local n, x, c, dims, at = struct.unpack(HEAD, blob)
  local st = {n, x, c, 0, 0, 0, 0, 0, 0, 0, 0}
  for i = 0, 3 do
    if dims % 2 == 1 then st[4 + i], st[8 + i], at = struct.unpack('<dd', blob, at) end
    dims = (dims - dims % 2) / 2
  end
  return st
end
local function store(st)
  local fmt, v, dims = HEAD, {st[1], st[2], st[3], 0}, 0
  for i = 0, 3 do
    local t, r = st[4 + i], st[8 + i]
    if t ~= 0 or r ~= 0 then
      dims = dims + 2 ^ i
      fmt = fmt .. 'dd'
      v[#v + 1], v[#v + 2] = t, r
    end
  end
  v[4] = dims
  return struct.pack(fmt, unpack(v))
end
