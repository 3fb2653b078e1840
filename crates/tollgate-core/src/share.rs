//! Sharing one bucket between classes: a floor and a weight per class.
//!
//! The bucket (rate `L`, capacity `C`) is split into one **lane** per class,
//! with rate `a_k × L` and capacity `a_k × C`, where
//!
//! `a_k = floor_k + weight_k / Σ weight × (1 − Σ floor)`
//!
//! so that `Σ a_k = 1`. Each lane is a token bucket of its own; the sum of
//! flows that each conform to their lane conforms to the whole bucket, so
//! sharing can never admit more than the bucket does. A class queues (FIFO)
//! only in its own lane, and so gets at least `a_k ≥ floor_k` of the bucket
//! whenever it is backlogged. A class whose lane is full may also start *at
//! once* in another lane that has room within that lane's lendable part
//! ([`ClassShare::lendable`]): capacity an idle class leaves is used by the
//! others, and the lane's owner, which never queues behind a borrower, waits
//! at most one emission interval for what was lent.

use crate::{Policy, ShareError};

/// The most classes one key may have (priority classes and shares alike).
pub const MAX_CLASSES: usize = 16;

/// One class's part of a shared bucket, as a user sets it.
///
/// ```
/// use tollgate_core::{ClassShare, Shares};
/// // Interactive calls keep 60% of the bucket; the rest is shared 3:1.
/// let shares = Shares::new(vec![ClassShare::new(0.6, 3.0), ClassShare::new(0.0, 1.0)]).unwrap();
/// assert!((shares.share(0) - 0.9).abs() < 1e-12);
/// assert!((shares.share(1) - 0.1).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassShare {
    /// The share of the bucket the class is guaranteed whenever it has
    /// demand, in [0, 1]; the floors of all classes sum to at most 1.
    pub floor: f64,
    /// The class's weight in the part of the bucket above the floors (> 0).
    pub weight: f64,
    /// The part of the class's lane other classes may borrow at once while
    /// it is idle, in [0, 1] (default 1: all of it; less keeps a reserve for
    /// the class's own bursts).
    pub lendable: f64,
}

impl ClassShare {
    /// A class with this floor and weight, all of its lane lendable.
    pub fn new(floor: f64, weight: f64) -> Self {
        ClassShare {
            floor,
            weight,
            lendable: 1.0,
        }
    }

    /// With this lendable part of its lane.
    pub fn lendable(mut self, lendable: f64) -> Self {
        self.lendable = lendable;
        self
    }
}

/// Validated shares: each class's lane share `a_k`.
#[derive(Debug, Clone, PartialEq)]
pub struct Shares {
    classes: Vec<ClassShare>,
    share: Vec<f64>,
}

