-- reserve.lua: GCRA reservations over up to four dimensions on one key and
-- class, atomically: one or more (a batch of calls that came together), each
-- placed in turn in the order given, exactly as if it had come alone at the
-- same time. The same arithmetic, in the same order of operations, as
-- tollgate_core::reserve.
--
-- KEYS[1]  the key's state hash. Field s (its layout below, at `load`):
--          n (last reservation id, 0 for none), x
--          (when the keys expire, Unix milliseconds), c (bit set of the
--          classes that ever queued), t0..t3 (TAT per dimension, seconds),
--          r0..r3 (refunds so far per dimension, seconds). Fields
--          a<class>:<dimension>: one double each (see advance.lua).
-- KEYS[2]  the store's epoch: "<id> <lost_at>", written once when the first
--          key of an empty store is created; lost_at (seconds) is when the
--          store was found to have lost its state, 0 for a store that was new.
--          A store that restarted empty has lost it too.
-- The class's queue <prefix>:{K}:q<class> (a sorted set, member =
-- reservation id, score = slot) and its headroom index <prefix>:{K}:h<class>
-- are named from KEYS[1] (they share its hash tag): only a class that
-- queues pays for their names. The headroom index: all scores 0, members
--          "<dimension>:<id, 20 digits>:<slot>:<headroom>" in lexicographic
--          (= dimension, then id) order. Per dimension it is the monotonic
--          queue of the memory store: headrooms grow with the id, so the first
--          entry after an id holds the least headroom of the later reservations
--          (see settle.lua).
-- ARGV     one per reservation (Redis makes a string of each argument for
--          the script, which cost more than a call of HGET for the three of
--          before): two bytes, the lengths of the epoch and the costs below;
--          the numbers, as little-endian doubles (parsing decimal text was
--          most of what a call cost): the class's tolerance, tau * headroom
--          (seconds); the longest acceptable wait in seconds (-1 for none);
--          the most reservations that may wait in the class's queue (-1 for
--          none); the idle margin in milliseconds (the keys expire between
--          one and two margins after the backlog has drained; the expiry
--          moves only when it falls short, so a busy key is not re-expired on
--          every call); the class (0..15); the caller's deadline on this
--          server's clock (seconds, -1 for none: a call that arrives later,
--          its caller timed out, writes nothing); tau, the tolerance of a full
--          bucket (0 when a store that lost its state is trusted to be full,
--          AfterReset::Full); the lease in seconds (-1 for none: a
--          reservation queued further ahead than this gets one, see
--          advance.lua: its id in the key's lease set <prefix>:{K}:l scored by
--          when it ends, and what its cancellation needs in <prefix>:{K}:m,
--          field = id: "<class> <slot> <costs>", a newline, and the state
--          before its charge); then three per limited dimension, in index
--          order: index (0..3), charge = cost * T (seconds), and the highest
--          TAT the caller was told for this dimension of this key (-1 for
--          none); then the epoch the caller last saw (text, empty for none);
--          then the costs: the reservation's cost in units per limited
--          dimension, as text (only read with a lease)
--
-- A key without state (new, expired while idle, or lost) reads the epoch. An
-- epoch that is missing although the caller saw one means the store lost
-- everything: the epoch is written anew with lost_at = now. While a lost
-- store's buckets would still be refilling (lost_at + tau ahead), a key
-- without state starts drained: its TAT is lost_at + tau, or the TAT the
-- caller was told if that is later (its own reservations still waiting).
--
-- Reply: one string, one record per reservation in order, each a code byte
-- then little-endian doubles (d) and bytes (B) (Redis turning a table reply
-- into its answer cost about a sixth of a lone call; a string costs little):
--   1, slot, time_sec, time_usec, id, position (d each); the lengths (B each)
--      of the epoch ("" unless read), of the state (field s before the
--      charge; 0 for none) and the count of refund counters; then the epoch,
--      the state, and, when the reservation is queued, the class's refund
--      counters a<class>:<dimension> for each limited dimension (see
--      advance.lua; zero bytes for none). The caller derives the mark's end
--      (max(tat, slot) + cost * T, the new TAT) and gap (max(slot - tat, 0))
--      from the state with the same operations.
--   3, wait (d)            the slot is further than the longest acceptable wait
--   4, wait, queued (d)    the class's queue is full
--   5                      past the caller's deadline
-- Nothing is written unless the reply is 1 (but a missing epoch).
-- (A request that costs more than the bucket holds never gets here: the
-- caller refuses it.)

-- Redis 5 or later: a script that reads TIME may write (effects replication).
-- A key's numbers live in one field as binary doubles: exact, one read and
-- one write, no decimal formatting or parsing (which was most of the cost).
-- However many reservations a call places, the field is read once and written
-- once, the class's queue is looked at once and each key's expiry set once.
-- `load` and `store` (state.lua, run ahead of this script) read and write it.
-- Each reservation is placed inline in the loop below, not in a function:
-- a function capturing this script's locals would be made anew on every
-- call, one allocation per local it captures (about a microsecond here).
local max = math.max

