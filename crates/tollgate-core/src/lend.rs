//! Lending idle lanes by weight: whose turn it is to borrow.
//!
//! When a class is idle, its lane's room goes to the classes that borrow
//! (see [`Shares`](crate::Shares)). Left to itself, that room goes to
//! whoever asks first, and the higher priorities, which may fill a lender
//! deeper, take most of it. For the excess to be shared by weight, each
//! shared bucket keeps one small **pool** record: per class its *pass*
//! (the bucket seconds it borrowed, divided by its weight: a virtual time
//! in the manner of start-time fair queuing) and when it last asked to
//! borrow.
//!
//! A class may borrow only while its pass is not ahead of the pass of any
//! other class that asked within the last [`BORROW_WINDOW`] seconds (is
//! waiting to borrow too); a borrow it made adds its cost in bucket
//! seconds over its weight to its pass. So among the classes that keep
//! borrowing, what each borrows grows in proportion to its weight, within
//! one call each. A class that comes back after a pause starts level with
//! the least pass of those still borrowing, not with credit for the time it
//! was away. Work per operation: one pass over the classes (at most
//! [`MAX_CLASSES`](crate::MAX_CLASSES)).
//!
//! ```
//! use tollgate_core::{charge_borrow, may_borrow, Borrower, BORROW_WINDOW};
//! let mut pool = [Borrower::default(); 2];
//! // Class 0 (weight 2) and class 1 (weight 1) both ask at 10 s.
//! assert!(may_borrow(&mut pool, 0, 10.0, BORROW_WINDOW));
//! assert!(may_borrow(&mut pool, 1, 10.0, BORROW_WINDOW));
//! charge_borrow(&mut pool, 0, 1.0 / 2.0);
//! // Class 0 is ahead of class 1, which is waiting: not its turn.
//! assert!(!may_borrow(&mut pool, 0, 10.1, BORROW_WINDOW));
//! charge_borrow(&mut pool, 1, 1.0 / 1.0);
//! assert!(may_borrow(&mut pool, 0, 10.2, BORROW_WINDOW));
//! ```

/// How long (seconds) a class counts as waiting to borrow after it last
/// asked. The first waiter of a lane asks at least every
/// `MAX_ADVANCE_CHECK` (100 ms) while it waits; this leaves room for a
/// busy machine's delays. The longer it is, the longer a class that stopped
/// borrowing still holds the others back (what they would have borrowed
/// meanwhile stays in the lender's lane, up to its tolerance).
pub const BORROW_WINDOW: f64 = 0.5;

/// One class's record in a shared bucket's pool of borrowers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Borrower {
    /// Bucket seconds borrowed over the class's weight (a virtual time).
    pub pass: f64,
    /// When the class last asked to borrow (store time, seconds);
    /// `f64::NEG_INFINITY` for never.
    pub asked: f64,
}

impl Default for Borrower {
    fn default() -> Self {
        Borrower {
            pass: 0.0,
            asked: f64::NEG_INFINITY,
        }
    }
}

/// Whether class `class` may borrow now, at store time `now`; records that
/// it asked. Refused while its pass is ahead of that of another class that
/// asked within `window` seconds. A class that had not asked within
/// `window` first comes level with the least pass of those that did.
///
/// A class out of range of `pool` may not borrow (nothing is recorded).
pub fn may_borrow(pool: &mut [Borrower], class: usize, now: f64, window: f64) -> bool {
    if class >= pool.len() {
        return false;
    }
    let mut least = f64::INFINITY;
    for (k, b) in pool.iter().enumerate() {
        if k != class && b.asked + window >= now && b.pass < least {
            least = b.pass;
        }
    }
    let me = &mut pool[class];
    if me.asked + window < now && least < f64::INFINITY && me.pass < least {
        me.pass = least;
    }
    me.asked = now;
    me.pass <= least
}

/// Adds a borrow to class `class`'s pass: its cost in bucket seconds over
/// the class's weight (`pass`). Nothing for a class out of range or a
/// `pass` that is not above zero.
pub fn charge_borrow(pool: &mut [Borrower], class: usize, pass: f64) {
    if let Some(b) = pool.get_mut(class) {
        if pass > 0.0 {
            b.pass += pass;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes that always ask, borrowing one bucket second a turn:
    /// each borrows by its weight.
    #[test]
    fn classes_that_keep_asking_borrow_by_weight() {
        let weights = [3.0, 1.0, 2.0];
        let mut pool = [Borrower::default(); 3];
        let mut borrowed = [0.0; 3];
        let mut now = 100.0;
        for _ in 0..600 {
            for k in 0..3 {
                now += 0.01;
                if may_borrow(&mut pool, k, now, BORROW_WINDOW) {
                    charge_borrow(&mut pool, k, 1.0 / weights[k]);
                    borrowed[k] += 1.0;
                }
            }
        }
        let total: f64 = borrowed.iter().sum();
        for k in 0..3 {
            let want = total * weights[k] / 6.0;
            assert!((borrowed[k] - want).abs() <= 2.0, "{borrowed:?}");
        }
    }

    #[test]
    fn a_class_alone_always_may_and_one_back_from_a_pause_has_no_credit() {
        let mut pool = [Borrower::default(); 2];
        for i in 0..100 {
            assert!(may_borrow(
                &mut pool,
                0,
                25.0 + i as f64 * 0.05,
                BORROW_WINDOW
            ));
            charge_borrow(&mut pool, 0, 1.0);
        }
        // Class 1 comes at 30 s: level with class 0, not 100 passes behind.
        assert!(may_borrow(&mut pool, 1, 30.0, BORROW_WINDOW));
        assert_eq!(pool[1].pass, pool[0].pass);
        charge_borrow(&mut pool, 1, 1.0);
        assert!(may_borrow(&mut pool, 0, 30.1, BORROW_WINDOW));
        charge_borrow(&mut pool, 0, 1.0);
        assert!(may_borrow(&mut pool, 1, 30.2, BORROW_WINDOW));
        charge_borrow(&mut pool, 1, 1.0);
        // Class 0 is one behind, then ahead; class 1 stops asking: after
        // the window class 0 is alone again.
        assert!(may_borrow(&mut pool, 0, 30.3, BORROW_WINDOW));
        charge_borrow(&mut pool, 0, 2.0);
        assert!(!may_borrow(&mut pool, 0, 30.4, BORROW_WINDOW));
        assert!(may_borrow(
            &mut pool,
            0,
            30.2 + BORROW_WINDOW + 0.01,
            BORROW_WINDOW
        ));
        assert!(!may_borrow(&mut pool, 5, 31.0, BORROW_WINDOW));
        charge_borrow(&mut pool, 5, 1.0);
    }
}
