//! Settling a reservation with the usage actually measured.

use crate::{Dims, KeyState, Policy, DIMENSIONS};

/// What a reservation remembers for its settlement (all zeros by default:
/// a charge of no estimate).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mark {
    /// The estimated cost per dimension, in units.
    pub cost: Dims,
    /// Where its cost ended on each dimension's TAT line.
    pub end: Dims,
    /// The key's refund counters when it was taken.
    pub refunded_at: Dims,
    /// Idle time the reservation skipped on each TAT line: where a dimension's
    /// bucket was already full before the slot, its TAT jumped to the slot
    /// (`max(0, slot − TAT)`). A cancellation gives that back too.
    pub gap: Dims,
    /// Each dimension's TAT just before this charge.
    pub before: Dims,
    /// The class's counters of refunds made by started reservations (and by
    /// the first of its queue) when this one was taken (kept by the store;
    /// see [`advance`](crate::advance)).
    pub class_refunds_at: Dims,
}

/// The outcome of [`settle`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settled {
    /// The key's new state.
    pub state: KeyState,
    /// Units charged on top of the estimate, per dimension.
    pub charged: Dims,
    /// Units given back, per dimension (may be less than asked: see [`settle`]).
    pub refunded: Dims,
    /// Seconds the TAT moved back, per dimension. When the settled reservation
    /// had started, or was the first of its class's queue, stores add this to
    /// its class's refund counters.
    pub returned: Dims,
    /// For a cancellation, the seconds of TAT per dimension it gave up but
    /// could not give back (the reservations queued after it still lean on
    /// them): vacated, yet still on the TAT line. Stores hand them to the
    /// reservation charged right after it (see [`settle_vacated`]).
    pub left: Dims,
    /// For a reservation that had started, the seconds of TAT per dimension
    /// of its refund that the headroom of the reservations queued after it
    /// held back: not drained, yet still on the TAT line. Stores hand them to
    /// the reservation charged right after it when that one is queued (see
    /// [`settle_vacated`]).
    pub held: Dims,
}

impl Settled {
    /// A settlement that changed nothing: the key keeps `state`.
    pub fn unchanged(state: KeyState) -> Self {
        Settled {
            state,
            charged: [0.0; DIMENSIONS],
            refunded: [0.0; DIMENSIONS],
            returned: [0.0; DIMENSIONS],
            left: [0.0; DIMENSIONS],
            held: [0.0; DIMENSIONS],
        }
    }
}

/// Settles a reservation: charge usage above the estimate, refund usage below it.
///
/// A refund never returns capacity that has already drained: it is capped by the
/// part of this reservation's cost that still lies ahead of `now` on the TAT line,
/// moved back by every refund made on the key since the reservation was taken (a
/// conservative bound), and by the key's whole backlog.
///
/// It is also capped by `later_headroom`: per dimension, the least headroom
/// ([`Grant::headroom`](crate::Grant) less the refunds made since) of the
/// reservations still queued that were charged after this one. Those keep their
/// slots; lowering the TAT below `slot + their charges` would let the bucket
/// count refill during a time it is really full and then overdraw it at their
/// slot. Pass `f64::INFINITY` where nothing later is queued.
///
/// Cancelling is settling with `actual = [0; 4]`.
pub fn settle(
    policy: &Policy,
    state: &KeyState,
    now: f64,
    mark: &Mark,
    actual: &Dims,
    later_headroom: &Dims,
) -> Settled {
    settle_vacated(
        policy,
        state,
        now,
        mark,
        actual,
        later_headroom,
        &Vacated::default(),
    )
}

/// What [`settle_vacated`] knows of a reservation that was still queued.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Vacated {
    /// Whether the reservation was still waiting for its slot. Its charge
    /// then still lies wholly ahead on the TAT line: refunds of what was
    /// charged before it stop at its headroom, so none of them moved it
    /// back into the past, and the refund need not assume they did.
    pub queued: bool,
    /// Its slot (store clock, seconds), when queued.
    pub slot: f64,
    /// Seconds per dimension that cancelled predecessors vacated just ahead
    /// of its charge but could not give back (their [`Settled::left`]).
    pub ahead: Dims,
}

