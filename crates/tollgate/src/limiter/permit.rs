//! What `acquire` gives back, and what settling it reports.

use std::time::Duration;

use tollgate_core::{Dims, Mark};

use crate::Source;

/// Per-call options of [`RateLimiter::acquire_with`](crate::RateLimiter::acquire_with).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AcquireOptions {
    /// Priority class (0 = top). Default 0.
    pub class: u8,
    /// Longest wait for this call; `None` uses the class's, then the limiter's.
    pub max_wait: Option<Duration>,
}

impl AcquireOptions {
    /// Options for a priority class.
    pub fn class(class: u8) -> Self {
        AcquireOptions {
            class,
            max_wait: None,
        }
    }

    /// With a maximum wait.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }
}

/// A granted slot: the call may run now. Settle it with the real usage when the
/// call ends ([`RateLimiter::settle`](crate::RateLimiter::settle)); a permit that
/// is dropped unsettled keeps its estimate charged.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "settle the permit with the real usage after the call"]
pub struct Permit {
    /// The limiter's key.
    pub key: std::sync::Arc<str>,
    /// The reservation's id (unique within the key).
    pub id: u64,
    /// The slot, in seconds on the store's clock.
    pub slot: f64,
    /// How long `acquire` waited for the slot.
    pub waited: Duration,
    /// Reservations of the same class that were queued ahead of this one.
    pub queue_position: u64,
    /// Who decided: the store, or the outage policy.
    pub source: Source,
    pub(crate) class: u8,
    pub(crate) mark: Mark,
    /// Store time of the reservation, seconds (what `mark.end` is relative to).
    pub(crate) reserved_at: f64,
}

impl Permit {
    /// Whether the shared store was reachable for this decision.
    pub fn store_reachable(&self) -> bool {
        self.source.store_reachable()
    }

    /// The estimate charged, per dimension (requests, tokens, input, output).
    pub fn estimate(&self) -> Dims {
        self.mark.cost
    }
}

/// What settling did, per dimension (requests, tokens, input, output).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Settlement {
    /// Units charged above the estimate.
    pub charged: Dims,
    /// Units given back (capped: capacity that has drained is not returned).
    pub refunded: Dims,
}
