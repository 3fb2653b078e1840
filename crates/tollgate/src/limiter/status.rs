//! A key's state as people read it.

use std::time::Duration;

use tollgate_core::Dimension;

/// One dimension of [`Status`].
#[derive(Debug, Clone, PartialEq)]
pub struct DimensionStatus {
    /// Which dimension.
    pub dimension: Dimension,
    /// The limit per window.
    pub limit: u64,
    /// The most the bucket holds (`burst × limit`).
    pub capacity: f64,
    /// Units in the bucket's backlog now (reserved and not yet drained,
    /// including reservations queued for later).
    pub in_use: f64,
    /// Units a request could take now without waiting (`capacity − in_use`, ≥ 0).
    pub available: f64,
    /// When the bucket is full again if nothing more is reserved.
    pub full_in: Duration,
}

/// A snapshot of a limiter's key.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The key.
    pub key: String,
    /// Each limited dimension.
    pub dimensions: Vec<DimensionStatus>,
    /// Reservations waiting for their slot.
    pub queue_depth: u64,
}

impl Status {
    /// The status of one dimension, if it is limited.
    pub fn dimension(&self, d: Dimension) -> Option<&DimensionStatus> {
        self.dimensions.iter().find(|s| s.dimension == d)
    }
}
