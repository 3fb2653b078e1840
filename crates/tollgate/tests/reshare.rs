//! Changing the classes' shares of a bucket on a live limiter
//! (`RateLimiter::set_class_shares`): the calls reserved afterwards use the
//! new lanes, the lanes together never start more than the bucket holds
//! (each lane is moved once in the store, however many instances make the
//! change), and a change that could not be built is refused with nothing
//! changed.

mod support;

use proptest::prelude::*;
use support::{RedisCluster, RedisServer};
use tollgate::{
    AcquireOptions, ClassShare, Cost, Error, Limits, PriorityClass, RateLimiter, Store,
};

/// A bucket of 1,000 tokens (60,000 TPM, burst 1/60) shared by two classes
/// that lend nothing, so that each admits at once only what its own lane
/// holds.
async fn limiter(store: &Store, shares: [(f64, f64); 2]) -> RateLimiter {
    let class = PriorityClass {
        headroom: 1.0,
        max_wait: None,
    };
    RateLimiter::builder("reshare")
        .limits(Limits::new().tpm(60_000).burst(1.0 / 60.0))
        .priority_classes(vec![class.clone(), class])
        .class_shares(no_lending(shares))
        .store(store.clone())
        .build_unchecked()
        .unwrap()
}

/// Shares of these floors and weights that lend nothing.
fn no_lending(shares: [(f64, f64); 2]) -> Vec<ClassShare> {
    shares
        .iter()
        .map(|&(floor, weight)| ClassShare::new(floor, weight).lendable(0.0))
        .collect()
}

/// Calls of 10 tokens class `class` gets at once, without waiting.
async fn admitted_at_once(limiter: &RateLimiter, class: u8) -> u64 {
    let options = AcquireOptions::class(class).max_wait(std::time::Duration::ZERO);
    let mut n = 0;
    while n < 1_000 {
        match limiter.reserve(Cost::tokens(10), &options).await {
            Ok(p) if p.waited().is_zero() => n += 1,
            Ok(p) => {
                limiter.cancel(p).await.unwrap();
                break;
            }
            Err(_) => break,
        }
    }
    n
}

fn tokens_in_use(status: &tollgate::Status, class: usize) -> (f64, f64) {
    let d = &status.classes[class].dimensions[0];
    (d.in_use, d.capacity)
}

#[tokio::test]
async fn a_change_of_shares_moves_what_each_lane_admits_at_once() {
    // floor 0.5 and weights 1:1: lanes of 75% and 25% of the bucket.
    let unchanged = limiter(&Store::memory(), [(0.5, 1.0), (0.0, 1.0)]).await;
    assert_eq!(admitted_at_once(&unchanged, 1).await, 25);

    // No floors, weights 1:3: class 1's lane is 75% of the bucket.
    let changed = limiter(&Store::memory(), [(0.5, 1.0), (0.0, 1.0)]).await;
    changed
        .set_class_shares(no_lending([(0.0, 1.0), (0.0, 3.0)]))
        .unwrap();
    assert_eq!(changed.lane_shares(), vec![0.25, 0.75]);
    assert_eq!(admitted_at_once(&changed, 1).await, 75);
    assert_eq!(admitted_at_once(&changed, 0).await, 25);
    let status = changed.status().await.unwrap();
    assert_eq!(
        (status.classes[1].floor, status.classes[1].weight),
        (0.0, 3.0)
    );
}

/// A lane that grows keeps the tokens it holds and the room it had, and
/// gets the room the lane that shrank gave up: together the lanes start at
/// once what the bucket has free, as before the change.
#[tokio::test]
async fn a_lane_that_grows_keeps_what_it_holds_and_gets_the_room_given_up() {
    let store = Store::memory();
    let l = limiter(&store, [(0.5, 1.0), (0.0, 1.0)]).await;
    // Class 1 fills 20 of its 25 calls' room (80% of its lane).
    let options = AcquireOptions::class(1);
    for _ in 0..20 {
        let p = l.reserve(Cost::tokens(10), &options).await.unwrap();
        std::mem::forget(p);
    }
    let before = l.status().await.unwrap();
    let (used, capacity) = tokens_in_use(&before, 1);
    assert!((used / capacity - 0.8).abs() < 0.01, "{used} of {capacity}");
    l.set_class_shares(no_lending([(0.0, 1.0), (0.0, 3.0)]))
        .unwrap();
    let after = l.status().await.unwrap();
    let (used, capacity) = tokens_in_use(&after, 1);
    assert!((capacity - 750.0).abs() < 1e-6, "{capacity}");
    // Its 200 tokens, not 80% of its new lane.
    assert!((used - 200.0).abs() < 2.0, "{used} of {capacity}");
    // Its 50 tokens of room and the 500 that class 0's lane gave up (of
    // its 750, 250 are left it): the 800 tokens the bucket has free.
    let more = admitted_at_once(&l, 1).await;
    assert!((54..=55).contains(&more), "{more}");
    let zero = admitted_at_once(&l, 0).await;
    assert!((24..=25).contains(&zero), "{zero}");
}

