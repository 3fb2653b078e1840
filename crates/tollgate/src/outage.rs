//! What happens when the store cannot be reached: the outage policy and the
//! bookkeeping that logs each outage once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Error;

/// What `acquire` does once the store has failed and retries are spent.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum OutagePolicy {
    /// Let the call through unlimited, flagged [`Source::Open`] (what the Python
    /// `llmratelimiter` does).
    #[default]
    Open,
    /// Refuse with [`Error::StoreUnavailable`].
    Closed,
    /// Keep limiting in this process with `share` of every limit (e.g. 0.25 for
    /// one of four instances), flagged [`Source::Local`].
    Local {
        /// This instance's share of the limits, in (0, 1].
        share: f64,
    },
}

impl OutagePolicy {
    /// Checks the share of `Local`.
    pub fn validate(&self) -> Result<(), Error> {
        if let OutagePolicy::Local { share } = *self {
            if !(share.is_finite() && share > 0.0 && share <= 1.0) {
                return Err(Error::Config {
                    field: "outage.share",
                    value: share.to_string(),
                    reason: "a fraction in (0, 1]",
                });
            }
        }
        Ok(())
    }

    /// The name used in logs and metrics: `open`, `closed` or `local`.
    pub fn name(&self) -> &'static str {
        match self {
            OutagePolicy::Open => "open",
            OutagePolicy::Closed => "closed",
            OutagePolicy::Local { .. } => "local",
        }
    }
}

/// Who decided a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The shared store (normal operation).
    Store,
    /// The store was unreachable and the outage policy `open` let the call through.
    Open,
    /// The store was unreachable and the call was limited in this process.
    Local,
}

impl Source {
    /// Whether the shared store made the decision.
    pub fn store_reachable(&self) -> bool {
        matches!(self, Source::Store)
    }
}

/// Counters of one limiter (shared by its clones).
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) granted: AtomicU64,
    pub(crate) waited: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) outages: AtomicU64,
    pub(crate) outage_open: AtomicU64,
    pub(crate) outage_local: AtomicU64,
    pub(crate) outage_closed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) advanced: AtomicU64,
    pub(crate) borrowed: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
    in_outage: AtomicBool,
    /// When the store was last tried during an outage (ms since `origin()`).
    last_probe_ms: AtomicU64,
}

/// A process-wide origin for the probe clock.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// A copy of a limiter's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Permits granted by the store.
    pub granted: u64,
    /// Of those, permits that had to wait for their slot.
    pub waited: u64,
    /// Requests refused for rate, queue or size.
    pub refused: u64,
    /// Store errors seen (each failed attempt).
    pub store_errors: u64,
    /// Outages begun (a success ends one).
    pub outages: u64,
    /// Calls let through by the `open` policy.
    pub outage_open: u64,
    /// Calls limited locally by the `local` policy.
    pub outage_local: u64,
    /// Calls refused by the `closed` policy.
    pub outage_closed: u64,
    /// Reservations cancelled before their slot (dropped or explicit).
    pub cancelled: u64,
    /// Times a waiting permit moved to an earlier slot after refunds ahead of it.
    pub advanced: u64,
    /// Permits that started at once in another class's lane of a shared
    /// bucket (see [`Builder::class_shares`](crate::Builder::class_shares)).
    pub borrowed: u64,
    /// Times a waiting `acquire` found its reservation cancelled because it
    /// had not confirmed it within its lease, and queued again.
    pub leases_lost: u64,
    /// Times the limiter's store was found to have lost its state (Redis
    /// restarted empty), each reset once; see
    /// [`AfterReset`](crate::store::AfterReset). Shared by every limiter on
    /// the store.
    pub store_resets: u64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether an outage is going on (the last store call failed).
    pub(crate) fn in_outage(&self) -> bool {
        self.in_outage.load(Ordering::Relaxed)
    }

    /// During an outage, whether this call should try the store: one call per
    /// `interval` does (the probe), the others go straight to the outage
    /// policy instead of each waiting for a dead store's timeout.
    pub(crate) fn should_probe(&self, interval: Duration) -> bool {
        let now = origin().elapsed().as_millis() as u64;
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= interval.as_millis() as u64
            && self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Records a failed store call after retries; logs when an outage begins.
    pub(crate) fn store_failed(
        &self,
        key: &str,
        policy: OutagePolicy,
        err: &dyn std::fmt::Display,
    ) {
        if !self.in_outage.swap(true, Ordering::Relaxed) {
            self.last_probe_ms
                .store(origin().elapsed().as_millis() as u64, Ordering::Relaxed);
            Stats::bump(&self.outages);
            tracing::warn!(key, policy = policy.name(), error = %err, "store unreachable: outage policy applies until it answers again");
        }
    }

    /// Records a successful store call; logs when an outage ends.
    pub(crate) fn store_ok(&self, key: &str) {
        if self.in_outage.load(Ordering::Relaxed) && self.in_outage.swap(false, Ordering::Relaxed) {
            tracing::info!(key, "store reachable again: outage over");
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            granted: g(&self.granted),
            waited: g(&self.waited),
            refused: g(&self.refused),
            store_errors: g(&self.store_errors),
            outages: g(&self.outages),
            outage_open: g(&self.outage_open),
            outage_local: g(&self.outage_local),
            outage_closed: g(&self.outage_closed),
            cancelled: g(&self.cancelled),
            advanced: g(&self.advanced),
            borrowed: g(&self.borrowed),
            leases_lost: g(&self.leases_lost),
            store_resets: 0,
        }
    }
}
