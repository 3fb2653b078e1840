//! Classes sharing one bucket by floor and weight (`Builder::class_shares`),
//! proven against a discrete-event reference.
//!
//! Each case runs the real limiter on the memory store on paused tokio time
//! (the store's clock reads tokio's, so virtual seconds pass in microseconds):
//! closed-loop callers per class acquire, run, settle (below, at or above the
//! estimate) or give up while waiting. The record of every call is then
//! replayed through the reference:
//!
//! 1. **safety**: the admitted usage replayed through a plain token bucket of
//!    the whole key's limits never overdraws it (usage above an estimate
//!    counts from its settlement, as in `properties.rs`);
//! 2. **floor**: a backlogged class gets at least `floor × L × T − C`;
//! 3. **weighted excess**: with every class backlogged, each one's part above
//!    its floor is within 10% of its weight's part of the excess;
//! 4. **work conserving**: one class alone gets at least 95% of `L`, and so
//!    do several together;
//! 5. **FIFO within a class**, and a class whose demand stays within its
//!    floor waits at most one emission interval of its own lane.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use proptest::prelude::*;
use support::TokioClock;
use tollgate::store::{Clock, MemoryStore};
use tollgate::{
    AcquireOptions, ClassShare, Cost, Error, Limits, PriorityClass, RateLimiter, Store,
};

/// What one class's callers do.
#[derive(Debug, Clone)]
struct Load {
    /// Closed-loop callers (0: the class is idle).
    callers: usize,
    /// Token estimates, drawn in this range.
    tokens: (u64, u64),
    /// Longest a call runs after its start, seconds.
    run: f64,
    /// Settle below the estimate now and then (refunds).
    refunds: bool,
    /// Settle above the estimate now and then (usage the estimate missed).
    overuse: bool,
    /// Give up (drop the waiting future) after this many seconds, for some
    /// calls.
    give_up: Option<f64>,
    /// Seconds between two calls of one caller after its settlement (0:
    /// backlogged).
    pause: f64,
}

impl Load {
    fn backlogged(callers: usize, tokens: (u64, u64)) -> Self {
        Load {
            callers,
            tokens,
            run: 0.2,
            refunds: false,
            overuse: false,
            give_up: None,
            pause: 0.0,
        }
    }

    fn idle() -> Self {
        Load::backlogged(0, (1, 1))
    }
}

#[derive(Debug, Clone)]
struct Scenario {
    limits: Limits,
    shares: Vec<ClassShare>,
    headrooms: Vec<f64>,
    loads: Vec<Load>,
    /// Virtual seconds the callers run.
    duration: f64,
    seed: u64,
}

/// One call as it happened (store-clock seconds from the start).
#[derive(Debug, Clone)]
struct Call {
    class: usize,
    /// Order of asking, over every class.
    asked: u64,
    arrived: f64,
    estimate: [f64; 2],
    /// When it started, and in which lane.
    started: Option<(f64, u8)>,
    /// When it was settled (or its future dropped), the order of that, and
    /// the actual usage.
    settled: Option<(f64, u64, [f64; 2])>,
}

struct Run {
    calls: Vec<Call>,
    borrowed: u64,
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn run(s: &Scenario) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(simulate(s))
}