impl Shares {
    /// Checks the classes (1 to [`MAX_CLASSES`], floors in [0, 1] summing to
    /// at most 1, weights > 0, lendable in [0, 1], every lane a share above
    /// zero) and derives each class's lane share.
    pub fn new(classes: Vec<ClassShare>) -> Result<Shares, ShareError> {
        if classes.is_empty() || classes.len() > MAX_CLASSES {
            return Err(ShareError::Count(classes.len()));
        }
        for (class, c) in classes.iter().enumerate() {
            if !(c.floor.is_finite() && (0.0..=1.0).contains(&c.floor)) {
                return Err(ShareError::BadFloor {
                    class,
                    value: c.floor,
                });
            }
            if !(c.weight.is_finite() && c.weight > 0.0) {
                return Err(ShareError::BadWeight {
                    class,
                    value: c.weight,
                });
            }
            if !(c.lendable.is_finite() && (0.0..=1.0).contains(&c.lendable)) {
                return Err(ShareError::BadLendable {
                    class,
                    value: c.lendable,
                });
            }
        }
        let floors: f64 = classes.iter().map(|c| c.floor).sum();
        if floors > 1.0 + 1e-9 {
            return Err(ShareError::FloorsAboveOne { sum: floors });
        }
        let excess = (1.0 - floors).max(0.0);
        let weights: f64 = classes.iter().map(|c| c.weight).sum();
        let raw: Vec<f64> = classes
            .iter()
            .map(|c| c.floor + c.weight / weights * excess)
            .collect();
        if let Some(class) = raw.iter().position(|&a| a <= 0.0) {
            return Err(ShareError::NoShare { class });
        }
        // Scaled back where rounding made the lanes add up to more than
        // the bucket.
        let total: f64 = raw.iter().sum();
        let share = if total > 1.0 {
            raw.iter().map(|a| a / total).collect()
        } else {
            raw
        };
        Ok(Shares { classes, share })
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether there are no classes (never, for a validated value).
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Class `class`'s share of the bucket, `a_k` (its lane's part of the
    /// rate and of the capacity).
    pub fn share(&self, class: usize) -> f64 {
        self.share[class]
    }

    /// Class `class` as it was set.
    pub fn class(&self, class: usize) -> &ClassShare {
        &self.classes[class]
    }

    /// Every class as it was set, in order.
    pub fn classes(&self) -> &[ClassShare] {
        &self.classes
    }

    /// The policy of class `class`'s lane on the bucket of `policy`.
    pub fn lane(&self, policy: &Policy, class: usize) -> Policy {
        policy.lane(self.share[class])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dimension, Limits};

    #[test]
    fn lanes_add_up_to_the_bucket_and_keep_the_floors() {
        let shares = Shares::new(vec![
            ClassShare::new(0.1, 4.0),
            ClassShare::new(0.3, 2.0),
            ClassShare::new(0.2, 1.0),
            ClassShare::new(0.0, 1.0),
        ])
        .unwrap();
        let total: f64 = (0..4).map(|k| shares.share(k)).sum();
        assert!(total <= 1.0 + 1e-15 && total > 1.0 - 1e-9, "{total}");
        // 0.4 above the floors, split 4:2:1:1.
        for (k, want) in [0.3, 0.4, 0.25, 0.05].iter().enumerate() {
            assert!((shares.share(k) - want).abs() < 1e-9, "{k}");
        }
        let p = Limits::new().rpm(120).tpm(12_000).validate().unwrap();
        let lane = shares.lane(&p, 1);
        assert!((lane.capacity(Dimension::Tokens) - 4_800.0).abs() < 1e-6);
        assert!((lane.increment[0] - 0.5 / 0.4).abs() < 1e-9);
        assert_eq!(lane.tau, p.tau);
    }

    #[test]
    fn bad_shares_are_refused_naming_the_field() {
        let err = |classes: Vec<ClassShare>| Shares::new(classes).unwrap_err().to_string();
        let e = err(vec![ClassShare::new(0.7, 1.0), ClassShare::new(0.5, 1.0)]);
        assert!(e.contains("floors") && e.contains("1.2"), "{e}");
        let e = err(vec![ClassShare::new(0.1, 0.0)]);
        assert!(e.contains("weight") && e.contains("class 0"), "{e}");
        let e = err(vec![ClassShare::new(0.1, 1.0), ClassShare::new(-0.1, 1.0)]);
        assert!(e.contains("floor") && e.contains("class 1"), "{e}");
        let e = err(vec![ClassShare::new(0.1, 1.0).lendable(1.5)]);
        assert!(e.contains("lendable"), "{e}");
        let e = err(vec![ClassShare::new(1.0, 1.0), ClassShare::new(0.0, 1.0)]);
        assert!(e.contains("class 1") && e.contains("no share"), "{e}");
        let e = err(vec![ClassShare::new(0.0, 1.0); 17]);
        assert!(e.contains("16"), "{e}");
        assert!(Shares::new(vec![]).is_err());
        assert!(Shares::new(vec![ClassShare::new(f64::NAN, 1.0)]).is_err());
    }
}
