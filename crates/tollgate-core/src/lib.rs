//! The pure limiting model of tollgate.
//!
//! Everything here is arithmetic: no I/O, no clock. Time is an argument (seconds
//! on the store's clock, as `f64`), so the same functions serve the in-memory
//! store, the reference for the Redis Lua scripts, and the property tests.
//!
//! The model (see `DESIGN.md`): a key has up to four [`Dimension`]s, each a token
//! bucket of limit `L` per window `W` and burst `b`. Each dimension keeps one
//! number, its theoretical arrival time (TAT). A request of cost `c` may start at
//! `max(now, TAT + c·T − τ)` with `T = W / L` and `τ = b·W`; a reservation charges
//! every dimension at once.
//!
//! ```
//! use tollgate_core::{Limits, KeyState, Cost, reserve, ReserveRequest};
//!
//! let policy = Limits::new().requests(60).tokens(1_000).validate().unwrap();
//! let state = KeyState::default();
//! let req = ReserveRequest::new(policy.units(Cost::tokens(500)));
//! let grant = reserve(&policy, &state, 100.0, &req).unwrap();
//! assert_eq!(grant.slot, 100.0); // the bucket is full: start now
//! let second = reserve(&policy, &grant.state, 100.0, &req).unwrap();
//! assert_eq!(second.slot, 100.0); // 1000 tokens of capacity: still fits
//! let third = reserve(&policy, &second.state, 100.0, &req).unwrap();
//! assert_eq!(third.slot, 130.0); // 500 tokens refill in 30 s
//! ```
#![warn(missing_docs)]

mod advance;
mod cost;
mod dims;
mod error;
mod gcra;
mod lend;
mod limits;
mod reshare;
mod settle;
mod share;

pub use advance::{advance, moved_vacated};
pub use cost::{Cost, Usage};
pub use dims::{Dimension, Dims, DIMENSIONS};
pub use error::{CostError, LimitsError, ReserveError, ShareError};
pub use gcra::{reserve, Grant, KeyState, ReserveRequest};
pub use lend::{charge_borrow, may_borrow, Borrower, BORROW_WINDOW};
pub use limits::{Limits, Policy, DEFAULT_WINDOW_SECS, MAX_BURST};
pub use reshare::{reshare, reshare_extra, Reshared};
pub use settle::{settle, settle_vacated, Mark, Settled, Vacated};
pub use share::{ClassShare, Shares, Spread, MAX_CLASSES};

#[cfg(test)]
pub(crate) mod testing {
    use crate::{reserve, Cost, Grant, KeyState, Policy, ReserveRequest};

    /// Reserves `tokens` on `state` at `now`: top class, empty queue, no bounds.
    pub(crate) fn take(policy: &Policy, state: &KeyState, now: f64, tokens: u64) -> Grant {
        let request = ReserveRequest::new(policy.units(Cost::tokens(tokens)));
        reserve(policy, state, now, &request).expect("the request fits")
    }
}
