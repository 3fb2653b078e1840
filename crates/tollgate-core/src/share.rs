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

use crate::{Dims, Policy, ShareError, DIMENSIONS};

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

/// Where [`Shares::spread`] puts usage above an estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    /// Units to charge to each lane, per dimension.
    pub charge: Vec<Dims>,
    /// Per dimension, the level every lane's TAT line reaches at least
    /// (`f64::NEG_INFINITY` where nothing was spread).
    pub levels: Dims,
}

impl Spread {
    /// When the lanes have paid the usage spread, for calls of `tolerance`
    /// seconds (τ less the safety margin): before it, no lane may start a
    /// call asked after the usage was known. `f64::NEG_INFINITY` when
    /// nothing was spread.
    pub fn clear_at(&self, tolerance: f64) -> f64 {
        self.levels.iter().fold(f64::NEG_INFINITY, |a, &l| a.max(l)) - tolerance
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

    /// Where usage above a call's estimate (`over`, units per dimension)
    /// goes: per dimension, the units to charge to each lane, given where
    /// each lane's TAT line ends (`lines[k]`: its TAT, or the store's time
    /// where that is later) and the whole bucket's `increment` (seconds per
    /// unit).
    ///
    /// The lines are raised to one common level, the lowest first: lanes
    /// with room give it first, and the rest lifts every lane at that level
    /// by the same seconds, as it would lift the whole bucket's line. Why:
    /// the lanes are safe together because a lane that admits a new call
    /// has room of its own and every other lane is within its part (see the
    /// module). Charged to one lane alone the debt leaves the others
    /// admitting while the bucket is overdrawn; charged by share alone it
    /// leaves a lane with room admitting at once while another lane's share
    /// waits behind its queue. Raised to a common level, no lane admits a
    /// call asked after the debt before every lane's line has passed that
    /// level, which is when the whole bucket has paid it. A refund may
    /// still lower a lane's line below that level afterwards (its call used
    /// less than it reserved), so the caller also holds every lane's new
    /// calls until then ([`Spread::clear_at`]). Charges add up, so what
    /// another process charged or refunded meanwhile only moves a line by
    /// what it did.
    pub fn spread(&self, lines: &[Dims], over: &Dims, increment: &Dims) -> Spread {
        let mut charge = vec![[0.0; DIMENSIONS]; self.len()];
        let mut levels = [f64::NEG_INFINITY; DIMENSIONS];
        for i in 0..DIMENSIONS {
            let need = over[i] * increment[i];
            if need.is_nan() || need <= 0.0 {
                continue;
            }
            let mut order: Vec<usize> = (0..self.len()).collect();
            order.sort_by(|&a, &b| lines[a][i].total_cmp(&lines[b][i]));
            let (mut level, mut left, mut width) = (lines[order[0]][i], need, 0.0);
            for (n, &k) in order.iter().enumerate() {
                width += self.share[k];
                let next = order.get(n + 1).map_or(f64::INFINITY, |&j| lines[j][i]);
                if width * (next - level) >= left {
                    level += left / width;
                    break;
                }
                left -= width * (next - level);
                level = next;
            }
            for (k, c) in charge.iter_mut().enumerate() {
                c[i] = self.share[k] * (level - lines[k][i]).max(0.0) / increment[i];
            }
            levels[i] = level;
        }
        Spread { charge, levels }
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
    fn usage_above_an_estimate_raises_the_lowest_lines_first_to_one_level() {
        // Lanes 0.5, 0.25, 0.25 of 600 tokens a minute (0.1 s a token).
        let shares = Shares::new(vec![
            ClassShare::new(0.5, 1.0),
            ClassShare::new(0.25, 1.0),
            ClassShare::new(0.25, 1.0),
        ])
        .unwrap();
        let p = Limits::new().tpm(600).validate().unwrap();
        let inc = p.increment;
        let at = |t: [f64; 3]| t.map(|t| [0.0, t, 0.0, 0.0]).to_vec();
        let tokens = |c: &[Dims]| c.iter().map(|c| c[1]).collect::<Vec<_>>();
        let close = |got: Vec<f64>, want: [f64; 3]| {
            let ok = got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-9);
            assert!(ok, "{got:?} vs {want:?}");
        };
        // Lane 1's line ends at 10 s, the others at 20 s: 20 tokens lift
        // lane 1 by 8 s (0.4 s a token in its lane).
        let lines = at([20.0, 10.0, 20.0]);
        let one = shares.spread(&lines, &[0.0, 20.0, 0.0, 0.0], &inc);
        close(tokens(&one.charge), [0.0, 20.0, 0.0]);
        assert!((one.levels[1] - 18.0).abs() < 1e-9, "{:?}", one.levels);
        // 25 tokens lift lane 1 by 10 s to the others' 20 s; 40 more lift
        // all three by 4 s, each by its share.
        let spread = shares.spread(&lines, &[0.0, 65.0, 0.0, 0.0], &inc);
        let c = &spread.charge;
        close(tokens(c), [20.0, 35.0, 10.0]);
        // No call asked after it starts before 24 s less the tolerance.
        assert!((spread.clear_at(p.tau) - (24.0 - p.tau)).abs() < 1e-9);
        let ends: Vec<f64> = (0..3)
            .map(|k| lines[k][1] + c[k][1] * shares.lane(&p, k).increment[1])
            .collect();
        close(ends, [24.0, 24.0, 24.0]);
        // Nothing above the estimate, or an unlimited dimension: no charge.
        for over in [[0.0; DIMENSIONS], [3.0, 0.0, 0.0, 0.0]] {
            let none = shares.spread(&lines, &over, &inc);
            assert!(none.charge.iter().flatten().all(|&c| c == 0.0));
            assert_eq!(none.clear_at(p.tau), f64::NEG_INFINITY);
        }
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
