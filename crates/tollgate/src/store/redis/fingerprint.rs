//! The record of a key's limits in Redis, so that limiters built with other
//! limits for the same key can be told apart: `<prefix>:{<key>}:f` holds the
//! [`Limits::fingerprint`](tollgate_core::Limits::fingerprint) of the limits
//! the key's limiters were built with, for
//! [`FINGERPRINT_TTL`](crate::FINGERPRINT_TTL) after the last limiter with
//! those limits was built.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::RedisConnection;

/// Records a fingerprint unless another one is stored (or `replace` says to
/// overwrite it), and renews its expiry when it is recorded.
///
/// KEYS[1]  the record, `<prefix>:{<key>}:f`
/// ARGV[1]  this limiter's fingerprint
/// ARGV[2]  the record's time to live, in milliseconds
/// ARGV[3]  "1" to overwrite a different fingerprint, "0" to keep it
///
/// Returns the fingerprint stored before the call, "" when there was none.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stored = redis.call('GET', KEYS[1])
if not stored or stored == ARGV[1] or ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return stored or ''
",
    )
});

/// The Redis key of the record: `<prefix>:{<key>}:f`, in the key's hash slot.
pub(crate) fn key_name(prefix: &str, key: &str) -> String {
    format!("{prefix}:{{{key}}}:f")
}

/// Runs [`CLAIM`]: the fingerprint stored before, `None` when there was none.
pub(crate) async fn claim(
    mut conn: RedisConnection,
    name: String,
    fingerprint: String,
    ttl: Duration,
    replace: bool,
) -> redis::RedisResult<Option<String>> {
    let stored: String = CLAIM
        .key(name)
        .arg(fingerprint)
        .arg(ttl.as_millis().max(1) as u64)
        .arg(if replace { "1" } else { "0" })
        .invoke_async(&mut conn)
        .await?;
    Ok(Some(stored).filter(|s| !s.is_empty()))
}