#[tokio::test]
async fn a_change_that_cannot_be_built_is_refused_and_changes_nothing() {
    let l = limiter(&Store::memory(), [(0.5, 1.0), (0.0, 1.0)]).await;
    let bad: [(Vec<ClassShare>, &str); 3] = [
        (vec![ClassShare::new(0.5, 1.0)], "class_shares"),
        (
            vec![ClassShare::new(0.7, 1.0), ClassShare::new(0.5, 1.0)],
            "floor",
        ),
        (
            vec![ClassShare::new(0.1, 0.0), ClassShare::new(0.1, 1.0)],
            "weight",
        ),
    ];
    for (shares, names) in bad {
        let e = l.set_class_shares(shares).unwrap_err();
        assert!(
            matches!(e, Error::Config { .. } | Error::Shares { .. }),
            "{e}"
        );
        assert!(e.to_string().contains(names), "{e}");
        assert_eq!(l.lane_shares(), vec![0.75, 0.25]);
    }
    // A limiter whose classes do not share the bucket has no shares to change.
    let plain = RateLimiter::memory("plain", Limits::new().rpm(10)).unwrap();
    let e = plain
        .set_class_shares(vec![ClassShare::new(0.0, 1.0)])
        .unwrap_err();
    assert!(e.to_string().contains("class_shares"), "{e}");
    assert!(plain.lane_shares().is_empty());
}

/// A bucket `key` of 1,000 tokens refilling in `window` seconds, lanes 0.9
/// and 0.1 (floors 0.9 and 0.1) that lend nothing, on `store` or `url`.
async fn tight(key: &str, store: Option<&Store>, url: Option<&str>, window: f64) -> RateLimiter {
    let class = PriorityClass {
        headroom: 1.0,
        max_wait: None,
    };
    let builder = RateLimiter::builder(key)
        .limits(Limits::new().tokens(1_000).window_secs(window))
        .priority_classes(vec![class.clone(), class])
        .class_shares(no_lending([(0.9, 1.0), (0.1, 1.0)]));
    match (store, url) {
        (Some(store), _) => builder.store(store.clone()).build_unchecked().unwrap(),
        (None, Some(url)) => builder.url(url).build().await.unwrap(),
        (None, None) => unreachable!("a store or a URL"),
    }
}

/// Every call of class `class` of 10 tokens that `a` and `b` (taking
/// turns) get at once: their slots.
async fn at_once_from_both(a: &RateLimiter, b: &RateLimiter, class: u8) -> Vec<f64> {
    let options = AcquireOptions::class(class).max_wait(std::time::Duration::ZERO);
    let mut slots = Vec::new();
    let mut refused = [false; 2];
    for turn in 0.. {
        if refused == [true, true] || slots.len() >= 1_000 {
            break;
        }
        let who = turn % 2;
        if refused[who] {
            continue;
        }
        let limiter = if who == 0 { a } else { b };
        match limiter.reserve(Cost::tokens(10), &options).await {
            Ok(p) => slots.push(p.slot()),
            Err(_) => refused[who] = true,
        }
    }
    slots
}

/// The most tokens started (calls of 10 at `slots`) beyond what a bucket of
/// 1,000 tokens refilling at `rate` a second allows, over any interval
/// (0 or less: never more than the bucket).
fn most_beyond_the_bucket(slots: &[f64], rate: f64) -> f64 {
    let mut slots = slots.to_vec();
    slots.sort_by(f64::total_cmp);
    let mut worst = f64::NEG_INFINITY;
    for i in 0..slots.len() {
        for j in i..slots.len() {
            let started = 10.0 * (j - i + 1) as f64;
            worst = worst.max(started - 1_000.0 - rate * (slots[j] - slots[i]));
        }
    }
    worst
}

/// Class 0 fills its lane (90% of the bucket) and queues `queued` calls
/// more; both instances then change the lanes to 10% and 90%, and both classes
/// take what they can get at once, now and at each of `later` (from
/// `pause`, which lets store time pass). Returns every slot started.
async fn fill_then_turn_the_shares_around<F, Fut>(
    a: &RateLimiter,
    b: &RateLimiter,
    queued: usize,
    mut pause: F,
) -> (Vec<f64>, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut slots = at_once_from_both(a, b, 0).await;
    assert!((88..=91).contains(&slots.len()), "{}", slots.len());
    for _ in 0..queued {
        let p = a
            .reserve(Cost::tokens(10), &AcquireOptions::class(0))
            .await
            .unwrap();
        assert!(!p.waited().is_zero());
        slots.push(p.slot());
    }
    for l in [a, b] {
        l.set_class_shares(no_lending([(0.1, 1.0), (0.9, 1.0)]))
            .unwrap();
        assert_eq!(l.lane_shares(), vec![0.1, 0.9]);
    }
    let first = at_once_from_both(a, b, 1).await;
    let right_after = first.len();
    slots.extend(first);
    for _ in 0..12 {
        pause().await;
        slots.extend(at_once_from_both(a, b, 1).await);
        slots.extend(at_once_from_both(a, b, 0).await);
    }
    (slots, right_after)
}

