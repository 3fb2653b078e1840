//! The pool of borrowers of a shared bucket: whose turn it is to borrow an
//! idle class's lane (`tollgate_core::may_borrow`), and what each class
//! borrowed. One record per limiter key, beside its lanes: on Redis the
//! hash `<prefix>:{K}:b` (`redis/lend.rs`), here a map.

use std::collections::HashMap;

use parking_lot::Mutex;
use tollgate_core::{charge_borrow, may_borrow, Borrower, MAX_CLASSES};

use super::StoreError;

/// One operation on the pool of borrowers of `key`'s shared bucket.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LendCall<'a> {
    /// The limiter's key (not a lane's).
    pub key: &'a str,
    /// The class that asks or is charged.
    pub class: u8,
    /// How many classes share the bucket (at most 16).
    pub classes: u8,
    /// What to do.
    pub op: LendOp,
}

impl<'a> LendCall<'a> {
    /// An operation for class `class` of `classes` on `key`'s pool.
    pub fn new(key: &'a str, class: u8, classes: u8, op: LendOp) -> Self {
        LendCall {
            key,
            class,
            classes,
            op,
        }
    }
}

impl LendCall<'_> {
    /// Refuses a call whose class is not one of its 1 to 16 classes.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if self.classes == 0 || self.classes as usize > MAX_CLASSES || self.class >= self.classes {
            return Err(StoreError::Failed(format!(
                "class {} of {} classes: a shared bucket has 1 to {MAX_CLASSES} classes, numbered from 0",
                self.class, self.classes
            )));
        }
        Ok(())
    }
}

/// What a [`LendCall`] does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LendOp {
    /// Asks whether the class may borrow now, and records that it asked;
    /// `window` is how long an ask counts (`tollgate_core::BORROW_WINDOW`).
    Ask {
        /// Seconds.
        window: f64,
    },
    /// Adds a borrow to the class's pass: its cost in bucket seconds over
    /// its weight.
    Charge {
        /// What to add.
        pass: f64,
    },
}

/// The answer of a [`LendCall`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lent {
    /// Whether the class may borrow (always true for a charge).
    pub allowed: bool,
    /// The class's pass after the operation.
    pub pass: f64,
    /// The store's time of the operation, seconds.
    pub now: f64,
}

/// The memory store's pools, by key.
#[derive(Debug, Default)]
pub(crate) struct Pools(Mutex<HashMap<Box<str>, Vec<Borrower>>>);

impl Pools {
    /// Applies `call` at the time `now` reads (under the pool's lock).
    pub(crate) fn apply(
        &self,
        call: &LendCall<'_>,
        now: impl FnOnce() -> f64,
    ) -> Result<Lent, StoreError> {
        call.check()?;
        let mut pools = self.0.lock();
        let classes = call.classes as usize;
        let pool = match pools.get_mut(call.key) {
            Some(p) => p,
            None => pools
                .entry(call.key.into())
                .or_insert_with(|| vec![Borrower::default(); classes]),
        };
        if pool.len() != classes {
            // The classes changed: start over, as a fresh key would.
            *pool = vec![Borrower::default(); classes];
        }
        let now = now();
        let class = call.class as usize;
        let allowed = match call.op {
            LendOp::Ask { window } => may_borrow(pool, class, now, window),
            LendOp::Charge { pass } => {
                charge_borrow(pool, class, pass);
                true
            }
        };
        Ok(Lent {
            allowed,
            pass: pool[class].pass,
            now,
        })
    }
}
