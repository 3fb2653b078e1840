//! Marking a permit token settled, so that the store applies it at most once.

use std::sync::LazyLock;

use redis::{Script, Value};

use crate::store::{Claim, StoreError};

/// KEYS[1]  `<prefix>:{<key>}:d:<id>`, the mark (same hash tag as the key's
///          other keys)
/// ARGV[1]  the reservation's store time, seconds
/// ARGV[2]  how long a token lives, seconds (`TOKEN_LIFETIME`)
///
/// Reply: 0 fresh (the mark is set until the token expires), 1 settled
/// before, 2 expired.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local left = tonumber(ARGV[1]) + tonumber(ARGV[2]) - now
if left <= 0 then return 2 end
if redis.call('SET', KEYS[1], 1, 'NX', 'PX', math.ceil(left * 1000)) then return 0 end
return 1
",
    )
});

/// The answer of [`CLAIM`].
pub(crate) fn claim_reply(value: &Value) -> Result<Claim, StoreError> {
    match value {
        Value::Int(0) => Ok(Claim::Fresh),
        Value::Int(1) => Ok(Claim::Settled),
        Value::Int(2) => Ok(Claim::Expired),
        other => Err(StoreError::Failed(format!(
            "unexpected reply of the claim script: {other:?}"
        ))),
    }
}