/// Nothing of `slots` passed a bucket refilling at `rate`, and class 1 got
/// `at_once` calls right after the change (`queued`: the round).
fn within_the_bucket(
    slots: &[f64],
    rate: f64,
    queued: usize,
    right_after: usize,
    at_once: &std::ops::RangeInclusive<usize>,
) {
    let beyond = most_beyond_the_bucket(slots, rate);
    assert!(
        beyond <= 1e-6,
        "queued {queued}: {beyond} tokens beyond the bucket"
    );
    assert!(
        at_once.contains(&right_after),
        "queued {queued}: {right_after} calls of class 1 right after the change"
    );
}

/// A change of shares never lets the lanes together start more than the
/// bucket holds: the lane that grows keeps, at once, the room it had (its
/// 100 tokens: once, though both instances make the change); with a queue
/// in the lane that shrinks, which still starts at its old pace, the lane
/// that grows pays for it first.
#[tokio::test]
async fn a_change_of_shares_never_starts_more_than_the_bucket_holds() {
    use std::sync::Arc;
    use tollgate::store::{ManualClock, MemoryStore};
    for (queued, at_once) in [(0, 9..=10), (20, 0..=0)] {
        let clock = ManualClock::new(1_000.0);
        let store = Store::Memory(MemoryStore::with_clock(Arc::new(clock.clone())));
        let (a, b) = (
            tight("tight", Some(&store), None, 1.0).await,
            tight("tight", Some(&store), None, 1.0).await,
        );
        let (slots, right_after) = fill_then_turn_the_shares_around(&a, &b, queued, || {
            clock.advance(0.05);
            std::future::ready(())
        })
        .await;
        within_the_bucket(&slots, 1_000.0, queued, right_after, &at_once);
        // Class 1 gets its new lane as the bucket refills: 0.6 s at 900
        // tokens a second.
        let later = slots.len() - right_after - 90 - queued;
        assert!(later > 40, "queued {queued}: {later} calls later");
    }
}

/// The same on Redis, the two instances each with a connection of its own;
/// a bucket refilling in 10 s, so that the calls' own time counts little.
async fn never_more_than_the_bucket_on(url: &str) {
    for (queued, at_once) in [(0, 9..=10), (20, 0..=0)] {
        // Each round on a bucket of its own.
        let key = format!("tight/{queued}");
        let (a, b) = (
            tight(&key, None, Some(url), 10.0).await,
            tight(&key, None, Some(url), 10.0).await,
        );
        let (slots, right_after) = fill_then_turn_the_shares_around(&a, &b, queued, || {
            tokio::time::sleep(std::time::Duration::from_millis(50))
        })
        .await;
        within_the_bucket(&slots, 100.0, queued, right_after, &at_once);
    }
}

#[tokio::test]
async fn a_change_of_shares_never_starts_more_than_the_bucket_holds_on_redis() {
    let server = RedisServer::start();
    never_more_than_the_bucket_on(&server.url()).await;
}

#[tokio::test]
async fn a_change_of_shares_never_starts_more_than_the_bucket_holds_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    never_more_than_the_bucket_on(&cluster.url()).await;
}

