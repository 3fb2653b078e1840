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
    /// Reservations waiting for their slot (in every class's lane, when the
    /// classes share the bucket).
    pub queue_depth: u64,
    /// Each class's lane, when the classes share the bucket by floor and
    /// weight ([`Builder::class_shares`](crate::Builder::class_shares));
    /// empty otherwise.
    pub classes: Vec<ClassStatus>,
}

/// One class's lane of a shared bucket, in [`Status::classes`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassStatus {
    /// The class (0 = top).
    pub class: u8,
    /// Its guaranteed share of the bucket, as set.
    pub floor: f64,
    /// Its weight in the part above the floors, as set.
    pub weight: f64,
    /// Its lane's share of the bucket (floor plus its weighted part of the
    /// rest): the rate and capacity of its lane, relative to the bucket's.
    pub share: f64,
    /// Each limited dimension of its lane: what is in use there (the
    /// class's own calls and what other classes borrowed from it) and what
    /// is available.
    pub dimensions: Vec<DimensionStatus>,
    /// The class's calls waiting for their slot in its lane.
    pub queue_depth: u64,
}

impl Status {
    /// The status of one dimension, if it is limited.
    pub fn dimension(&self, d: Dimension) -> Option<&DimensionStatus> {
        self.dimensions.iter().find(|s| s.dimension == d)
    }
}
