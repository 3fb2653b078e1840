//! Limiters that disagree on one key: the store records the limits a key's
//! limiters were built with ([`Limits::fingerprint`](tollgate_core::Limits::fingerprint)),
//! and [`Builder::build`](super::Builder::build) refuses a limiter whose
//! limits differ from the recorded ones, unless told to replace them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::rate_limiter::Inner;
use crate::store::RedisStore;
use crate::Error;

/// How long Redis keeps the record of a key's limits after the last limiter
/// with those limits was built: long, because limiters live long after they
/// are built; bounded, so that limits changed on a key nobody uses any more
/// are accepted without [`Builder::replace_stored_limits`](super::Builder::replace_stored_limits)
/// once it has passed. (The process memory store keeps a record exactly as
/// long as a limiter with those limits lives.)
pub const FINGERPRINT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The limits of the live limiters of each key on the process memory store.
static PROCESS: LazyLock<Mutex<HashMap<Arc<str>, Record>>> = LazyLock::new(Default::default);

struct Record {
    fingerprint: String,
    /// The limiters built with it (clones share one).
    holders: Vec<Weak<Inner>>,
}

/// The check for a limiter on the process memory store (`memory://`): its
/// limits against those of the live limiters of its key there.
pub(crate) fn check_process(inner: &Arc<Inner>, replace: bool) -> Result<(), Error> {
    let ours = inner.policy.limits().fingerprint();
    let mut records = PROCESS.lock();
    records.retain(|_, r| {
        r.holders.retain(|h| h.strong_count() > 0);
        !r.holders.is_empty()
    });
    let holder = Arc::downgrade(inner);
    match records.get_mut(&inner.key) {
        Some(r) if r.fingerprint == ours => r.holders.push(holder),
        Some(r) if !replace => return Err(conflict(&inner.key, ours, r.fingerprint.clone())),
        Some(r) => {
            replaced(&inner.key, &ours, &r.fingerprint);
            r.fingerprint = ours;
            r.holders = vec![holder];
        }
        None => {
            let record = Record {
                fingerprint: ours,
                holders: vec![holder],
            };
            records.insert(inner.key.clone(), record);
        }
    }
    Ok(())
}

/// The check for a limiter on a Redis store. A store that cannot be asked
/// only costs the check (logged): the outage policy, not the build, decides
/// what happens while Redis is away.
pub(crate) async fn check_redis(
    store: &RedisStore,
    inner: &Inner,
    replace: bool,
) -> Result<(), Error> {
    let ours = inner.policy.limits().fingerprint();
    match store
        .claim_fingerprint(&inner.key, &ours, FINGERPRINT_TTL, replace)
        .await
    {
        Ok(Some(theirs)) if theirs != ours && replace => replaced(&inner.key, &ours, &theirs),
        Ok(Some(theirs)) if theirs != ours => return Err(conflict(&inner.key, ours, theirs)),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(key = %inner.key, error = %e, "could not compare the limits with those other limiters recorded for this key")
        }
    }
    Ok(())
}

fn conflict(key: &str, ours: String, theirs: String) -> Error {
    Error::LimitsConflict {
        key: key.to_string(),
        ours,
        theirs,
    }
}

fn replaced(key: &str, ours: &str, theirs: &str) {
    tracing::warn!(key, limits = ours, before = theirs, "the limits of this key changed: limiters still using the old ones disagree with this one until they are rebuilt");
}
