//! Property tests: the memory store (the arithmetic of `tollgate-core` plus its
//! queues) against a plain token-bucket simulation.
//!
//! For random sequences of acquires, settlements (above and below the estimate)
//! and cancellations over simulated time:
//! - **safety**: replaying the actual usage through a reference bucket never
//!   finds a request admitted while the bucket lacked the tokens for it (usage
//!   above an estimate counts from when it is settled: see `check_safety`);
//! - **no needless waiting**: without settlements every slot is exactly the
//!   earliest time the reference bucket could admit the request in FIFO order;
//!   with settlements, never later than a reference that ignores refunds;
//! - **FIFO**: slots are granted in arrival order.

use std::sync::Arc;

use proptest::prelude::*;
use tollgate::store::{AdvanceCall, ManualClock, MemoryStore, ReserveCall, SettleCall};
use tollgate::{Cost, Limits, Policy};
use tollgate_core::{Dims, Mark, DIMENSIONS};

const EPS: f64 = 1e-6;

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        input: u64,
        output: u64,
        class: u8,
    },
    /// Settle the n-th open reservation (mod count) with `percent` of its estimate.
    Settle {
        n: usize,
        percent: u32,
    },
    /// Cancel the n-th open reservation.
    Cancel {
        n: usize,
    },
    /// The n-th open reservation, if queued, asks to start earlier.
    Advance {
        n: usize,
    },
}

fn op(classes: u8) -> impl Strategy<Value = (f64, Op)> {
    let advance = prop_oneof![Just(0.0), 0.0..0.5f64, 0.0..8.0f64];
    let kind = prop_oneof![
        4 => (1u64..400, 0u64..200, 0..classes).prop_map(|(input, output, class)| Op::Acquire { input, output, class }),
        2 => (0usize..64, 0u32..200).prop_map(|(n, percent)| Op::Settle { n, percent }),
        1 => (0usize..64).prop_map(|n| Op::Cancel { n }),
    ];
    (advance, kind)
}

/// As [`op`], with waiting callers asking to start earlier, and usage never
/// above the estimate.
fn op_with_advance(classes: u8) -> impl Strategy<Value = (f64, Op)> {
    // Mostly bursts (queues form), now and then time passes (calls start).
    let advance = prop_oneof![3 => Just(0.0), 2 => 0.0..0.5f64, 1 => 0.0..4.0f64];
    let kind = prop_oneof![
        4 => (1u64..400, 0u64..200, 0..classes).prop_map(|(input, output, class)| Op::Acquire { input, output, class }),
        3 => (0usize..64, 0u32..=100).prop_map(|(n, percent)| Op::Settle { n, percent }),
        1 => (0usize..64).prop_map(|n| Op::Cancel { n }),
        4 => (0usize..64).prop_map(|n| Op::Advance { n }),
    ];
    (advance, kind)
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        prop_oneof![Just(None), (2u64..20).prop_map(Some)],
        prop_oneof![Just(None), (800u64..3000).prop_map(Some)],
        prop_oneof![Just(None), (400u64..2000).prop_map(Some)],
        prop_oneof![Just(None), (200u64..1000).prop_map(Some)],
        prop_oneof![Just(1.0), 0.5..2.0f64],
        prop_oneof![Just(1.0), Just(5.0)],
    )
        .prop_filter("at least one limit", |(r, t, i, o, _, _)| {
            r.is_some() || t.is_some() || i.is_some() || o.is_some()
        })
        .prop_map(|(r, t, i, o, burst, burndown)| Limits {
            requests: r,
            tokens: t,
            input_tokens: i,
            output_tokens: o,
            window_secs: 10.0,
            burst,
            // Burndown acts on the combined limit alone; without one, limits
            // refuse any burndown but the neutral 1.0.
            burndown: if t.is_some() { burndown } else { 1.0 },
        })
}

/// One granted reservation and what became of it.
#[derive(Debug, Clone)]
struct Granted {
    class: u8,
    asked_at: f64,
    /// Index of the operation that made it.
    asked_op: usize,
    slot: f64,
    estimate: Dims,
    /// (time, actual units) when settled or cancelled.
    outcome: Option<(f64, Dims)>,
    /// Index of the operation that settled or cancelled it.
    outcome_op: usize,
}

