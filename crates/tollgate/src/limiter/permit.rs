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
///
/// A permit is settled at most once: settling or cancelling consumes it, it
/// cannot be cloned, and its fields are read through accessors. To settle it
/// from another task or process, turn it into a token
/// ([`Permit::into_token`]) and settle that with
/// [`RateLimiter::settle_token`](crate::RateLimiter::settle_token); the store
/// applies a token once, however often it is sent.
#[derive(Debug, PartialEq)]
#[must_use = "settle the permit with the real usage after the call"]
pub struct Permit {
    pub(crate) key: std::sync::Arc<str>,
    pub(crate) id: u64,
    pub(crate) slot: f64,
    pub(crate) waited: Duration,
    pub(crate) queue_position: u64,
    pub(crate) source: Source,
    pub(crate) class: u8,
    /// The lane its reservation lives in, when the classes share the bucket.
    pub(crate) lane: Option<u8>,
    pub(crate) mark: Mark,
    /// Store time of the reservation, seconds (what `mark.end` is relative to).
    pub(crate) reserved_at: f64,
}

impl Permit {
    /// The key of the limiter that granted it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The reservation's id (unique within the key).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The slot, in seconds on the store's clock.
    pub fn slot(&self) -> f64 {
        self.slot
    }

    /// How long `acquire` waited for the slot (for a permit from
    /// [`RateLimiter::reserve`](crate::RateLimiter::reserve): how long the
    /// caller must still wait).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Reservations of the same class that were queued ahead of this one.
    pub fn queue_position(&self) -> u64 {
        self.queue_position
    }

    /// Who decided: the store, or the outage policy.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The priority class it was taken in.
    pub fn class(&self) -> u8 {
        self.class
    }

    /// The class whose lane of a shared bucket it was taken in: its own
    /// class's, or another's it borrowed from (see
    /// [`Builder::class_shares`](crate::Builder::class_shares)); `None`
    /// without class shares.
    pub fn lane(&self) -> Option<u8> {
        self.lane
    }

    /// Whether the shared store was reachable for this decision.
    pub fn store_reachable(&self) -> bool {
        self.source.store_reachable()
    }

    /// The estimate charged, per dimension (requests, tokens, input, output).
    pub fn estimate(&self) -> Dims {
        self.mark.cost
    }

    /// The permit as a short string, to settle it elsewhere (another task,
    /// another process sharing the store) with
    /// [`RateLimiter::settle_token`](crate::RateLimiter::settle_token). The
    /// permit is consumed: the token is now the only way to settle it, and the
    /// store applies it at most once. A token is not signed: whoever can
    /// settle tokens can forge one, so take them only from your own code.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::Error> {
    /// use tollgate::{Cost, Limits, RateLimiter};
    ///
    /// let limiter = RateLimiter::memory("gpt-4o", Limits::new().tpm(10_000))?;
    /// let token = limiter.acquire(Cost::tokens(1_000)).await?.into_token();
    /// let done = limiter.settle_token(&token, Cost::tokens(400)).await?;
    /// assert_eq!(done.refunded[1], 600.0);
    /// // The same token a second time is refused: nothing is refunded twice.
    /// assert!(limiter.settle_token(&token, Cost::tokens(400)).await.is_err());
    /// # Ok(()) }
    /// ```
    pub fn into_token(self) -> String {
        super::token::encode(&self)
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
