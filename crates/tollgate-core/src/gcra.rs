//! GCRA reservations over several dimensions at once.

use crate::{Dimension, Dims, Mark, Policy, ReserveError, DIMENSIONS};

/// The state of one key: per dimension the theoretical arrival time and the
/// refunds made so far (both in seconds on the store's clock).
///
/// A fresh key is all zeros: every TAT lies in the past, the buckets are full.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyState {
    /// Theoretical arrival time per dimension.
    pub tat: Dims,
    /// Seconds of TAT given back by refunds since the key was created; bounds
    /// later refunds (see [`settle`](crate::settle)).
    pub refunded: Dims,
}

impl KeyState {
    /// The latest TAT over all limited dimensions: when every bucket is full again.
    pub fn full_at(&self, policy: &Policy) -> f64 {
        Dimension::ALL
            .iter()
            .filter(|d| policy.is_limited(**d))
            .map(|d| self.tat[d.index()])
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// One reservation request, in the units of [`Policy::units`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReserveRequest {
    /// Cost per dimension in units.
    pub cost: Dims,
    /// The class's share of the tolerance, `h_k` in (0, 1]; 1.0 for the top class.
    pub headroom: f64,
    /// The latest slot granted in this class that is still queued (FIFO tail);
    /// `f64::NEG_INFINITY` when the queue is empty.
    pub tail: f64,
    /// The longest the caller will wait, in seconds; `None` waits for ever.
    pub max_wait: Option<f64>,
    /// Reservations waiting in this class's queue now.
    pub queued: u64,
    /// Refuse to queue when `queued` has reached this many.
    pub max_queue: Option<u64>,
}

impl ReserveRequest {
    /// A top-class request with no queue, no wait bound and no queue cap.
    pub fn new(cost: Dims) -> Self {
        ReserveRequest {
            cost,
            headroom: 1.0,
            tail: f64::NEG_INFINITY,
            max_wait: None,
            queued: 0,
            max_queue: None,
        }
    }
}

/// A granted reservation.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// When the request may start (store clock, seconds).
    pub slot: f64,
    /// The key's state with the reservation charged.
    pub state: KeyState,
    /// What settlement needs to know about this reservation.
    pub mark: Mark,
    /// Per dimension, how far the TAT lay beyond the slot before this charge
    /// (`TAT − slot`, negative when the bucket was full at the slot). While the
    /// reservation is queued, refunds of reservations charged before it must not
    /// exceed this (see [`settle`](crate::settle)); stores keep it with the queue.
    pub headroom: Dims,
}