async fn simulate(s: &Scenario) -> Run {
    let origin = tokio::time::Instant::now();
    let clock = Arc::new(TokioClock(origin));
    let store = Store::Memory(MemoryStore::with_clock(clock.clone()));
    let classes = s
        .headrooms
        .iter()
        .map(|&headroom| PriorityClass {
            headroom,
            max_wait: None,
        })
        .collect();
    let limiter = RateLimiter::builder("shared")
        .limits(s.limits.clone())
        .priority_classes(classes)
        .class_shares(s.shares.clone())
        .store(store)
        .build()
        .await
        .unwrap();
    let order = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let now = move || clock.now() - 1000.0;
    let mut tasks = Vec::new();
    for (class, load) in s.loads.iter().enumerate() {
        for caller in 0..load.callers {
            let (limiter, order, calls, load) =
                (limiter.clone(), order.clone(), calls.clone(), load.clone());
            let now = now.clone();
            let duration = s.duration;
            let mut seed = s.seed ^ ((class as u64 + 1) << 32) ^ ((caller as u64 + 1) * 0x9E37);
            tasks.push(tokio::spawn(async move {
                while now() < duration {
                    let r = xorshift(&mut seed);
                    let tokens = load.tokens.0 + r % (load.tokens.1 - load.tokens.0 + 1);
                    let at = {
                        let mut calls = calls.lock();
                        calls.push(Call {
                            class,
                            asked: order.fetch_add(1, Ordering::SeqCst),
                            arrived: now(),
                            estimate: [1.0, tokens as f64],
                            started: None,
                            settled: None,
                        });
                        calls.len() - 1
                    };
                    let acquire = limiter
                        .acquire_with(Cost::tokens(tokens), AcquireOptions::class(class as u8));
                    let give_up = load
                        .give_up
                        .filter(|_| xorshift(&mut seed).is_multiple_of(4));
                    let permit = match give_up {
                        Some(secs) => {
                            match tokio::time::timeout(Duration::from_secs_f64(secs), acquire).await
                            {
                                Ok(p) => p,
                                Err(_) => {
                                    let t = now();
                                    calls.lock()[at].settled =
                                        Some((t, order.fetch_add(1, Ordering::SeqCst), [0.0; 2]));
                                    continue;
                                }
                            }
                        }
                        None => acquire.await,
                    };
                    let permit = match permit {
                        Ok(p) => p,
                        // Larger than its own lane, and no lane could lend
                        // it room at that moment: refused at once, by design.
                        Err(Error::TooLargeForShare {
                            class: c,
                            needed,
                            capacity,
                            ..
                        }) if c as usize == class && needed > capacity => {
                            calls.lock()[at].settled =
                                Some((now(), order.fetch_add(1, Ordering::SeqCst), [0.0; 2]));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        Err(e) => panic!("class {class}: {e}"),
                    };
                    calls.lock()[at].started =
                        Some((permit.slot() - 1000.0, permit.lane().unwrap()));
                    let run = load.run * (xorshift(&mut seed) % 1000) as f64 / 1000.0;
                    tokio::time::sleep(Duration::from_secs_f64(run)).await;
                    let percent = match xorshift(&mut seed) % 10 {
                        0..=3 if load.refunds => 20 + xorshift(&mut seed) % 80,
                        4..=5 if load.overuse => 101 + xorshift(&mut seed) % 50,
                        _ => 100,
                    };
                    let used = tokens * percent / 100;
                    let t = now();
                    let o = order.fetch_add(1, Ordering::SeqCst);
                    limiter.settle(permit, Cost::tokens(used)).await.unwrap();
                    calls.lock()[at].settled = Some((t, o, [1.0, used as f64]));
                    if load.pause > 0.0 {
                        tokio::time::sleep(Duration::from_secs_f64(load.pause)).await;
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let borrowed = limiter.stats().borrowed;
    let calls = calls.lock().clone();
    Run { calls, borrowed }
}

const EPS: f64 = 1e-6;

/// Property 1: every admission fits the key's whole bucket (requests and
/// tokens) with what was known when it was asked. A reference token bucket
/// is fed, at their starts, the part within its estimate of what each other
/// call that started before it used (its estimate while it runs), and usage
/// above an estimate as debt at the time it was settled, where that was
/// before this call asked; then this call's part at its start must not
/// overdraw it. Refunds only give back what has not drained, so the real
/// usage must fit whatever was given back. Usage above an estimate that was
/// settled later nobody knew of yet: it is the only way past the limit (as
/// with a single bucket, see `properties.rs`). The reference starts full a
/// few bucket periods before each start (a lower bound of the bucket's
/// level there is all the check needs).
fn check_safety(s: &Scenario, calls: &[Call]) -> Result<(), TestCaseError> {
    let policy = s.limits.validate().unwrap();
    let dims = [tollgate::Dimension::Requests, tollgate::Dimension::Tokens];
    let horizon = 3.0 * policy.tau;
    // (start, part within the estimate, call) by start.
    let mut starts: Vec<(f64, [f64; 2], usize)> = calls
        .iter()
        .enumerate()
        .filter_map(|(n, c)| {
            let (start, _) = c.started?;
            let used = c.settled.map_or(c.estimate, |(_, _, actual)| actual);
            Some((start, [0, 1].map(|i| used[i].min(c.estimate[i])), n))
        })
        .collect();
    starts.sort_by(|a, b| a.0.total_cmp(&b.0));
    // (settled, its order, usage above the estimate) by time.
    let mut debts: Vec<(f64, u64, [f64; 2])> = calls
        .iter()
        .filter(|c| c.started.is_some())
        .filter_map(|c| {
            let (t, order, actual) = c.settled?;
            let over = [0, 1].map(|i| (actual[i] - c.estimate[i]).max(0.0));
            over.iter().any(|&o| o > 0.0).then_some((t, order, over))
        })
        .collect();
    debts.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (k, &(start, part, n)) in starts.iter().enumerate() {
        let from = start - horizon;
        let mut events: Vec<(f64, [f64; 2])> = starts[..k]
            .iter()
            .rev()
            .take_while(|e| e.0 >= from)
            .map(|e| (e.0, e.1))
            .collect();
        events.extend(
            debts
                .iter()
                .filter(|d| d.0 >= from && d.0 <= start && d.1 < calls[n].asked)
                .map(|d| (d.0, d.2)),
        );
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        events.push((start, part));
        let mut level = dims.map(|d| policy.capacity(d));
        let mut last = from;
        for (t, used) in events {
            for (i, d) in dims.iter().enumerate() {
                let cap = policy.capacity(*d);
                if !cap.is_finite() {
                    continue;
                }
                level[i] = (level[i] + (t - last) / policy.increment[d.index()]).min(cap);
                level[i] -= used[i];
            }
            last = t;
        }
        for (i, d) in dims.iter().enumerate() {
            let cap = policy.capacity(*d);
            prop_assert!(
                !cap.is_finite() || level[i] >= -EPS * cap.max(1.0),
                "call {n} (class {}) overdraws {d} to {} at {start}",
                calls[n].class,
                level[i]
            );
        }
    }
    Ok(())
}

/// Property 5, first half: within a class, calls start in the order they
/// asked (among those not given up).
fn check_fifo(calls: &[Call]) -> Result<(), TestCaseError> {
    let classes = calls.iter().map(|c| c.class).max().map_or(0, |m| m + 1);
    for class in 0..classes {
        let mut last = f64::NEG_INFINITY;
        let mut mine: Vec<&Call> = calls
            .iter()
            .filter(|c| c.class == class && c.started.is_some())
            .collect();
        mine.sort_by_key(|c| c.asked);
        for c in mine {
            let (start, _) = c.started.unwrap();
            prop_assert!(
                start >= last - EPS,
                "class {class}: call asked {} started at {start}, before one asked earlier ({last})",
                c.asked
            );
            last = start;
        }
    }
    Ok(())
}

/// Tokens each class used in the calls it started within `[from, to)`.
fn served(calls: &[Call], classes: usize, from: f64, to: f64) -> Vec<f64> {
    let mut out = vec![0.0; classes];
    for c in calls {
        if let Some((t, _)) = c.started {
            if t >= from && t < to {
                out[c.class] += c.settled.map_or(c.estimate, |(_, _, a)| a)[1];
            }
        }
    }
    out
}

fn shares(n: usize) -> impl Strategy<Value = Vec<ClassShare>> {
    (
        prop::collection::vec(0.0..1.0f64, n),
        prop::collection::vec(1u32..5, n),
        0.3..0.9f64,
    )
        .prop_map(|(raw, weights, floors)| {
            let sum: f64 = raw.iter().sum::<f64>().max(1e-9);
            raw.iter()
                .zip(weights)
                .map(|(r, w)| ClassShare::new(r / sum * floors, w as f64))
                .collect()
        })
}

fn headrooms(n: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(prop_oneof![Just(1.0), 0.3..1.0f64], n).prop_map(|mut h| {
        h[0] = 1.0;
        h
    })
}

/// Random mixes: limits, shares, priorities, loads with cancellations,
/// refunds and overuse.
fn mixed() -> impl Strategy<Value = Scenario> {
    (2usize..=4).prop_flat_map(|n| {
        let load = (
            0usize..4,
            20u64..400,
            0.0..2.0f64,
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(None), (0.1..3.0f64).prop_map(Some)],
            prop_oneof![Just(0.0), 0.0..2.0f64],
        )
            .prop_map(
                |(callers, top, run, refunds, overuse, give_up, pause)| Load {
                    callers,
                    tokens: (1, top),
                    run,
                    refunds,
                    overuse,
                    give_up,
                    pause,
                },
            );
        (
            prop_oneof![Just(None), (30u64..300).prop_map(Some)],
            3_000u64..30_000,
            prop_oneof![Just(1.0), 0.2..1.5f64],
            shares(n),
            headrooms(n),
            prop::collection::vec(load, n),
            any::<u64>(),
        )
            .prop_map(|(rpm, tpm, burst, shares, headrooms, loads, seed)| {
                let mut limits = Limits::new().tpm(tpm).burst(burst);
                limits.requests = rpm;
                Scenario {
                    limits,
                    shares,
                    headrooms,
                    loads,
                    duration: 40.0,
                    seed: seed | 1,
                }
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Properties 1 and 5 (FIFO) for random mixes of classes, costs,
    /// settlements (below, at and above the estimate) and cancellations.
    #[test]
    fn shared_buckets_are_safe_and_fifo_per_class(s in mixed()) {
        let r = run(&s);
        check_safety(&s, &r.calls)?;
        check_fifo(&r.calls)?;
    }

    /// Properties 2, 3 and 4: every class backlogged, each gets its floor
    /// and its weight's part of the rest, and the bucket is used in full.
    #[test]
    fn backlogged_classes_get_their_floor_and_weighted_excess(
        (shares, headrooms, seed) in (2usize..=4).prop_flat_map(|n| (shares(n), headrooms(n), any::<u64>()))
    ) {
        let n = shares.len();
        let tpm = 6_000.0;
        let s = Scenario {
            limits: Limits::new().tpm(tpm as u64),
            loads: vec![Load::backlogged(4, (20, 120)); n],
            shares: shares.clone(),
            headrooms,
            duration: 300.0,
            seed: seed | 1,
        };
        let r = run(&s);
        check_fifo(&r.calls)?;
        // After the first window's burst has drained.
        let (from, to) = (90.0, 290.0);
        let got = served(&r.calls, n, from, to);
        let ideal = tpm / 60.0 * (to - from);
        let total: f64 = got.iter().sum();
        prop_assert!(total >= 0.95 * ideal, "used {total} of {ideal}: {got:?}");
        let floors: f64 = shares.iter().map(|c| c.floor).sum();
        let weights: f64 = shares.iter().map(|c| c.weight).sum();
        let excess = total - floors * ideal;
        for (k, c) in shares.iter().enumerate() {
            prop_assert!(got[k] >= c.floor * ideal - tpm, "class {k} got {} below its floor {}", got[k], c.floor * ideal);
            let want = c.weight / weights * excess;
            let extra = got[k] - c.floor * ideal;
            prop_assert!(
                (extra - want).abs() <= 0.1 * want + 0.01 * ideal,
                "class {k}: {extra} above its floor, {want} by weight ({got:?})"
            );
        }
    }

    /// Property 4 and 2 with idle classes: the busy ones use what the idle
    /// ones leave (one alone gets at least 95% of the bucket), each keeps
    /// its floor, and nothing waits for ever.
    #[test]
    fn idle_classes_lend_their_share(
        (shares, headrooms, busy, seed) in (2usize..=4).prop_flat_map(|n| (shares(n), headrooms(n), prop::collection::vec(any::<bool>(), n), any::<u64>()))
    ) {
        lend_idle_shares(shares, headrooms, busy, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Property 3 with idle classes: what the idle ones leave goes to the
    /// busy ones by weight, whatever their priorities, so that each busy
    /// class's part above its floor is its weight's part of the excess
    /// above the busy classes' floors.
    #[test]
    fn idle_shares_go_to_the_busy_classes_by_weight(
        (shares, headrooms, idle, seed) in (3usize..=4).prop_flat_map(|n| (shares(n), headrooms(n), 0..n, any::<u64>()))
    ) {
        let n = shares.len();
        lend_by_weight(shares, headrooms, (0..n).map(|k| k != idle).collect(), seed)?;
    }
}

/// 240 s of the busy classes backlogged (4 callers, 20 to 120 tokens) and
/// the others idle, on `tpm` tokens a minute.
fn busy_and_idle(
    tpm: f64,
    shares: &[ClassShare],
    headrooms: Vec<f64>,
    busy: &[bool],
    seed: u64,
) -> Scenario {
    let load = |&b: &bool| {
        if b {
            Load::backlogged(4, (20, 120))
        } else {
            Load::idle()
        }
    };
    Scenario {
        limits: Limits::new().tpm(tpm as u64),
        loads: busy.iter().map(load).collect(),
        shares: shares.to_vec(),
        headrooms,
        duration: 240.0,
        seed: seed | 1,
    }
}

/// The body of `idle_shares_go_to_the_busy_classes_by_weight`: the busy
/// classes backlogged, each busy class's tokens above its floor within 10%
/// of its weight's part of what the busy classes got above their floors
/// (and 1% of the bucket, for the calls at the edges of the window).
fn lend_by_weight(
    shares: Vec<ClassShare>,
    headrooms: Vec<f64>,
    busy: Vec<bool>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let n = shares.len();
    let tpm = 6_000.0;
    let s = busy_and_idle(tpm, &shares, headrooms, &busy, seed);
    let r = run(&s);
    check_fifo(&r.calls)?;
    let (from, to) = (90.0, 230.0);
    let got = served(&r.calls, n, from, to);
    let ideal = tpm / 60.0 * (to - from);
    let total: f64 = got.iter().sum();
    prop_assert!(total >= 0.95 * ideal, "used {total} of {ideal}: {got:?}");
    let on = |k: &usize| busy[*k];
    let floors: f64 = (0..n).filter(on).map(|k| shares[k].floor).sum();
    let weights: f64 = (0..n).filter(on).map(|k| shares[k].weight).sum();
    let excess = total - floors * ideal;
    for k in (0..n).filter(on) {
        let c = &shares[k];
        let want = c.weight / weights * excess;
        let extra = got[k] - c.floor * ideal;
        prop_assert!(
            (extra - want).abs() <= 0.1 * want + 0.01 * ideal,
            "class {k}: {extra} above its floor, {want} by weight ({got:?}, busy {busy:?})"
        );
    }
    Ok(())
}

/// Property 3 as the gateway's example tiers meet it: the top tier idle,
/// a middle one (floor 0.3, weight 2) and a low one (floor 0.05, weight 1)
/// busy. Borrowing by priority alone gave the middle tier most of the idle
/// lane.
#[test]
fn an_idle_top_tiers_share_goes_to_the_others_by_weight() {
    lend_by_weight(
        vec![
            ClassShare::new(0.3, 3.0),
            ClassShare::new(0.3, 2.0),
            ClassShare::new(0.05, 1.0),
        ],
        vec![1.0, 0.8, 0.4],
        vec![false, true, true],
        11,
    )
    .unwrap();
}

/// The body of `idle_classes_lend_their_share`, for its random cases and
/// the fixed ones below.
fn lend_idle_shares(
    shares: Vec<ClassShare>,
    headrooms: Vec<f64>,
    busy: Vec<bool>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let n = shares.len();
    let busy: Vec<bool> = if busy.iter().any(|&b| b) {
        busy
    } else {
        (0..n).map(|k| k == 0).collect()
    };
    let tpm = 6_000.0;
    let s = busy_and_idle(tpm, &shares, headrooms, &busy, seed);
    let r = run(&s);
    check_safety(&s, &r.calls)?;
    check_fifo(&r.calls)?;
    let (from, to) = (90.0, 230.0);
    let got = served(&r.calls, n, from, to);
    let ideal = tpm / 60.0 * (to - from);
    let total: f64 = got.iter().sum();
    prop_assert!(
        total >= 0.95 * ideal,
        "used {total} of {ideal}: {got:?}, busy {busy:?}"
    );
    for (k, c) in shares.iter().enumerate() {
        if busy[k] {
            prop_assert!(
                got[k] >= c.floor * ideal - tpm,
                "class {k} got {} below its floor",
                got[k]
            );
        }
    }
    if busy.iter().filter(|&&b| b).count() < n {
        prop_assert!(r.borrowed > 0, "idle lanes were never borrowed");
    }
    Ok(())
}

/// The case of `idle_classes_lend_their_share` once found using 94.8% of
/// the bucket (below the 95% bound), with its shares as they were reported
/// (four decimals): two busy classes, one of a low priority, two idle lanes.
#[test]
fn idle_classes_lend_their_share_in_the_case_reported() {
    let class = |floor, weight| ClassShare::new(floor, weight);
    lend_idle_shares(
        vec![
            class(0.1731, 2.0),
            class(0.4156, 4.0),
            class(0.2494, 2.0),
            class(0.0328, 2.0),
        ],
        vec![1.0, 1.0, 1.0, 0.3],
        vec![true, false, false, true],
        6202498066443290158,
    )
    .unwrap();
}

/// The case of `idle_classes_lend_their_share` once found overdrawing the
/// bucket with no call settled above its estimate: a lone class (floor 0)
/// whose idle neighbour's lane is most of the bucket. Its calls leave their
/// own lane's queue to borrow; the first of that queue gave back, when it
/// left, room its successors were also handed on, so its lane admitted 5
/// tokens past its bucket at 16.65 s and the bucket was overdrawn by 11 at
/// 24.45 s.
#[test]
fn a_lane_whose_first_leaves_to_borrow_admits_no_more_than_its_bucket() {
    lend_idle_shares(
        vec![
            ClassShare::new(0.0, 1.0),
            ClassShare::new(0.7620404096580193, 3.0),
        ],
        vec![1.0, 1.0],
        vec![true, false],
        0,
    )
    .unwrap();
}

/// Property 5, second half: a class whose demand stays within its floor
/// waits at most one emission interval of its lane for its cost, however
/// hard the other classes push (and borrow its lane while it is quiet).
#[test]
fn a_class_within_its_floor_waits_at_most_one_emission_interval() {
    let tpm = 6_000.0;
    let shares = vec![
        ClassShare::new(0.3, 1.0),
        ClassShare::new(0.2, 1.0),
        ClassShare::new(0.1, 1.0),
    ];
    // Class 1's lane: 0.2 + 0.4 / 3 of the bucket. One caller, 100 tokens,
    // a pause that keeps it at 80% of its lane.
    let share = 0.2 + 0.4 / 3.0;
    let interval = 100.0 * 60.0 / (tpm * share);
    let quiet = Load {
        callers: 1,
        tokens: (100, 100),
        run: 0.0,
        refunds: false,
        overuse: false,
        give_up: None,
        pause: interval / 0.8,
    };
    let s = Scenario {
        limits: Limits::new().tpm(tpm as u64),
        loads: vec![
            Load::backlogged(6, (50, 200)),
            quiet,
            Load::backlogged(6, (50, 200)),
        ],
        shares,
        headrooms: vec![1.0, 1.0, 1.0],
        duration: 300.0,
        seed: 7,
    };
    let r = run(&s);
    let waits: Vec<f64> = r
        .calls
        .iter()
        .filter(|c| c.class == 1)
        .filter_map(|c| c.started.map(|(t, _)| t - c.arrived))
        .collect();
    assert!(waits.len() > 50, "{}", waits.len());
    let worst = waits.iter().cloned().fold(0.0, f64::max);
    assert!(
        worst <= interval + 1e-6,
        "class 1 waited {worst} s, more than one emission interval ({interval} s)"
    );
    assert!(
        r.borrowed > 0,
        "the others borrowed its lane while it was quiet"
    );
}

fn two_classes() -> Vec<PriorityClass> {
    let class = PriorityClass {
        headroom: 1.0,
        max_wait: None,
    };
    vec![class.clone(), class]
}

async fn limiter_of(shares: Vec<ClassShare>, limits: Limits) -> Result<RateLimiter, Error> {
    let classes = vec![two_classes()[0].clone(); shares.len()];
    RateLimiter::builder("k")
        .limits(limits)
        .priority_classes(classes)
        .class_shares(shares)
        .store(Store::memory())
        .build()
        .await
}

#[tokio::test]
async fn bad_shares_are_refused_naming_the_setting() {
    let limits = Limits::new().tpm(1_000);
    let err = |shares| {
        let limits = limits.clone();
        async move { limiter_of(shares, limits).await.unwrap_err().to_string() }
    };
    let e = err(vec![ClassShare::new(0.6, 1.0), ClassShare::new(0.6, 1.0)]).await;
    assert!(
        e.contains("class_shares") && e.contains("floors") && e.contains("1.2"),
        "{e}"
    );
    let e = err(vec![ClassShare::new(0.1, 1.0), ClassShare::new(0.1, -2.0)]).await;
    assert!(
        e.contains("class 1: weight must be a number > 0, got -2"),
        "{e}"
    );
    let e = err(vec![ClassShare::new(0.1, 1.0).lendable(2.0)]).await;
    assert!(e.contains("lendable"), "{e}");
    let two = RateLimiter::builder("k")
        .limits(limits)
        .class_shares(vec![ClassShare::new(0.1, 1.0), ClassShare::new(0.1, 1.0)])
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        two.contains("class_shares") && two.contains("one share per priority class"),
        "{two}"
    );
}

#[tokio::test]
async fn a_call_too_large_for_its_share_borrows_or_is_refused_naming_the_setting() {
    // Class 1 holds a tenth of 10,000 tokens.
    let limiter = RateLimiter::builder("k")
        .limits(Limits::new().tpm(10_000))
        .priority_classes(two_classes())
        .class_shares(vec![ClassShare::new(0.9, 1.0), ClassShare::new(0.1, 1.0)])
        .store(Store::memory())
        .build()
        .await
        .unwrap();
    let batch = AcquireOptions::class(1);
    // Class 0 is idle: its lane lends 3,000 tokens at once.
    let big = limiter
        .acquire_with(Cost::tokens(3_000), batch.clone())
        .await
        .unwrap();
    assert_eq!(big.lane(), Some(0));
    assert!(big.waited().is_zero());
    // Class 0 fills its own lane: nobody can lend now, and class 1's lane
    // can never hold it.
    let top = limiter.acquire(Cost::tokens(6_000)).await.unwrap();
    assert_eq!(top.lane(), Some(0));
    let err = limiter
        .acquire_with(Cost::tokens(3_000), batch.clone())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::TooLargeForShare { class: 1, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("raise class 1's floor or weight") && msg.contains("floor=0.1"),
        "{msg}"
    );
    // Beyond the whole bucket: the usual error.
    let err = limiter.acquire(Cost::tokens(10_001)).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    limiter.settle(big, Cost::tokens(3_000)).await.unwrap();
    limiter.settle(top, Cost::tokens(6_000)).await.unwrap();
}

#[tokio::test]
async fn status_reports_each_class_use_floor_share_and_queue() {
    let limiter = RateLimiter::builder("k")
        .limits(Limits::new().tpm(6_000))
        .priority_classes(two_classes())
        .class_shares(vec![
            ClassShare::new(0.5, 1.0).lendable(0.0),
            ClassShare::new(0.1, 3.0).lendable(0.0),
        ])
        .store(Store::memory())
        .build()
        .await
        .unwrap();
    // Class 1's lane (0.4 of the bucket: 2,400 tokens): one call fills it,
    // the next waits in its queue.
    let first = limiter
        .acquire_with(Cost::tokens(2_400), AcquireOptions::class(1))
        .await
        .unwrap();
    let waiting = limiter
        .reserve(Cost::tokens(100), &AcquireOptions::class(1))
        .await
        .unwrap();
    assert!(!waiting.waited().is_zero());
    let status = limiter.status().await.unwrap();
    assert_eq!(status.classes.len(), 2);
    let c1 = &status.classes[1];
    assert_eq!((c1.class, c1.floor, c1.weight), (1, 0.1, 3.0));
    assert!((c1.share - 0.4).abs() < 1e-9, "{}", c1.share);
    assert_eq!(c1.queue_depth, 1);
    assert!(
        (c1.dimensions[0].in_use - 2_500.0).abs() < 1.0,
        "{:?}",
        c1.dimensions
    );
    assert_eq!(status.classes[0].queue_depth, 0);
    assert_eq!(status.queue_depth, 1);
    assert!((status.dimensions[0].in_use - 2_500.0).abs() < 1.0);
    limiter.cancel(waiting).await.unwrap();
    limiter.settle(first, Cost::tokens(2_400)).await.unwrap();
}

#[tokio::test]
async fn with_shares_any_class_may_be_the_top_one() {
    // The gateway gives each tier a class in the order of their names, so
    // the first may have a low priority's headroom: with shares it fills
    // its own lane whole, and headroom only scales what it borrows.
    let class = |headroom| PriorityClass {
        headroom,
        max_wait: None,
    };
    let build = |shares: Option<Vec<ClassShare>>| {
        let mut b = RateLimiter::builder("k")
            .limits(Limits::new().rpm(60).burst(1.0))
            .priority_classes(vec![class(0.4), class(1.0)])
            .store(Store::memory());
        if let Some(s) = shares {
            b = b.class_shares(s);
        }
        b.build()
    };
    let e = build(None).await.unwrap_err().to_string();
    assert!(e.contains("exactly 1.0 for class 0"), "{e}");
    let limiter = build(Some(vec![
        ClassShare::new(0.5, 1.0),
        ClassShare::new(0.5, 1.0),
    ]))
    .await
    .expect("built");
    // Class 0 fills its 30 requests of the lane at once, whatever its headroom.
    for _ in 0..30 {
        let p = limiter
            .acquire_with(Cost::request_only(), AcquireOptions::class(0))
            .await
            .expect("within its lane");
        assert_eq!(p.lane(), Some(0));
        assert_eq!(p.waited(), Duration::ZERO);
        limiter.settle(p, Cost::request_only()).await.unwrap();
    }
}