local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000
local blob = redis.call('HGET', KEYS[1], 's')
local st = load(blob)
-- `blob`: the stored form of `st` as it stands (nil for no state); `dirty`:
-- it differs from what Redis holds.
local dirty = false
-- The class's queue (reservations whose slot is still ahead): its length and
-- last slot, read on first need and then kept up to date here.
local looked, queued, tail = false, 0, nil
local expire_at = st[2]
local extended, any_queued, any_lease = false, false, false

-- The numbers of each reservation: eight, then three per limited dimension
-- (the usual counts' formats written out: building one costs two strings).
-- One reply per reservation (a table only for several).
local replies, single = nil, #ARGV == 1
if not single then replies = {} end
-- The class's queue and headroom index (named on first need).
local queue_key, headroom_key = nil, nil
for j = 1, #ARGV do
  local nums = ARGV[j]
  local epoch_len, costs_len = string.byte(nums, 1, 2)
  local size, format = #nums - 2 - epoch_len - costs_len, nil
  if size == 112 then format = '<dddddddddddddd'
  elseif size == 88 then format = '<ddddddddddd'
  else format = '<' .. string.rep('d', size / 8) end
  local A = {struct.unpack(format, nums, 3)}
  -- Places one reservation on `st` (see the reply above); a refusal leaves
  -- the loop's body early with its reply.
  local reply
  repeat
    if A[6] >= 0 and now > A[6] then reply = '\5' break end
    local dims = (size / 8 - 8) / 3
    local classes = st[3]
    local class = A[5]

    -- The queue holds reservations whose slot is still ahead; drop the rest and
    -- start no earlier than the last one (FIFO within the class). A class that
    -- never queued has nothing to look at.
    local slot = now
    local class_bit, class_used = 0, false
    if classes > 0 then
      class_bit = 2 ^ class
      class_used = classes % (2 * class_bit) >= class_bit
    end
    local ahead = 0
    if class_used then
      if not looked then
        looked = true
        queue_key = string.format('%sq%d', string.sub(KEYS[1], 1, -2), class)
        queued = redis.call('ZCARD', queue_key)
        if queued > 0 then
          queued = queued - redis.call('ZREMRANGEBYSCORE', queue_key, '-inf', string.format('%.17g', now))
          if queued > 0 then
            local last = redis.call('ZRANGE', queue_key, -1, -1, 'WITHSCORES')
            tail = tonumber(last[2])
          end
        end
      end
      ahead = queued
      if ahead > 0 then slot = max(now, tail) end
    end

    -- A key without an id sequence: is it new, idle, or lost with the whole store?
    local epoch = ''
    local floor = nil
    if st[1] == 0 then
      epoch = redis.call('GET', KEYS[2])
      if not epoch then
        local lost = '0'
        if epoch_len > 0 then lost = string.format('%.17g', now) end
        epoch = string.format('%s%06d %s', time[1], usec, lost)
        redis.call('SET', KEYS[2], epoch)
      end
      local lost = tonumber(string.match(epoch, ' (%S+)$')) or 0
      local tau = A[7]
      if lost > 0 and tau > 0 and lost + tau > now then floor = lost + tau end
    end

    local tolerance = A[1]
    -- TATs drained here, as they were: a refusal puts them back.
    local undrained = nil
    for k = 1, dims do
      local a = 3 * k + 6
      local i = A[a]
      local t = st[4 + i]
      if floor then
        -- Drained: as if the last window had been used in full, or as far as
        -- the caller's own reservations reach.
        local known = A[a + 2]
        local drained = floor
        if known and known > drained then drained = known end
        if drained > t then
          undrained = undrained or {}
          undrained[4 + i] = t
          t = drained
          st[4 + i] = t
        end
      end
      slot = max(slot, t + A[a + 1] - tolerance)
    end

    local wait = slot - now
    if wait > 0 then
      local max_wait = A[2]
      if max_wait >= 0 and wait > max_wait then
        reply = struct.pack('<Bd', 3, wait)
      else
        local max_queue = A[3]
        if max_queue >= 0 and ahead >= max_queue then
          reply = struct.pack('<Bdd', 4, wait, ahead)
        end
      end
      if reply then
        if undrained then
          for f, t in pairs(undrained) do st[f] = t end
        end
        break
      end
    end

    -- The state before the charge goes back as it stands (drained, if it was).
    local before = blob
    if undrained then before = store(st) end

    -- A new (or expired) key: ids continue from the clock in microseconds, so
    -- they never repeat.
    local id = st[1]
    if id == 0 then id = sec * 1000000 + usec end
    id = id + 1
    st[1] = id
    local full = slot
    local queue_it = slot > now
    -- The TATs before the charge (drained, if they were), by limited
    -- dimension, which only a queued reservation's headroom needs. (Each
    -- dimension's TAT is still the one before the charge when it is charged.)
    local tat = nil
    if queue_it then tat = {0, 0, 0, 0} end
    for k = 1, dims do
      local a = 3 * k + 6
      local i = A[a]
      local t = st[4 + i]
      if tat then tat[k] = t end
      local next_tat = max(t, slot) + A[a + 1]
      st[4 + i] = next_tat
      if next_tat > full then full = next_tat end
    end

    if queue_it and not class_used then
      if class_bit == 0 then class_bit = 2 ^ class end
      st[3] = classes + class_bit
    end
    -- Keep the keys until the backlog has drained plus the margin; the queues
    -- below expire with the hash.
    local margin = A[4]
    local needed = sec * 1000 + math.floor(usec / 1000) + math.ceil((full - now) * 1000) + margin
    if expire_at == 0 or expire_at < needed then
      expire_at = needed + margin
      st[2] = expire_at
      extended = true
    end
    blob = store(st)
    dirty = true
    -- The class's refund counters, when it is queued.
    local counters, counted = '', 0

    if queue_it then
      -- Removes entries from one end of a range of a headroom index while `gone`
      -- says so: two at first (one look and at most one removal in the usual
      -- case), then sixteen at a time.
      local function trim(key, cmd, from, to, gone)
        local n, removed = 2, 0
        while true do
          local batch = redis.call(cmd, key, from, to, 'LIMIT', 0, n)
          local out = {}
          for _, e in ipairs(batch) do
            if not gone(e) then break end
            out[#out + 1] = e
          end
          if #out > 0 then
            redis.call('ZREM', key, unpack(out))
            removed = removed + #out
          end
          if #out < n then return removed end
          n = 16
        end
      end
      if not headroom_key then
        local base = string.sub(KEYS[1], 1, -2)
        queue_key, headroom_key = string.format('%sq%d', base, class), string.format('%sh%d', base, class)
      end
      local slot_s = string.format('%.17g', slot)
      redis.call('ZADD', queue_key, slot_s, id)
      any_queued = true
      if looked then
        queued = queued + 1
        tail = slot
      end
      local id_w = string.format('%020.0f', id)
      for k = 1, dims do
        local i = A[3 * k + 6]
        -- (Formatting a number with .. costs a %.14g; %d is cheaper.)
        local i_s = string.format('%d', i)
        local lo, hi = '[' .. i_s .. ':', '[' .. i_s .. ';'
        -- Entries whose slot has passed leave from the front...
        trim(headroom_key, 'ZRANGEBYLEX', lo, hi, function(e)
          return tonumber(string.match(e, '^%d+:%d+:([^:]+):')) <= now
        end)
        -- ...and entries with more headroom from the back. An entry that
        -- removed others stands for them too: it says so (":p"), and stays even
        -- when its reservation is cancelled (see settle.lua).
        local value = tat[k] - slot + st[8 + i]
        local popped = trim(headroom_key, 'ZREVRANGEBYLEX', hi, lo, function(e)
          return tonumber(string.match(e, '^%d+:%d+:[^:]+:([^:]+)')) > value
        end)
        local member = i_s .. ':' .. id_w .. ':' .. slot_s .. ':' .. string.format('%.17g', value)
        if popped > 0 then member = member .. ':p' end
        redis.call('ZADD', headroom_key, 0, member)
      end
      local lease = A[8]
      if lease >= 0 and slot - now > lease then
        local base = string.sub(KEYS[1], 1, -2)
        redis.call('ZADD', base .. 'l', now + lease, id)
        local costs = string.sub(nums, 3 + size + epoch_len, 2 + size + epoch_len + costs_len)
        redis.call('HSET', base .. 'm', id, class .. ' ' .. slot_s .. ' ' .. costs .. '\n' .. (before or ''))
        any_lease = true
      end
      -- A queued reservation remembers its class's refunds by started
      -- reservations (see advance.lua).
      local a = {KEYS[1]}
      for k = 1, dims do a[k + 1] = string.format('a%d:%d', class, A[3 * k + 6]) end
      a = redis.call('HMGET', unpack(a))
      for k = 1, dims do counters = counters .. (a[k] or '\0\0\0\0\0\0\0\0') end
      counted = dims
    end
    -- ('c0' packs a whole string: one string made, not two.)
    reply = struct.pack('<BdddddBBBc0c0c0', 1, slot, sec, usec, id, ahead, #epoch, before and #before or 0,
      counted, epoch, before or '', counters)
  until true
  if single then replies = reply else replies[j] = reply end
end

if dirty then redis.call('HSET', KEYS[1], 's', blob) end
if extended then redis.call('PEXPIREAT', KEYS[1], expire_at) end
if any_queued then
  redis.call('PEXPIREAT', queue_key, expire_at)
  redis.call('PEXPIREAT', headroom_key, expire_at)
end
if any_lease then
  local base = string.sub(KEYS[1], 1, -2)
  redis.call('PEXPIREAT', base .. 'l', expire_at)
  redis.call('PEXPIREAT', base .. 'm', expire_at)
end
if single then return replies end
return table.concat(replies)
