//! The public limiter: build one, `acquire` before each call, `settle` after.

mod builder;
mod fingerprint;
mod lanes;
mod permit;
mod rate_limiter;
mod reshare;
mod status;
mod together;
mod token;

pub use builder::{Builder, PriorityClass, DEFAULT_LEASE};
pub use fingerprint::FINGERPRINT_TTL;
pub use permit::{AcquireOptions, Permit, Settlement};
pub use rate_limiter::{RateLimiter, MAX_ADVANCE_CHECK};
pub use status::{ClassStatus, DimensionStatus, Status};
pub use together::{Joint, JointPart};
pub use token::{TokenError, TOKEN_LIFETIME};