/// [`settle`] for a reservation that was still queued (see [`Vacated`]),
/// whose cancelled predecessors on the TAT line may have handed it what they
/// could not give back.
///
/// A cancellation gives them back together with its own charge, under the
/// same caps (the backlog, the headroom of what is queued after it); what it
/// cannot give back it leaves in [`Settled::left`], for the store to hand to
/// the reservation charged right after it when that one is queued behind it
/// in its class: nothing else lies between them on the TAT line, so that one
/// may start earlier by them (see [`advance`](crate::advance)). Other
/// settlements ignore `vacated` (it stays on the line: safe, only later than
/// could be).
///
/// A reservation that had started gives back what has not drained of its
/// charge, but no more than the headroom of those queued after it allows;
/// the rest ([`Settled::held`]) lies just before the charge of the
/// reservation charged right after it, and after `now`. When that one is
/// queued, the store hands it the seconds, as for a cancellation's `left`:
/// it may start earlier by them, as if the refund had been whole (and moving
/// earlier, it hands them on in turn: see
/// [`moved_vacated`](crate::moved_vacated)).
pub fn settle_vacated(
    policy: &Policy,
    state: &KeyState,
    now: f64,
    mark: &Mark,
    actual: &Dims,
    later_headroom: &Dims,
    vacated: &Vacated,
) -> Settled {
    let mut next = *state;
    let mut charged = [0.0; DIMENSIONS];
    let mut refunded = [0.0; DIMENSIONS];
    let mut returned = [0.0; DIMENSIONS];
    let mut left = [0.0; DIMENSIONS];
    let mut held = [0.0; DIMENSIONS];
    let cancelled = actual.iter().all(|&a| a == 0.0);
    for i in 0..DIMENSIONS {
        let inc = policy.increment[i];
        if inc == 0.0 {
            continue;
        }
        let delta = actual[i] - mark.cost[i];
        if delta > 0.0 {
            next.tat[i] = state.tat[i].max(now) + delta * inc;
            charged[i] = delta;
        } else if delta < 0.0 || (cancelled && (mark.gap[i] > 0.0 || vacated.ahead[i] > 0.0)) {
            // A cancellation gives back the idle gap its slot skipped even
            // where it cost nothing (a request of no output tokens still
            // moved the output TAT to its slot).
            let (gap, ahead) = if cancelled {
                (mark.gap[i], vacated.ahead[i])
            } else {
                (0.0, 0.0)
            };
            let shift = if vacated.queued {
                0.0
            } else {
                state.refunded[i] - mark.refunded_at[i]
            };
            // The vacated seconds lie just before its charge (and the gap
            // its slot skipped), which starts no earlier than its slot: what
            // of them lies in the past has drained.
            let ahead_undrained = if ahead > 0.0 {
                let start = vacated.slot.min(mark.end[i] - mark.cost[i] * inc - gap);
                (start - now).max(0.0).min(ahead)
            } else {
                0.0
            };
            let own = ((mark.end[i] - shift - now).min(mark.cost[i] * inc + gap) + ahead_undrained)
                .min(state.tat[i] - now);
            let undrained = own.min(later_headroom[i]);
            let wanted = -delta * inc + gap + ahead;
            let give = wanted.min(undrained);
            if !vacated.queued {
                held[i] = (wanted.min(own) - give.max(0.0)).max(0.0);
            }
            if give > 0.0 {
                next.tat[i] = state.tat[i] - give;
                next.refunded[i] = state.refunded[i] + give;
                refunded[i] = (give / inc).min(-delta);
                returned[i] = give;
            }
            if cancelled {
                left[i] = wanted - give.max(0.0);
            }
        }
    }
    Settled {
        state: next,
        charged,
        refunded,
        returned,
        left,
        held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::take;
    use crate::{Cost, Limits};

    const NONE: Dims = [f64::INFINITY; DIMENSIONS];

    #[test]
    fn refund_gives_back_only_what_has_not_drained() {
        let p = Limits::new().tokens(600).validate().unwrap(); // 0.1 s per token
        let g = take(&p, &KeyState::default(), 0.0, 600);
        // 20 s later 200 tokens have drained; the call used 100: refund at most 400.
        let s = settle(
            &p,
            &g.state,
            20.0,
            &g.mark,
            &p.units(Cost::tokens(100)),
            &NONE,
        );
        assert!((s.refunded[1] - 400.0).abs() < 1e-9, "{:?}", s.refunded);
        assert!((s.state.tat[1] - 20.0).abs() < 1e-9);
    }

    #[test]
    fn overuse_is_charged_from_now() {
        let p = Limits::new().tokens(600).validate().unwrap();
        let g = take(&p, &KeyState::default(), 0.0, 100);
        let s = settle(
            &p,
            &g.state,
            50.0,
            &g.mark,
            &p.units(Cost::tokens(300)),
            &NONE,
        );
        assert_eq!(s.charged[1], 200.0);
        assert!((s.state.tat[1] - 70.0).abs() < 1e-9);
    }

    #[test]
    fn refunds_by_others_shrink_later_refunds() {
        let p = Limits::new().tokens(600).validate().unwrap();
        let a = take(&p, &KeyState::default(), 0.0, 300);
        let b = take(&p, &a.state, 0.0, 300);
        let after_a = settle(&p, &b.state, 0.0, &a.mark, &[1.0, 0.0, 0.0, 0.0], &NONE);
        assert!((after_a.refunded[1] - 300.0).abs() < 1e-9);
        // b's segment moved back by 30 s; at t = 20 only 10 s of it is still ahead.
        let after_b = settle(
            &p,
            &after_a.state,
            20.0,
            &b.mark,
            &[1.0, 0.0, 0.0, 0.0],
            &NONE,
        );
        assert!(
            (after_b.refunded[1] - 100.0).abs() < 1e-9,
            "{:?}",
            after_b.refunded
        );
        assert!(after_b.state.tat[1] >= 20.0 - 1e-9);
    }

    #[test]
    fn refund_stops_where_a_queued_reservation_would_see_a_full_bucket() {
        // 400 tokens per 10 s. A (133) starts now; B (344) waits 1.925 s for A's
        // tokens to drain. Cancelling A now must not give back all 133: the bucket
        // is full again after 1.4 s, and refill beyond full is lost, so B's start
        // at 1.925 s leaves only 56 tokens over for others.
        let p = Limits::new()
            .input_tokens(400)
            .window_secs(10.0)
            .validate()
            .unwrap();
        let a = take(&p, &KeyState::default(), 1000.0, 133);
        let b = take(&p, &a.state, 1000.0, 344);
        assert!((b.slot - 1001.925).abs() < 1e-9);
        assert!((b.headroom[2] - 1.4).abs() < 1e-9);
        let cancel_a = settle(
            &p,
            &b.state,
            1000.0,
            &a.mark,
            &[0.0; DIMENSIONS],
            &b.headroom,
        );
        assert!(
            (cancel_a.refunded[2] - 56.0).abs() < 1e-6,
            "{:?}",
            cancel_a.refunded
        );
    }
}
