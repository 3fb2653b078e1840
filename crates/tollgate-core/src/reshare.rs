//! A lane whose share of its bucket changes (see [`Shares`](crate::Shares)).
//!
//! A lane's state is a TAT line in seconds of its own rate: the same TAT
//! holds `to / from` times as many units under a share `to` as under
//! `from`. Read as it stands, a lane that grows would at once have room
//! for the part of its new capacity it had free of its old one, while the
//! calls other lanes started still count: the lanes together would start
//! more than the bucket holds. So a change moves each lane's line, once, in
//! the store, before any call uses the new lanes. What is kept is the
//! lanes' **room** (the units they may start at once), which is what the
//! bucket has free: a change never makes the lanes' rooms together larger.
//!
//! - **A lane that shrinks keeps its line**: the part of its capacity it
//!   had free becomes the same part of the smaller one, so its room shrinks
//!   by `(τ − u) × (from − to)` seconds of the bucket's rate (`u`: what of
//!   its line lies ahead of now). That room it gives up goes to the lanes
//!   that grow. A line beyond `τ` is a queue, whose reservations keep their
//!   slots, spaced at the old rate: for `u − τ` seconds the lane still
//!   starts `from − to` of the bucket's rate more than its new share, which
//!   the lanes that grow pay for ahead. Both are [`Reshared::owed`], the
//!   same expression: `(u − τ) × (from − to)` seconds, in units (negative:
//!   room given up).
//! - **A lane that grows keeps the room it had**, in units: its line moves
//!   to `now + τ − (τ − u) × from / to` (while `u < τ`); what it gained
//!   comes as its line drains, at its new rate. On top it is charged its
//!   part of what the shrinking lanes owe (split by what each lane
//!   gained, [`reshare_extra`]): a charge when they owe, else room, up to
//!   its new capacity.
//!
//! Why that is safe: the bucket's level plus the lanes' rooms never
//! exceeds its capacity (a start moves units from one to the other; each
//! lane's room refills no faster than its share of the rate), and a change
//! keeps the rooms' sum or lowers it, while the queue that still goes at
//! the old rate is paid for ahead. Shrinking lanes are moved first, so no
//! moment has the lanes' rates adding up to more than the bucket's. A
//! store keeps with each lane the share its line is in (the change's
//! marker): a lane already at the share asked is not moved again, and
//! tells the `owed` it recorded then, so every process making the same
//! change gets the same answers and each lane is moved once.

use crate::{Dims, KeyState, Policy, DIMENSIONS};

/// What [`reshare`] did to a lane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reshared {
    /// The lane's new state.
    pub state: KeyState,
    /// For a lane that shrank, per dimension, the units the lanes that grow
    /// owe for it: what its queue beyond the tolerance starts faster than
    /// its new share allows, or, negative, the room it gave up (0 for a
    /// lane that grew or kept its share).
    pub owed: Dims,
}

/// Moves a lane of `policy`'s bucket (the whole bucket's policy) from the
/// share `from` to the share `to` at store time `now`, charging it `extra`
/// units per dimension on top when it grows (its part of the other lanes'
/// [`Reshared::owed`]; negative: room it is given, up to its capacity).
/// See the module for the rules.
///
/// The same operations, in the same order, as the stores' scripts.
///
/// ```
/// use tollgate_core::{reshare, Cost, KeyState, Limits};
/// // 600 tokens a minute; a lane of 10% grows to 90% while it is empty.
/// let p = Limits::new().tokens(600).validate().unwrap();
/// let r = reshare(&p, &KeyState::default(), 100.0, 0.1, 0.9, &[0.0; 4]);
/// // Its line moves to 8/9 of the tolerance: room for its 60 tokens, no more.
/// let room = (100.0 + p.tau - r.state.tat[1]) / (p.increment[1] / 0.9);
/// assert!((room - 60.0).abs() < 1e-9);
/// ```
pub fn reshare(
    policy: &Policy,
    state: &KeyState,
    now: f64,
    from: f64,
    to: f64,
    extra: &Dims,
) -> Reshared {
    let tau = policy.tau;
    let mut next = *state;
    let mut owed = [0.0; DIMENSIONS];
    for i in 0..DIMENSIONS {
        let inc = policy.increment[i];
        if inc == 0.0 {
            continue;
        }
        let tat = state.tat[i];
        let ahead = (tat - now).max(0.0);
        if to > from {
            let mut line = tat;
            if ahead < tau {
                line = now + (tau - (tau - ahead) * from / to);
            }
            let x = extra[i];
            if x > 0.0 {
                line = line.max(now) + x * (inc / to);
            } else if x < 0.0 && ahead < tau {
                line = (line + x * (inc / to)).max(now);
            }
            next.tat[i] = line;
        } else if to < from {
            owed[i] = (ahead - tau) * (from - to) / inc;
        }
    }
    Reshared { state: next, owed }
}