/// A continuous token bucket per dimension, fed with consumption events.
struct Reference<'a> {
    policy: &'a Policy,
    level: Dims,
    at: f64,
}

impl<'a> Reference<'a> {
    fn new(policy: &'a Policy) -> Self {
        let mut level = [0.0; DIMENSIONS];
        for (i, l) in level.iter_mut().enumerate() {
            *l = policy.capacity(tollgate::Dimension::ALL[i]);
        }
        Reference {
            policy,
            level,
            at: f64::NEG_INFINITY,
        }
    }

    fn advance(&mut self, t: f64) {
        if t > self.at {
            for i in 0..DIMENSIONS {
                let inc = self.policy.increment[i];
                if inc > 0.0 && self.at.is_finite() {
                    let cap = self.policy.capacity(tollgate::Dimension::ALL[i]);
                    self.level[i] = (self.level[i] + (t - self.at) / inc).min(cap);
                }
            }
            self.at = t;
        }
    }

    fn consume(&mut self, t: f64, units: &Dims) {
        self.advance(t);
        for ((level, unit), inc) in self.level.iter_mut().zip(units).zip(self.policy.increment) {
            if inc > 0.0 {
                *level -= unit;
            }
        }
    }

    /// Earliest time >= t0 at which every dimension holds `units`.
    fn earliest(&mut self, t0: f64, units: &Dims) -> f64 {
        self.advance(t0);
        let mut t = t0;
        for ((level, unit), inc) in self.level.iter().zip(units).zip(self.policy.increment) {
            if inc > 0.0 && level < unit {
                t = t.max(t0 + (unit - level) * inc);
            }
        }
        t
    }
}

/// Headroom of each priority class (class 0 is the top one).
const HEADROOMS: [f64; 3] = [1.0, 0.6, 0.3];

fn run(limits: &Limits, ops: &[(f64, Op)]) -> (Policy, Vec<Granted>) {
    let policy = limits.validate().unwrap();
    let clock = ManualClock::new(1_000.0);
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    let mut granted: Vec<Granted> = Vec::new();
    let mut marks: Vec<(u64, Mark)> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    for (op_index, (advance, op)) in ops.iter().enumerate() {
        clock.advance(*advance);
        let now = store.now();
        match *op {
            Op::Acquire {
                input,
                output,
                class,
            } => {
                let cost = policy.units(Cost::split(input, output));
                let call = ReserveCall {
                    key: "k",
                    policy: &policy,
                    class,
                    headroom: HEADROOMS[class as usize],
                    cost,
                    max_wait: None,
                    max_queue: None,
                    lease: None,
                };
                match store.reserve_now(&call) {
                    Ok(r) => {
                        granted.push(Granted {
                            class,
                            asked_at: now,
                            asked_op: op_index,
                            slot: r.slot,
                            estimate: cost,
                            outcome: None,
                            outcome_op: usize::MAX,
                        });
                        marks.push((r.id, r.mark));
                        open.push(granted.len() - 1);
                    }
                    Err(tollgate_core::ReserveError::TooLarge { .. }) => {
                        let fits = tollgate::Dimension::ALL
                            .iter()
                            .all(|&d| cost[d.index()] <= policy.capacity(d));
                        assert!(!fits, "refused a request that fits the bucket");
                    }
                    Err(e) => panic!("unexpected refusal {e}"),
                }
            }
            Op::Settle { .. } | Op::Cancel { .. } if !open.is_empty() => {
                let (n, percent, cancel) = match *op {
                    Op::Settle { n, percent } => (n, percent, false),
                    Op::Cancel { n } => (n, 0, true),
                    Op::Acquire { .. } | Op::Advance { .. } => unreachable!(),
                };
                let g = open.remove(n % open.len());
                let est = granted[g].estimate;
                if !cancel && granted[g].slot > now {
                    // A real caller settles only after its slot; keep it open.
                    open.push(g);
                    continue;
                }
                let mut actual = [0.0; DIMENSIONS];
                if !cancel {
                    for i in 1..DIMENSIONS {
                        actual[i] = (est[i] * percent as f64 / 100.0).round();
                    }
                    actual[0] = est[0];
                }
                let (id, mark) = marks[g];
                store.settle_now(&SettleCall {
                    key: "k",
                    policy: &policy,
                    class: granted[g].class,
                    id,
                    slot: granted[g].slot,
                    mark,
                    actual,
                });
                granted[g].outcome = Some((now, actual));
                granted[g].outcome_op = op_index;
            }
            Op::Advance { n } if open.iter().any(|&g| granted[g].slot > now) => {
                let queued: Vec<usize> = open
                    .iter()
                    .copied()
                    .filter(|&g| granted[g].slot > now)
                    .collect();
                let g = queued[n % queued.len()];
                let (id, mark) = marks[g];
                let class = granted[g].class;
                let moved = store.advance_now(&AdvanceCall {
                    key: "k",
                    policy: &policy,
                    class,
                    headroom: HEADROOMS[class as usize],
                    id,
                    slot: granted[g].slot,
                    mark,
                    lease: None,
                });
                if let Some(moved) = moved {
                    assert!(moved.slot < granted[g].slot && moved.slot >= now);
                    granted[g].slot = moved.slot;
                }
            }
            _ => {}
        }
    }
    (policy, granted)
}

