//! A change of a lane's share on Redis (see `store/reshare.rs`): one
//! script on the lane's state hash, `tollgate_core::reshare` operation for
//! operation, with `state.lua` ahead of it to read and write the state.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::scripts::Invocation;
use crate::store::{Reshare, ReshareCall, StoreError};

/// KEYS[1]  the lane's state hash `<prefix>:{<lane key>}:s` (see
///          `reserve.lua`); its field sh, written here, is the change's
///          marker: five little-endian doubles, the share the lane's line is
///          in and what the lanes that grew owed for it at that change, per
///          dimension (`tollgate_core::Reshared::owed`; it goes with the
///          hash).
/// ARGV[1]  little-endian doubles: the share before (taken unless sh
///          names one), the share after, tau, the idle margin in
///          milliseconds (see `reserve.lua`), then three per limited
///          dimension: its index (0..3), the whole bucket's increment
///          (seconds per unit) and the units to charge on top when the lane
///          grows (negative: room it is given).
///
/// Reply: one string, a byte (1 moved, 2 at the share already) then six
/// doubles: the script's time (seconds and microseconds) and the four
/// units owed. A lane with no state that the change
/// leaves as it is writes nothing.
pub(crate) static RESHARE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("state.lua"),
        r"
local pack = struct.pack
local time = redis.call('TIME')
local sec, usec = tonumber(time[1]), tonumber(time[2])
local now = sec + usec / 1000000
local A = {struct.unpack('<' .. string.rep('d', #ARGV[1] / 8), ARGV[1])}
local from, to, tau, margin = A[1], A[2], A[3], A[4]
local mark = redis.call('HGET', KEYS[1], 'sh')
if mark then
  local share, q0, q1, q2, q3 = struct.unpack('<ddddd', mark)
  if share == to then return pack('<Bdddddd', 2, sec, usec, q0, q1, q2, q3) end
  from = share
end
local blob = redis.call('HGET', KEYS[1], 's')
local st = load(blob)
local q = {0, 0, 0, 0}
local changed = false
local full = -math.huge
for k = 1, (#A - 4) / 3 do
  local i, inc, extra = A[3 * k + 2], A[3 * k + 3], A[3 * k + 4]
  local tat = st[4 + i]
  local ahead = math.max(tat - now, 0)
  if to > from then
    local line = tat
    if ahead < tau then line = now + (tau - (tau - ahead) * from / to) end
    if extra > 0 then
      line = math.max(line, now) + extra * (inc / to)
    elseif extra < 0 and ahead < tau then
      line = math.max(line + extra * (inc / to), now)
    end
    if line ~= tat then
      st[4 + i] = line
      changed = true
    end
  elseif to < from then
    q[i + 1] = (ahead - tau) * (from - to) / inc
  end
  full = math.max(full, st[4 + i])
end
local sh = pack('<ddddd', to, q[1], q[2], q[3], q[4])
if changed then
  -- The hash must outlive the new line (as in settle.lua).
  local expire_at
  local needed = sec * 1000 + math.floor(usec / 1000) + math.ceil((full - now) * 1000) + margin
  local x = st[2]
  if x == 0 or x < needed then
    expire_at = needed + margin
    st[2] = expire_at
  end
  redis.call('HSET', KEYS[1], 's', store(st), 'sh', sh)
  if expire_at then redis.call('PEXPIREAT', KEYS[1], expire_at) end
elseif blob then
  redis.call('HSET', KEYS[1], 'sh', sh)
end
return pack('<Bdddddd', 1, sec, usec, q[1], q[2], q[3], q[4])
"
    ))
});

/// The invocation of [`RESHARE`] for `call` on the lane's state hash
/// `state`, with the store's idle margin `idle_ms`.
pub(crate) fn reshare_invocation(
    state: String,
    call: &ReshareCall<'_>,
    idle_ms: u64,
) -> Invocation {
    let mut args = Vec::with_capacity(8 * 16);
    let head = [call.from, call.to, call.policy.tau, idle_ms as f64];
    for v in head {
        args.extend_from_slice(&v.to_le_bytes());
    }
    for (i, &inc) in call.policy.increment.iter().enumerate() {
        if inc > 0.0 {
            for v in [i as f64, inc, call.extra[i]] {
                args.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let mut inv = Invocation::new(&RESHARE, 1);
    inv.arg(state).arg(args);
    inv
}

/// The answer of [`RESHARE`].
pub(crate) fn reshare_reply(value: &Value) -> Result<Reshare, StoreError> {
    let bad = || StoreError::Failed(format!("unexpected reply of the reshare script: {value:?}"));
    let Value::BulkString(b) = value else {
        return Err(bad());
    };
    if b.len() != 49 || !(1..=2).contains(&b[0]) {
        return Err(bad());
    }
    let double = |at: usize| f64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    Ok(Reshare {
        moved: b[0] == 1,
        now: double(1) + double(9) / 1_000_000.0,
        owed: std::array::from_fn(|i| double(17 + 8 * i)),
    })
}