/// Each lane's part of what the others owe ([`Reshared::owed`]) when the
/// lanes go from the shares `from` to `to`: the lanes that grow share
/// `owed` (summed over the lanes that shrank) by what each gained; the
/// others get none.
pub fn reshare_extra(from: &[f64], to: &[f64], owed: &Dims) -> Vec<Dims> {
    let gained: f64 = from.iter().zip(to).map(|(f, t)| (t - f).max(0.0)).sum();
    from.iter()
        .zip(to)
        .map(|(f, t)| {
            if t > f && gained > 0.0 {
                owed.map(|q| q * ((t - f) / gained))
            } else {
                [0.0; DIMENSIONS]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cost, Limits, ReserveRequest};

    /// Tokens a lane of share `share` starts at once at `now`.
    fn room(policy: &Policy, state: &KeyState, now: f64, share: f64) -> f64 {
        let lane = policy.lane(share);
        (now + lane.tau - state.tat[1].max(now)) / lane.increment[1]
    }

    /// Calls of `tokens` reserved on a lane of share `share` at `now`.
    fn filled(policy: &Policy, share: f64, tokens: &[u64], now: f64) -> KeyState {
        let lane = policy.lane(share);
        tokens.iter().fold(KeyState::default(), |state, &t| {
            let request = ReserveRequest::new(policy.units(Cost::tokens(t)));
            crate::reserve(&lane, &state, now, &request).unwrap().state
        })
    }

    fn close(got: f64, want: f64) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn the_lanes_keep_the_room_they_had_together() {
        // 1,000 tokens a second; lanes 0.9 and 0.1 turned to 0.1 and 0.9.
        let p = Limits::new()
            .tokens(1_000)
            .window_secs(1.0)
            .validate()
            .unwrap();
        let (from, to) = ([0.9, 0.1], [0.1, 0.9]);
        let none = [0.0; DIMENSIONS];
        for (used, room0, room1) in [(900, 0.0, 100.0), (450, 50.0, 500.0), (0, 100.0, 900.0)] {
            // Lane 0 has `used` tokens in use, lane 1 nothing.
            let lane0 = filled(&p, 0.9, &[used], 10.0);
            let shrunk = reshare(&p, &lane0, 10.0, from[0], to[0], &none);
            assert_eq!(shrunk.state, lane0, "a lane that shrinks keeps its line");
            close(room(&p, &shrunk.state, 10.0, 0.1), room0);
            let extra = reshare_extra(&from, &to, &shrunk.owed);
            assert_eq!(extra[0], none);
            assert_eq!(extra[1], shrunk.owed);
            let grown = reshare(&p, &KeyState::default(), 10.0, from[1], to[1], &extra[1]);
            close(room(&p, &grown.state, 10.0, 0.9), room1);
            // Together what the bucket has free, as before the change.
            close(room0 + room1, 1_000.0 - used as f64);
        }
    }

    #[test]
    fn a_queue_in_a_lane_that_shrinks_is_paid_for_by_the_lane_that_grows() {
        let p = Limits::new()
            .tokens(1_000)
            .window_secs(1.0)
            .validate()
            .unwrap();
        // Lane 0 full, and 200 tokens queued at 900 a second: 0.8 of the
        // bucket's rate too fast for 2/9 s once it is a tenth.
        let lane0 = filled(&p, 0.9, &[900, 200], 10.0);
        let shrunk = reshare(&p, &lane0, 10.0, 0.9, 0.1, &[0.0; DIMENSIONS]);
        close(shrunk.owed[1], 200.0 * 0.8 / 0.9);
        let extra = reshare_extra(&[0.9, 0.1], &[0.1, 0.9], &shrunk.owed);
        let grown = reshare(&p, &KeyState::default(), 10.0, 0.1, 0.9, &extra[1]);
        close(room(&p, &grown.state, 10.0, 0.9), 100.0 - 200.0 * 0.8 / 0.9);
        // An unchanged share changes nothing.
        let same = reshare(&p, &lane0, 10.0, 0.5, 0.5, &[0.0; DIMENSIONS]);
        assert_eq!((same.state, same.owed), (lane0, [0.0; DIMENSIONS]));
    }

    #[test]
    fn room_given_never_passes_the_new_capacity() {
        let p = Limits::new()
            .tokens(1_000)
            .window_secs(1.0)
            .validate()
            .unwrap();
        let grown = reshare(
            &p,
            &KeyState::default(),
            10.0,
            0.5,
            0.6,
            &[0.0, -900.0, 0.0, 0.0],
        );
        close(room(&p, &grown.state, 10.0, 0.6), 600.0);
        assert_eq!(grown.state.tat[1], 10.0);
    }
}