/// Reserves a slot for `req` at time `now`: the pure step of `acquire`.
///
/// All limited dimensions are checked and charged together; on error nothing is
/// charged (the caller keeps `state`).
#[inline]
pub fn reserve(
    policy: &Policy,
    state: &KeyState,
    now: f64,
    req: &ReserveRequest,
) -> Result<Grant, ReserveError> {
    let tolerance = policy.tau * req.headroom;
    let mut slot = now.max(req.tail);
    let mut charge = [0.0; DIMENSIONS];
    for d in Dimension::ALL {
        let i = d.index();
        let inc = policy.increment[i];
        if inc == 0.0 {
            continue;
        }
        if req.cost[i] > policy.capacity(d) {
            return Err(policy.too_large_in(d, req.cost[i]));
        }
        charge[i] = req.cost[i] * inc;
        slot = slot.max(state.tat[i] + charge[i] - tolerance);
    }
    let wait = slot - now;
    if wait > 0.0 {
        if let Some(max_wait) = req.max_wait {
            if wait > max_wait {
                return Err(ReserveError::WouldWait {
                    retry_after: wait,
                    max_wait,
                });
            }
        }
        if let Some(max_queue) = req.max_queue {
            if req.queued >= max_queue {
                return Err(ReserveError::QueueFull {
                    depth: req.queued,
                    max_queue,
                    retry_after: wait,
                });
            }
        }
    }
    let mut next = *state;
    let mut headroom = [f64::INFINITY; DIMENSIONS];
    for i in 0..DIMENSIONS {
        if policy.increment[i] > 0.0 {
            next.tat[i] = state.tat[i].max(slot) + charge[i];
            headroom[i] = state.tat[i] - slot;
        }
    }
    Ok(Grant {
        slot,
        headroom,
        state: next,
        mark: Mark {
            cost: req.cost,
            end: next.tat,
            refunded_at: state.refunded,
            gap: headroom.map(|h| if h.is_finite() { (-h).max(0.0) } else { 0.0 }),
            before: state.tat,
            class_refunds_at: [0.0; DIMENSIONS],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::take;
    use crate::{Cost, Limits};

    fn policy() -> Policy {
        Limits::new().requests(6).tokens(600).validate().unwrap()
    }

    #[test]
    fn full_bucket_admits_a_burst_then_spaces_requests() {
        let p = policy();
        let mut s = KeyState::default();
        let req = ReserveRequest::new(p.units(Cost::tokens(10)));
        for _ in 0..6 {
            let g = reserve(&p, &s, 1000.0, &req).unwrap();
            assert_eq!(g.slot, 1000.0);
            s = g.state;
        }
        // The request bucket (6 per 60 s) is empty: next one in 10 s.
        let g = reserve(&p, &s, 1000.0, &req).unwrap();
        assert!((g.slot - 1010.0).abs() < 1e-9, "{}", g.slot);
    }

    #[test]
    fn too_large_is_refused_with_advice() {
        let p = policy();
        let err = reserve(
            &p,
            &KeyState::default(),
            0.0,
            &ReserveRequest::new(p.units(Cost::tokens(601))),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("needs 601 tokens") && msg.contains("at most 600"),
            "{msg}"
        );
        assert!(msg.contains("raise burst or split"), "{msg}");
    }

    #[test]
    fn max_wait_refuses_without_charging() {
        let p = policy();
        let full = ReserveRequest::new(p.units(Cost::tokens(600)));
        let g = reserve(&p, &KeyState::default(), 0.0, &full).unwrap();
        let mut req = ReserveRequest::new(p.units(Cost::tokens(300)));
        req.max_wait = Some(10.0);
        match reserve(&p, &g.state, 0.0, &req) {
            Err(ReserveError::WouldWait { retry_after, .. }) => {
                assert!((retry_after - 30.0).abs() < 1e-9)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fifo_tail_orders_a_small_request_after_a_big_one() {
        let p = policy();
        let g = take(&p, &KeyState::default(), 0.0, 600);
        let big = take(&p, &g.state, 0.0, 500);
        let mut small = ReserveRequest::new(p.units(Cost::tokens(1)));
        small.tail = big.slot;
        let s = reserve(&p, &big.state, 0.0, &small).unwrap();
        assert!(s.slot >= big.slot);
    }

    #[test]
    fn lower_class_keeps_out_of_the_top_share() {
        let p = policy();
        let mut low = ReserveRequest::new(p.units(Cost::tokens(300)));
        low.headroom = 0.5;
        let g = reserve(&p, &KeyState::default(), 0.0, &low).unwrap();
        assert_eq!(g.slot, 0.0);
        // The low class has used its half of the bucket: it must wait.
        let g2 = reserve(&p, &g.state, 0.0, &low).unwrap();
        assert!((g2.slot - 30.0).abs() < 1e-9, "{}", g2.slot);
        // The top class starts on the other half, before the queued low one.
        let top = ReserveRequest::new(p.units(Cost::tokens(250)));
        let t = reserve(&p, &g2.state, 0.0, &top).unwrap();
        assert!(t.slot < g2.slot, "top {} low {}", t.slot, g2.slot);
    }

    /// What headroom does not do: a top-class call does not jump the charges a
    /// lower class already queued. It only skips the last `(1 − h) × τ` of
    /// them (here 30 s: 5 of 10 queued calls).
    #[test]
    fn a_top_call_still_waits_for_the_low_charges_queued_before_it() {
        let p = Limits::new().requests(10).validate().unwrap();
        let mut low = ReserveRequest::new(p.units(Cost::request_only()));
        low.headroom = 0.5;
        let mut state = KeyState::default();
        // 6 s per call, half of the 60 s tolerance for the low class: five
        // calls start now, ten queue at 6, 12, ..., 60 s.
        let mut queued = Vec::new();
        for _ in 0..15 {
            let g = reserve(&p, &state, 0.0, &low).unwrap();
            if g.slot > 0.0 {
                queued.push(g.slot);
            }
            low.tail = g.slot;
            state = g.state;
        }
        assert_eq!(queued.len(), 10);
        let top = ReserveRequest::new(p.units(Cost::request_only()));
        let top = reserve(&p, &state, 0.0, &top).unwrap().slot;
        let next_low = reserve(&p, &state, 0.0, &low).unwrap().slot;
        assert!((top - 36.0).abs() < 1e-9, "{top}");
        assert!((next_low - top - 30.0).abs() < 1e-9, "{next_low}");
        let before_top = queued.iter().filter(|&&s| s < top).count();
        assert_eq!(before_top, 5, "top at {top}, queued low slots {queued:?}");
    }
}
