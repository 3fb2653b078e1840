//! The library's error type. Every message says what to do.

use std::time::Duration;

use tollgate_core::{CostError, LimitsError, ReserveError};

use crate::store::StoreError;

/// Everything `acquire`, `settle` and the builders can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The limits are not valid (names the field and the value).
    #[error("invalid limits for key {key:?}: {source}")]
    Limits {
        /// The limiter's key.
        key: String,
        /// What is wrong.
        #[source]
        source: LimitsError,
    },
    /// The class shares cannot split the bucket (names the class and the
    /// field).
    #[error("invalid class_shares for key {key:?}: {source}")]
    Shares {
        /// The limiter's key.
        key: String,
        /// What is wrong.
        #[source]
        source: tollgate_core::ShareError,
    },
    /// Another setting is not valid (names the field and the value).
    #[error("invalid setting {field} = {value}: {reason}")]
    Config {
        /// The setting's name, e.g. `retry.max_delay`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// The cost cannot be charged on these limits (`Cost::tokens` on limits
    /// with an output token limit: use `Cost::split`); nothing was reserved
    /// or settled.
    #[error(transparent)]
    Cost(#[from] CostError),
    /// The store records other limits for this key, set by another limiter
    /// (maybe in another process): two limiters of one key with different
    /// limits would each charge the shared buckets by their own rules. See
    /// [`Builder::replace_stored_limits`](crate::Builder::replace_stored_limits).
    #[error("limits of {key:?} disagree with those another limiter recorded for it: this limiter has {ours}, the store has {theirs}; give every limiter of a key the same limits, or build with replace_stored_limits(true) when changing them on purpose")]
    LimitsConflict {
        /// The limiter's key.
        key: String,
        /// This limiter's limits ([`Limits::fingerprint`](crate::Limits::fingerprint)).
        ours: String,
        /// The limits recorded for the key.
        theirs: String,
    },
    /// The request can never fit the bucket; nothing was reserved.
    #[error(transparent)]
    TooLarge(ReserveError),
    /// The request does not fit its class's share of a shared bucket, and
    /// no other class's lane could lend it room at once; nothing was
    /// reserved.
    #[error("request needs {needed} {unit} but class {class}'s share of {key:?} holds at most {capacity} (share {share:.4} of the bucket, from floor={floor}, weight={weight}) and no other class could lend it room now; raise class {class}'s floor or weight, or burst, or split the request", unit = dimension.unit())]
    TooLargeForShare {
        /// The limiter's key.
        key: String,
        /// The class.
        class: u8,
        /// The dimension its lane cannot hold the request in.
        dimension: tollgate_core::Dimension,
        /// What the request costs there.
        needed: f64,
        /// The most the class's lane holds there.
        capacity: f64,
        /// The class's share of the bucket.
        share: f64,
        /// The class's floor.
        floor: f64,
        /// The class's weight.
        weight: f64,
    },
    /// The slot lies further away than the allowed wait; nothing was reserved.
    #[error("rate limited on {key:?}: retry after {:.3} s (allowed wait {:.3} s)", retry_after.as_secs_f64(), max_wait.as_secs_f64())]
    RateLimited {
        /// The limiter's key.
        key: String,
        /// How long until the request could start.
        retry_after: Duration,
        /// The wait the caller allowed.
        max_wait: Duration,
    },
    /// The key's queue is at its cap; nothing was reserved.
    #[error("queue of {key:?} is full ({depth} waiting, max_queue={max_queue}): retry after {:.3} s", retry_after.as_secs_f64())]
    QueueFull {
        /// The limiter's key.
        key: String,
        /// Requests already waiting in the class.
        depth: u64,
        /// The cap.
        max_queue: u64,
        /// How long until the request could start.
        retry_after: Duration,
    },
    /// The store failed after all retries. From `acquire`, the outage policy
    /// (`closed`) refused the call; `settle`, `cancel` and `status`, which no
    /// outage policy covers, fail with it whatever the policy.
    #[error("store unavailable after {attempts} attempts{}: {source}", policy_note(*policy))]
    StoreUnavailable {
        /// Attempts made, the first included.
        attempts: u32,
        /// The outage policy that refused the call ([`OutagePolicy::name`](crate::OutagePolicy::name)),
        /// `None` where no outage policy applies (`settle`, `cancel`, `status`).
        policy: Option<&'static str>,
        /// The last store error.
        #[source]
        source: StoreError,
    },
    /// A permit was given to a limiter of another key than the one that
    /// granted it; nothing was settled. The permit is handed back.
    #[error("permit of key {:?} given to the limiter of key {limiter:?}; settle it on the limiter that granted it", permit.key())]
    ForeignPermit {
        /// The key of the limiter it was given to.
        limiter: String,
        /// The permit, still unsettled.
        permit: Box<crate::Permit>,
    },
    /// The usage given to `settle` cannot be charged on these limits (see
    /// [`Error::Cost`]); nothing was settled. The permit is handed back.
    #[error("{source}; the permit is handed back unsettled")]
    BadUsage {
        /// What is wrong with the usage.
        source: CostError,
        /// The permit, still unsettled.
        permit: Box<crate::Permit>,
    },
    /// A permit token could not be settled (see [`crate::TokenError`]).
    #[error(transparent)]
    Token(#[from] crate::TokenError),
    /// The store answered with an error that retrying will not fix.
    #[error(transparent)]
    Store(StoreError),
}

impl Error {
    /// How long to wait before trying again, for the errors where that helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } | Error::QueueFull { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    pub(crate) fn from_reserve(key: &str, e: ReserveError) -> Self {
        match e {
            ReserveError::TooLarge { .. } => Error::TooLarge(e),
            ReserveError::WouldWait {
                retry_after,
                max_wait,
            } => Error::RateLimited {
                key: key.to_string(),
                retry_after: secs(retry_after),
                max_wait: secs(max_wait),
            },
            ReserveError::QueueFull {
                depth,
                max_queue,
                retry_after,
            } => Error::QueueFull {
                key: key.to_string(),
                depth,
                max_queue,
                retry_after: secs(retry_after),
            },
        }
    }
}

/// The part of a message that names the outage policy, if one applied.
fn policy_note(policy: Option<&str>) -> String {
    policy
        .map(|p| format!(" (outage policy: {p})"))
        .unwrap_or_default()
}

/// Seconds as a `Duration`, clamping negatives and non-numbers to zero.
pub(crate) fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s)
    } else {
        Duration::ZERO
    }
}
