//! The public limiter: build one, `acquire` before each call, `settle` after.

mod builder;
mod permit;
mod rate_limiter;
mod status;
mod token;

pub use builder::{Builder, PriorityClass};
pub use permit::{AcquireOptions, Permit, Settlement};
pub use rate_limiter::RateLimiter;
pub use status::{DimensionStatus, Status};
pub use token::{TokenError, TOKEN_LIFETIME};