/// Every admission was valid with what was known when it was granted: a
/// reference bucket fed with the earlier reservations (their actual usage, up to
/// the estimate, at their slots if already settled, else their estimates;
/// nothing if given up before the slot; usage above the estimate as debt at the
/// time it was settled) holds the request's estimate at its slot. Usage above an
/// estimate that nobody knew of yet is the only way past the limit, and it is
/// charged as soon as it is known. Without such usage this is the plain
/// hindsight check: the actual usage never overdraws the reference bucket.
///
/// With `every_admission`, each reservation's check also covers the admissions
/// of earlier ones with later slots (a higher class that starts before queued
/// lower-class requests must leave them their tokens). That holds only where no
/// usage above an estimate turns up: such debt can overdraw an admission made
/// before it was known, whoever comes next.
fn check_safety(
    policy: &Policy,
    granted: &[Granted],
    every_admission: bool,
) -> Result<(), TestCaseError> {
    for (n, g) in granted.iter().enumerate() {
        let mut events: Vec<(f64, usize, Dims)> = Vec::new();
        for (m, e) in granted[..n].iter().enumerate() {
            let known = e.outcome.filter(|_| e.outcome_op < g.asked_op);
            match known {
                Some((t, actual)) if t < e.slot && actual == [0.0; DIMENSIONS] => {}
                Some((t, actual)) => {
                    let mut at_slot = [0.0; DIMENSIONS];
                    let mut debt = [0.0; DIMENSIONS];
                    for i in 0..DIMENSIONS {
                        at_slot[i] = actual[i].min(e.estimate[i]);
                        debt[i] = (actual[i] - e.estimate[i]).max(0.0);
                    }
                    events.push((e.slot, 2 * m, at_slot));
                    events.push((t, 2 * m + 1, debt));
                }
                None => events.push((e.slot, 2 * m, e.estimate)),
            }
        }
        events.push((g.slot, 2 * n, g.estimate));
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut reference = Reference::new(policy);
        for (t, order, units) in events {
            reference.consume(t, &units);
            if order == 2 * n || (every_admission && order % 2 == 0) {
                for i in 0..DIMENSIONS {
                    let cap = policy.capacity(tollgate::Dimension::ALL[i]);
                    if policy.increment[i] > 0.0 {
                        prop_assert!(
                            reference.level[i] >= -EPS * cap.max(1.0),
                            "reservation {n} makes dimension {i} overdrawn to {} at slot {t}",
                            reference.level[i]
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_no_needless_wait(
    policy: &Policy,
    granted: &[Granted],
    exact: bool,
) -> Result<(), TestCaseError> {
    let mut prev_slot = f64::NEG_INFINITY;
    for (n, g) in granted.iter().enumerate() {
        // FIFO holds among the reservations that were not given up before their slot.
        let gave_up = g
            .outcome
            .is_some_and(|(t, a)| t < g.slot && a == [0.0; DIMENSIONS]);
        prop_assert!(
            gave_up || g.slot >= prev_slot - EPS,
            "FIFO broken at reservation {n}"
        );
        // A reference that keeps every estimate (no refunds) plus debts settled
        // so far. A debt queues behind the requests already granted: they were
        // promised their slots, so it is consumed after the last of them.
        let mut events: Vec<(f64, Dims)> =
            granted[..n].iter().map(|e| (e.slot, e.estimate)).collect();
        for e in &granted[..n] {
            if let Some((t, actual)) = e.outcome {
                if e.outcome_op < g.asked_op {
                    let mut over = [0.0; DIMENSIONS];
                    for i in 0..DIMENSIONS {
                        over[i] = (actual[i] - e.estimate[i]).max(0.0);
                    }
                    let queue_end = granted
                        .iter()
                        .filter(|q| q.asked_op < e.outcome_op)
                        .map(|q| q.slot)
                        .fold(t, f64::max);
                    events.push((queue_end, over));
                }
            }
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut reference = Reference::new(policy);
        for (t, units) in &events {
            reference.consume(*t, units);
        }
        let earliest = reference.earliest(g.asked_at.max(prev_slot).max(reference.at), &g.estimate);
        let tol = 1e-6 * earliest.abs().max(1.0);
        prop_assert!(
            g.slot <= earliest + tol,
            "reservation {n} waits until {} but could start at {earliest}",
            g.slot
        );
        if exact {
            prop_assert!(
                g.slot >= earliest - tol,
                "reservation {n} starts at {} before the bucket allows ({earliest})",
                g.slot
            );
        }
        if !gave_up {
            prev_slot = g.slot;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn acquires_alone_match_the_reference_exactly(limits in limits(), ops in prop::collection::vec(op(1), 1..60)) {
        let acquires: Vec<_> = ops.into_iter().filter(|(_, o)| matches!(o, Op::Acquire { .. })).collect();
        let (policy, granted) = run(&limits, &acquires);
        check_safety(&policy, &granted, true)?;
        check_no_needless_wait(&policy, &granted, true)?;
    }

    #[test]
    fn settlements_and_cancellations_never_overdraw(limits in limits(), ops in prop::collection::vec(op(1), 1..80)) {
        let (policy, granted) = run(&limits, &ops);
        check_safety(&policy, &granted, false)?;
        check_no_needless_wait(&policy, &granted, false)?;
    }

    #[test]
    fn priority_classes_never_overdraw_and_keep_fifo_per_class(limits in limits(), ops in prop::collection::vec(op(3), 1..80)) {
        // Usage up to the estimate only (see `check_safety`).
        let ops: Vec<_> = ops
            .into_iter()
            .map(|(t, o)| match o {
                Op::Settle { n, percent } => (t, Op::Settle { n, percent: percent.min(100) }),
                other => (t, other),
            })
            .collect();
        let (policy, granted) = run(&limits, &ops);
        check_safety(&policy, &granted, true)?;
        for class in 0..3u8 {
            let mut prev = f64::NEG_INFINITY;
            for g in granted.iter().filter(|g| g.class == class) {
                let gave_up = g.outcome.is_some_and(|(t, a)| t < g.slot && a == [0.0; DIMENSIONS]);
                prop_assert!(gave_up || g.slot >= prev - EPS, "FIFO broken in class {class}");
                if !gave_up {
                    prev = g.slot;
                }
            }
        }
    }

    #[test]
    fn waiting_callers_that_start_earlier_never_overdraw_and_keep_fifo(limits in limits(), ops in prop::collection::vec(op_with_advance(1), 1..100)) {
        let (policy, granted) = run(&limits, &ops);
        check_hindsight(&policy, &granted)?;
        check_fifo_per_class(&granted)?;
    }

    #[test]
    fn starting_earlier_across_priority_classes_never_overdraws(limits in limits(), ops in prop::collection::vec(op_with_advance(3), 1..100)) {
        let (policy, granted) = run(&limits, &ops);
        check_hindsight(&policy, &granted)?;
        check_fifo_per_class(&granted)?;
    }
}

/// With the final slots and the actual usage (never above the estimate), no
/// admission ever finds the reference bucket short.
fn check_hindsight(policy: &Policy, granted: &[Granted]) -> Result<(), TestCaseError> {
    let mut events: Vec<(f64, usize, Dims)> = Vec::new();
    for (n, g) in granted.iter().enumerate() {
        match g.outcome {
            Some((t, a)) if t < g.slot && a == [0.0; DIMENSIONS] => {}
            Some((_, actual)) => events.push((g.slot, n, actual)),
            None => events.push((g.slot, n, g.estimate)),
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut reference = Reference::new(policy);
    for (t, n, units) in events {
        reference.consume(t, &units);
        for (i, level) in reference.level.iter().enumerate() {
            if policy.increment[i] > 0.0 {
                let cap = policy.capacity(tollgate::Dimension::ALL[i]);
                prop_assert!(
                    *level >= -EPS * cap.max(1.0),
                    "reservation {n} overdraws dimension {i} to {level} at {t}"
                );
            }
        }
    }
    Ok(())
}

/// Within each class, slots follow arrival order (among those not given up).
fn check_fifo_per_class(granted: &[Granted]) -> Result<(), TestCaseError> {
    for class in 0..3u8 {
        let mut prev = f64::NEG_INFINITY;
        for g in granted.iter().filter(|g| g.class == class) {
            let gave_up = g
                .outcome
                .is_some_and(|(t, a)| t < g.slot && a == [0.0; DIMENSIONS]);
            prop_assert!(
                gave_up || g.slot >= prev - EPS,
                "FIFO broken in class {class}"
            );
            if !gave_up {
                prev = g.slot;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Callers that all give up while queued, in any order and after any
    /// time, give the key back whole: the next caller gets exactly the slot it
    /// would have had if they had never come.
    #[test]
    fn cancelling_every_waiter_in_any_order_gives_the_key_back(
        limits in limits(),
        cost in 1u64..200,
        started in 1usize..6,
        waiting in 1usize..12,
        order in prop::collection::vec(any::<prop::sample::Index>(), 12),
        later in prop_oneof![Just(0.0), 0.0..0.5f64],
    ) {
        let policy = limits.validate().unwrap();
        let units = policy.units(Cost::split(cost, cost / 2));
        prop_assume!(tollgate::Dimension::ALL
            .iter()
            .all(|&d| units[d.index()] <= policy.capacity(d)));
        let store_with = |waiters: usize| {
            let clock = ManualClock::new(1_000.0);
            let store = MemoryStore::with_clock(Arc::new(clock.clone()));
            let call = ReserveCall {
                key: "k",
                policy: &policy,
                class: 0,
                headroom: 1.0,
                cost: units,
                max_wait: None,
                max_queue: None,
                lease: None,
            };
            let mut queued = Vec::new();
            for n in 0..started + waiters {
                let r = store.reserve_now(&call).unwrap();
                if n >= started {
                    queued.push(r);
                }
            }
            (clock, store, call, queued)
        };
        let (clock, store, call, mut queued) = store_with(waiting);
        clock.advance(later);
        let now = store.now();
        while !queued.is_empty() {
            let r = queued.remove(order[queued.len() - 1].index(queued.len()));
            if r.slot <= now {
                continue; // it has started: not a waiter any more
            }
            store.settle_now(&SettleCall {
                key: "k",
                policy: &policy,
                class: 0,
                id: r.id,
                slot: r.slot,
                mark: r.mark,
                actual: [0.0; DIMENSIONS],
            });
        }
        let next = store.reserve_now(&call).unwrap();
        // The reference: the same callers without those that gave up (the
        // ones whose slot had come by then are kept).
        let (_, _, _, all) = store_with(waiting);
        let kept = all.iter().filter(|r| r.slot <= 1_000.0 + later).count();
        let (ref_clock, reference, ref_call, _) = store_with(kept);
        ref_clock.advance(later);
        let expected = reference.reserve_now(&ref_call).unwrap();
        prop_assert!(
            (next.slot - expected.slot).abs() < 1e-6,
            "next slot {} after the cancellations, {} without those callers",
            next.slot,
            expected.slot
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// A started call that gives back more than the headroom of the callers
    /// queued behind it allows (cancelled, or settled far below its estimate)
    /// still moves them up as far as its refund would have: once each has
    /// asked to start earlier, in order, every slot is exactly the earliest
    /// a token bucket that saw the call use what it used (or what had
    /// drained of it, if more) admits in FIFO order.
    #[test]
    fn a_started_call_that_gives_back_much_moves_the_queue_as_far_as_the_refund_allows(
        tokens in 800u64..3000,
        burst in prop_oneof![Just(1.0), 0.5..2.0f64],
        first_share in 0.3..1.0f64,
        used_percent in prop_oneof![Just(None), (0u32..100).prop_map(Some)],
        shares in prop::collection::vec(0.05..1.0f64, 1..8),
        later in prop_oneof![Just(0.0), 0.0..2.0f64],
    ) {
        let policy = Limits::new().tokens(tokens).window_secs(10.0).burst(burst).validate().unwrap();
        // Sizes as shares of what the bucket holds, so that a queue forms.
        let capacity = policy.capacity(tollgate::Dimension::Tokens);
        let size = |share: f64| ((share * capacity) as u64).max(1);
        let first = size(first_share);
        let waiters: Vec<u64> = shares.iter().map(|&s| size(s)).collect();
        let clock = ManualClock::new(1_000.0);
        let store = MemoryStore::with_clock(Arc::new(clock.clone()));
        let reserve = |n: u64| {
            store.reserve_now(&ReserveCall {
                key: "k",
                policy: &policy,
                class: 0,
                headroom: 1.0,
                cost: policy.units(Cost::tokens(n)),
                max_wait: None,
                max_queue: None,
                lease: None,
            }).unwrap()
        };
        let x = reserve(first);
        prop_assume!(x.slot <= 1_000.0);
        let mut queued: Vec<_> = waiters.iter().map(|&w| reserve(w)).collect();
        clock.advance(later);
        let now = store.now();
        prop_assume!(queued[0].slot > now);
        let estimate = policy.units(Cost::tokens(first));
        let mut actual = [0.0; DIMENSIONS];
        if let Some(p) = used_percent {
            actual = policy.units(Cost::tokens(first * p as u64 / 100));
        }
        store.settle_now(&SettleCall {
            key: "k",
            policy: &policy,
            class: 0,
            id: x.id,
            slot: x.slot,
            mark: x.mark,
            actual,
        });
        for r in &mut queued {
            if let Some(moved) = store.advance_now(&AdvanceCall {
                key: "k",
                policy: &policy,
                class: 0,
                headroom: 1.0,
                id: r.id,
                slot: r.slot,
                mark: r.mark,
                lease: None,
            }) {
                r.slot = moved.slot;
            }
        }
        // The reference: the call used what it used, or what had drained of
        // its estimate by the settlement if more (a refund never returns that).
        let inc = policy.increment[1];
        let mut x_used = actual;
        x_used[1] = actual[1].max((later / inc).min(estimate[1]));
        let mut reference = Reference::new(&policy);
        reference.consume(1_000.0, &x_used);
        let mut prev = now;
        for (n, (r, &w)) in queued.iter().zip(&waiters).enumerate() {
            let units = policy.units(Cost::tokens(w));
            let earliest = reference.earliest(prev.max(reference.at), &units);
            prop_assert!(
                (r.slot - earliest).abs() <= 1e-6 * earliest.abs(),
                "waiter {n} starts at {} but the bucket admits it at {earliest}",
                r.slot
            );
            reference.consume(earliest, &units);
            prev = earliest;
        }
    }
}
