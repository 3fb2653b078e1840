//! Moving a queued reservation earlier when refunds made room ahead of it.

use crate::{Dims, Mark, Policy};

/// The earlier slot a queued reservation may move to, if any.
///
/// A queued reservation's slot was computed from the estimates of everything
/// charged before it. When those calls settle below their estimates, the TAT
/// it had to wait for moves back, but its slot does not — the capacity would go
/// unused while it sleeps. A waiting caller therefore asks, now and then,
/// whether it may go earlier:
///
/// `s' = max(now, predecessor, max_d(before_d − refunds_d + c_d·T_d − τ_k))`
///
/// where `before` is the TAT just before its charge ([`Mark::before`]),
/// `refunds` what started reservations of its class, and the first reservation
/// of its class's queue when that one was settled or cancelled, have given
/// back since it was taken, and `predecessor` the slot of the reservation
/// queued just ahead of it in its class (FIFO is kept). Only those refunds of
/// the *same* class count: in a FIFO class those reservations were all charged
/// before it, so each lowered the TAT it waited for. (Refunds of reservations
/// charged after it did not, and other classes' are not told apart.) Counting
/// the queue's first matters where its reservations leave before their slots
/// (a caller that borrowed another lane): the whole queue moves up by what the
/// first gave back, instead of leaving its slot unused. What the first gives
/// back includes what it handed on by moving ([`moved_vacated`]), which went
/// down the queue: stores forget those hand-ons then, lest the ones behind
/// count them twice. Moving earlier is safe for
/// the reservations charged after it: their own slots already counted its
/// charge, which stays on the TAT line.
///
/// Returns `None` when the slot cannot move.
pub fn advance(
    policy: &Policy,
    now: f64,
    slot: f64,
    mark: &Mark,
    tolerance: f64,
    class_refunds_since: &Dims,
    predecessor: f64,
) -> Option<f64> {
    let mut earliest = now.max(predecessor);
    for (i, &inc) in policy.increment.iter().enumerate() {
        if inc > 0.0 {
            let bound = mark.before[i] - class_refunds_since[i] + mark.cost[i] * inc - tolerance;
            earliest = earliest.max(bound);
        }
    }
    (earliest < slot).then_some(earliest)
}

/// The seconds of TAT per dimension that a queued reservation which moved
/// to `slot` vacated for the reservation charged right after it, beyond the
/// refunds both see.
///
/// Its charge lies on the TAT line from `before + gap` ([`Mark::before`],
/// [`Mark::gap`]); having moved, it really starts from
/// `max(before − refunds − credit, slot)`, where `credit` is what cancelled
/// predecessors handed it and `refunds` what started reservations of its
/// class gave back since it was taken (the one behind sees those itself).
/// The difference, `gap + min(credit, before − refunds − slot)`, lies between
/// the two on the line only on paper: the one behind may start earlier by it
/// (stores hand it on when nothing else was charged between them, as for a
/// cancellation's [`Settled::left`](crate::Settled)). Never negative.
pub fn moved_vacated(
    policy: &Policy,
    mark: &Mark,
    credit: &Dims,
    class_refunds_since: &Dims,
    slot: f64,
) -> Dims {
    let mut out = [0.0; crate::DIMENSIONS];
    for (i, &inc) in policy.increment.iter().enumerate() {
        if inc > 0.0 {
            let room = mark.before[i] - class_refunds_since[i] - slot;
            out[i] = (mark.gap[i] + credit[i].min(room)).max(0.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::take;
    use crate::{reserve, settle, Cost, KeyState, Limits, ReserveRequest, DIMENSIONS};

    #[test]
    fn a_refund_ahead_lets_the_next_reservation_go_earlier() {
        // 1000 tokens per 10 s. A takes 1000 (estimate) at t=0; B (500) waits 5 s.
        let p = Limits::new()
            .tokens(1000)
            .window_secs(10.0)
            .validate()
            .unwrap();
        let a = take(&p, &KeyState::default(), 0.0, 1000);
        let mut req_b = ReserveRequest::new(p.units(Cost::tokens(500)));
        req_b.tail = a.slot;
        let b = reserve(&p, &a.state, 0.0, &req_b).unwrap();
        assert!((b.slot - 5.0).abs() < 1e-9);
        // At t=1, A settles: it used 200. 800 tokens (8 s) flow back.
        // The refund is capped by B's headroom (5 s): B keeps its slot, so the
        // bucket must not look full before it.
        let settled = settle(
            &p,
            &b.state,
            1.0,
            &a.mark,
            &p.units(Cost::tokens(200)),
            &b.headroom,
        );
        let returned = settled.returned;
        assert!((returned[1] - 5.0).abs() < 1e-9, "{returned:?}");
        // A used 200 and 100 have refilled since: 900 free, so B may start now.
        let moved = advance(&p, 1.0, b.slot, &b.mark, p.tau, &returned, a.slot).unwrap();
        assert!((moved - 1.0).abs() < 1e-9, "{moved}");
        // Without refunds ahead of it, B stays.
        assert_eq!(
            advance(&p, 1.0, b.slot, &b.mark, p.tau, &[0.0; DIMENSIONS], a.slot),
            None
        );
    }
}
