//! The pool of borrowers of a shared bucket on Redis (see `store/lend.rs`):
//! one script, `tollgate_core::may_borrow` and `charge_borrow` operation for
//! operation.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::scripts::Invocation;
use crate::store::{LendCall, LendOp, Lent, StoreError};

/// KEYS[1]  `<prefix>:{<key>}:b`, the pool's hash (same hash tag as the
///          key's other keys). Field p: per class its pass and when it last
///          asked, little-endian doubles (`-inf` for never).
/// ARGV[1]  four little-endian doubles: the class, the number of classes,
///          the window of an ask in seconds (-1 for a charge), the pass a
///          charge adds
/// ARGV[2]  how long the pool is kept after its last use, milliseconds
///
/// Reply: one string, a byte (1 allowed, 0 refused) then two doubles: the
/// class's pass after the operation and the script's time. A pool of
/// another number of classes starts over, as a new one.
pub(crate) static LEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local class, n, window, charge = struct.unpack('<dddd', ARGV[1])
local format = '<' .. string.rep('d', 2 * n)
local blob = redis.call('HGET', KEYS[1], 'p')
local p
if blob and #blob == 16 * n then
  p = {struct.unpack(format, blob)}
else
  p = {}
  for k = 1, n do p[2 * k - 1] = 0 p[2 * k] = -math.huge end
end
local me = 2 * class + 1
local allowed = 1
if window >= 0 then
  local least = math.huge
  for k = 0, n - 1 do
    local pass, asked = p[2 * k + 1], p[2 * k + 2]
    if k ~= class and asked + window >= now and pass < least then least = pass end
  end
  if p[me + 1] + window < now and least < math.huge and p[me] < least then p[me] = least end
  p[me + 1] = now
  if p[me] > least then allowed = 0 end
elseif charge > 0 then
  p[me] = p[me] + charge
end
redis.call('HSET', KEYS[1], 'p', struct.pack(format, unpack(p, 1, 2 * n)))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return struct.pack('<Bdd', allowed, p[me], now)
",
    )
});

/// The invocation of [`LEND`] for `call` on the pool `pool`, kept `idle_ms`
/// after its last use.
pub(crate) fn lend_invocation(pool: String, call: &LendCall<'_>, idle_ms: u64) -> Invocation {
    let (window, pass) = match call.op {
        LendOp::Ask { window } => (window.max(0.0), 0.0),
        LendOp::Charge { pass } => (-1.0, pass),
    };
    let mut args = Vec::with_capacity(32);
    for v in [call.class as f64, call.classes as f64, window, pass] {
        args.extend_from_slice(&v.to_le_bytes());
    }
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(LEND.get_hash())
        .arg(1)
        .arg(pool)
        .arg(args)
        .arg(idle_ms);
    Invocation { script: &LEND, cmd }
}

/// The answer of [`LEND`].
pub(crate) fn lend_reply(value: &Value) -> Result<Lent, StoreError> {
    let bad = || StoreError::Failed(format!("unexpected reply of the lend script: {value:?}"));
    let Value::BulkString(b) = value else {
        return Err(bad());
    };
    if b.len() != 17 || b[0] > 1 {
        return Err(bad());
    }
    let double = |at: usize| f64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    Ok(Lent {
        allowed: b[0] == 1,
        pass: double(1),
        now: double(9),
    })
}
