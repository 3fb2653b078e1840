//! tollgate: keep LLM API traffic inside its limits.
//!
//! Call [`RateLimiter::acquire`] before each call to a provider; it waits in one
//! FIFO queue (shared through Redis by every process that uses the same key)
//! until the provider's limits allow the call. Settle the real usage afterwards
//! with [`RateLimiter::settle`], so estimates that were too high give capacity
//! back.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tollgate::Error> {
//! use tollgate::{Cost, Limits, RateLimiter};
//!
//! let limiter = RateLimiter::memory("gpt-4o", Limits::new().rpm(100).tpm(100_000))?;
//! let permit = limiter.acquire(Cost::tokens(5_000)).await?;
//! assert!(permit.store_reachable());
//! limiter.settle(permit, Cost::tokens(3_200)).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod background;
mod error;
mod limiter;
mod outage;
mod retry;
pub mod store;

pub use error::Error;
pub use limiter::{
    AcquireOptions, Builder, ClassStatus, DimensionStatus, Joint, JointPart, Permit, PriorityClass,
    RateLimiter, Settlement, Status, TokenError, DEFAULT_LEASE, FINGERPRINT_TTL, MAX_ADVANCE_CHECK,
    TOKEN_LIFETIME,
};
pub use outage::{OutagePolicy, Source, Stats, StatsSnapshot};
pub use retry::RetryConfig;
pub use store::{Store, StoreError};
pub use tollgate_core::{
    ClassShare, Cost, CostError, Dimension, Limits, Policy, ShareError, Shares, Usage, MAX_CLASSES,
};