/// Moving a lane to a new share (`tollgate_core::reshare`) agrees to the
/// bit on Redis and on the memory store, for lanes that grow, shrink or
/// keep their share, empty, partly full or with a queue; and a second call
/// of the same change moves nothing and answers the same.
#[tokio::test]
async fn redis_and_memory_agree_on_moving_a_lane_to_a_new_share() {
    use std::sync::Arc;
    use tollgate::store::{
        Backend, ManualClock, MemoryStore, RedisOptions, RedisStore, ReserveCall, ReshareCall,
    };
    let server = RedisServer::start();
    let redis = RedisStore::connect(&server.url(), RedisOptions::default())
        .await
        .unwrap();
    let clock = ManualClock::new(0.0);
    let memory = MemoryStore::with_clock(Arc::new(clock.clone()));
    let policy = Limits::new()
        .requests(30)
        .tokens(3_000)
        .window_secs(2.0)
        .validate()
        .unwrap();
    let changes = [(0.9, 0.1), (0.1, 0.9), (0.25, 0.7), (0.6, 0.35), (0.5, 0.5)];
    for (n, &(from, to)) in changes.iter().enumerate() {
        for calls in [0, 2, 14] {
            let key = format!("lane-{n}-{calls}");
            let lane = policy.lane(from);
            for _ in 0..calls {
                let call = ReserveCall {
                    key: &key,
                    policy: &lane,
                    class: 0,
                    headroom: 1.0,
                    cost: lane.units(Cost::tokens(230)),
                    max_wait: None,
                    max_queue: None,
                    lease: None,
                };
                let r = redis.reserve(&call).await.unwrap().unwrap();
                clock.set(r.now);
                assert_eq!(memory.reserve_now(&call).unwrap().mark, r.mark);
            }
            let extra = [0.5 * n as f64, 41.0 * n as f64, 0.0, 0.0];
            let call = ReshareCall::new(&key, &policy, from, to, extra);
            for round in 0..2 {
                let r = redis.reshare(&call).await.unwrap();
                clock.set(r.now);
                let m = memory.reshare_now(&call);
                let what = format!("{from} to {to} after {calls} calls, round {round}");
                assert_eq!(r.moved, m.moved, "{what}");
                let bits = |d: [f64; 4]| d.map(f64::to_bits);
                assert_eq!(bits(r.owed), bits(m.owed), "{what}");
                let on_redis = redis.snapshot(&key, &policy).await.unwrap().state;
                let on_memory = memory.snapshot_now(&key).state;
                assert_eq!(bits(on_redis.tat), bits(on_memory.tat), "{what}");
                // Moved once: the second round finds it at its share (a
                // lane the change left empty recorded nothing).
                let written = calls > 0 || to > from;
                assert_eq!(r.moved, round == 0 || !written, "{what}");
                // A queue beyond the tolerance owes; room given up is owed
                // to the others.
                if to < from {
                    assert_eq!(r.owed[1] > 0.0, calls == 14, "{what}: {:?}", r.owed);
                }
            }
        }
    }
}

/// Each class's floor (in twentieths) and weight.
type Classes = Vec<(u8, u8)>;

/// Classes of these (floor in twentieths, weight) that lend all or nothing.
fn shares_of(classes: &[(u8, u8)], lend: bool) -> Vec<ClassShare> {
    classes
        .iter()
        .map(|&(f, w)| {
            let share = ClassShare::new(f as f64 / 20.0, w as f64);
            share.lendable(if lend { 1.0 } else { 0.0 })
        })
        .collect()
}

/// Two to four classes, their shares before and after, how many calls of
/// 10 tokens each reserves before the change (beyond its lane: a queue),
/// and whether the lanes lend.
fn a_change() -> impl Strategy<Value = (Classes, Classes, Vec<usize>, bool)> {
    (2usize..=4).prop_flat_map(|n| {
        let class = (0u8..=5, 1u8..=4);
        (
            proptest::collection::vec(class.clone(), n),
            proptest::collection::vec(class, n),
            proptest::collection::vec(0usize..130, n),
            any::<bool>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Whatever the shares before and after, however full each lane and
    /// its queue, lending or not: two instances change the shares, every
    /// class takes what it can at once as the bucket refills, and nothing
    /// started ever passes the bucket.
    #[test]
    fn no_change_of_shares_starts_more_than_the_bucket_holds(
        (before, after, calls, lend) in a_change()
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let beyond = runtime.block_on(async {
            use std::sync::Arc;
            use tollgate::store::{ManualClock, MemoryStore};
            let clock = ManualClock::new(1_000.0);
            let store = Store::Memory(MemoryStore::with_clock(Arc::new(clock.clone())));
            let class = PriorityClass { headroom: 1.0, max_wait: None };
            let instance = || {
                RateLimiter::builder("any")
                    .limits(Limits::new().tokens(1_000).window_secs(1.0))
                    .priority_classes(vec![class.clone(); before.len()])
                    .class_shares(shares_of(&before, lend))
                    .store(store.clone())
                    .build_unchecked()
                    .unwrap()
            };
            let (a, b) = (instance(), instance());
            let mut slots = Vec::new();
            for (k, &n) in calls.iter().enumerate() {
                for i in 0..n {
                    let l = if i % 2 == 0 { &a } else { &b };
                    let p = l
                        .reserve(Cost::tokens(10), &AcquireOptions::class(k as u8))
                        .await
                        .unwrap();
                    slots.push(p.slot());
                }
            }
            for l in [&a, &b] {
                l.set_class_shares(shares_of(&after, lend)).unwrap();
            }
            for _ in 0..10 {
                for k in 0..after.len() {
                    slots.extend(at_once_from_both(&a, &b, k as u8).await);
                }
                clock.advance(0.05);
            }
            most_beyond_the_bucket(&slots, 1_000.0)
        });
        prop_assert!(beyond <= 1e-6, "{} tokens beyond the bucket", beyond);
    }
}
