//! Classes sharing one bucket (`Builder::class_shares`) across two limiter
//! instances on real Redis, standalone and Cluster: an idle class's lane is
//! borrowed by the busy one, and a class that comes back gets its floor.

mod support;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use support::{RedisCluster, RedisServer};
use tollgate::{AcquireOptions, ClassShare, Cost, Limits, PriorityClass, RateLimiter};

/// 40 requests per second; class 0: floor 0.5, class 1: floor 0.1, the rest
/// 1:1 (lanes 0.7 and 0.3).
async fn instance(url: &str) -> RateLimiter {
    let class = PriorityClass {
        headroom: 1.0,
        max_wait: None,
    };
    RateLimiter::builder("shared/model")
        .url(url)
        .limits(Limits::new().requests(40).window_secs(1.0))
        .priority_classes(vec![class.clone(), class])
        .class_shares(vec![ClassShare::new(0.5, 1.0), ClassShare::new(0.1, 1.0)])
        .build()
        .await
        .unwrap()
}

/// Class 1 floods from both instances for 4 s; class 0 joins after 1.5 s.
/// Start times (store clock) per class.
async fn share_on(url: &str) {
    let a = instance(url).await;
    let b = instance(url).await;
    let starts: Arc<Mutex<Vec<(u8, f64)>>> = Arc::default();
    let begin = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (n, limiter) in [a.clone(), b.clone()]
        .into_iter()
        .cycle()
        .take(16)
        .enumerate()
    {
        let class = if n < 8 { 1 } else { 0 };
        let starts = starts.clone();
        tasks.push(tokio::spawn(async move {
            if class == 0 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            while begin.elapsed() < Duration::from_secs(4) {
                let permit = limiter
                    .acquire_with(Cost::request_only(), AcquireOptions::class(class))
                    .await
                    .unwrap();
                starts.lock().push((class, permit.slot()));
                limiter.settle(permit, Cost::request_only()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let starts = starts.lock().clone();
    let first = starts.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    let count = |class: u8, from: f64, to: f64| {
        starts
            .iter()
            .filter(|(c, t)| *c == class && *t >= first + from && *t < first + to)
            .count() as f64
    };
    // Alone (after the first second's burst), class 1 gets most of the
    // bucket, not just its 30% lane: it borrows class 0's.
    let alone = count(1, 1.0, 1.5);
    assert!(alone >= 0.9 * 40.0 * 0.5, "class 1 alone: {alone} in 0.5 s");
    // Both busy (after class 0's lane drained what was lent): each keeps its
    // lane; class 0 gets at least its floor, less one burst of its lane.
    let (zero, one) = (count(0, 2.0, 3.8), count(1, 2.0, 3.8));
    assert!(
        zero >= 0.5 * 40.0 * 1.8 - 0.7 * 40.0,
        "class 0: {zero}, class 1: {one}"
    );
    assert!(
        zero >= 0.9 * 0.7 * 40.0 * 1.8,
        "class 0: {zero} of its lane"
    );
    // Never more than the bucket: 40 a second plus one burst of 40.
    let all = starts.len() as f64;
    let span = starts.iter().map(|s| s.1).fold(0.0, f64::max) - first;
    assert!(all <= 40.0 * span + 40.0 + 1.0, "{all} in {span} s");
    assert!(a.stats().borrowed + b.stats().borrowed > 0);
}

#[tokio::test]
async fn two_instances_share_a_bucket_by_floor_on_redis() {
    let server = RedisServer::start();
    share_on(&server.url()).await;
}

#[tokio::test]
async fn two_instances_share_a_bucket_by_floor_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    share_on(&cluster.url()).await;
}

/// Two classes of the same priority on 1,000 tokens a minute, lanes 0.7 and
/// 0.3, built on `builder`.
async fn tokens_instance(builder: tollgate::Builder) -> RateLimiter {
    let class = PriorityClass {
        headroom: 1.0,
        max_wait: None,
    };
    builder
        .limits(Limits::new().tokens(1_000).window_secs(60.0))
        .priority_classes(vec![class.clone(), class])
        .class_shares(vec![ClassShare::new(0.5, 1.0), ClassShare::new(0.1, 1.0)])
        .build()
        .await
        .unwrap()
}

/// Usage above an estimate fills the lanes' rooms to one level, the
/// emptiest first; usage beyond what the bucket holds keeps every class of
/// every instance from starting until the bucket has paid it.
async fn usage_above_the_estimate_is_paid_by_every_lane(a: RateLimiter, b: RateLimiter) {
    let in_use = |s: &tollgate::Status, class: usize| s.classes[class].dimensions[0].in_use;
    // Class 0 uses 300 tokens on a 100-token estimate: the bucket holds 300
    // of 1,000, and each lane 30% of itself (lane 1, empty, gave first).
    let permit = a
        .acquire_with(Cost::tokens(100), AcquireOptions::class(0))
        .await
        .unwrap();
    assert_eq!(permit.lane(), Some(0));
    let settled = a.settle(permit, Cost::tokens(300)).await.unwrap();
    assert_eq!(settled.charged[1], 200.0);
    let status = b.status().await.unwrap();
    assert!((in_use(&status, 0) - 210.0).abs() < 1.0, "{status:?}");
    assert!((in_use(&status, 1) - 90.0).abs() < 1.0, "{status:?}");
    // A call of class 1 uses 1,000 tokens on a 10-token estimate: 300 more
    // than the bucket holds, 18 s of refill.
    let permit = a
        .acquire_with(Cost::tokens(10), AcquireOptions::class(1))
        .await
        .unwrap();
    a.settle(permit, Cost::tokens(1_000)).await.unwrap();
    for class in [0, 1] {
        let held = b
            .reserve(Cost::tokens(1), &AcquireOptions::class(class))
            .await
            .unwrap();
        let waited = held.waited().as_secs_f64();
        assert!(
            (17.5..19.0).contains(&waited),
            "class {class} would start after {waited} s"
        );
        b.cancel(held).await.unwrap();
    }
}

#[tokio::test]
async fn usage_above_the_estimate_is_paid_by_every_lane_on_redis_and_memory() {
    let server = RedisServer::start();
    let on_redis = || tokens_instance(RateLimiter::builder("over").url(&server.url()));
    usage_above_the_estimate_is_paid_by_every_lane(on_redis().await, on_redis().await).await;
    let store = tollgate::Store::memory();
    let on_memory = || tokens_instance(RateLimiter::builder("over").store(store.clone()));
    usage_above_the_estimate_is_paid_by_every_lane(on_memory().await, on_memory().await).await;
}

/// Whose turn it is to borrow (`tollgate_core::may_borrow`), on Redis as on
/// the memory store: three classes of weights 1, 2 and 3 ask and are
/// charged in a fixed pseudo-random order, with pauses around the window
/// an ask counts for, so that classes fall idle and come back level. Every
/// answer, and every class's pass, agrees to the bit.
#[tokio::test]
async fn redis_and_memory_agree_on_the_turns_to_borrow() {
    use tollgate::store::{Backend, LendCall, LendOp, ManualClock, MemoryStore, RedisOptions};
    let server = RedisServer::start();
    let redis = tollgate::store::RedisStore::connect(&server.url(), RedisOptions::default())
        .await
        .unwrap();
    let clock = ManualClock::new(0.0);
    let memory = MemoryStore::with_clock(Arc::new(clock.clone()));
    let window = 0.03;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let (mut allowed, mut refused) = (0, 0);
    for _ in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let class = (seed % 3) as u8;
        let op = if seed % 5 < 2 {
            LendOp::Charge {
                pass: (1 + seed % 7) as f64 * 0.0137 / (class as f64 + 1.0),
            }
        } else {
            LendOp::Ask { window }
        };
        if seed.is_multiple_of(11) {
            tokio::time::sleep(Duration::from_millis(seed % 50)).await;
        }
        let call = LendCall::new("turns", class, 3, op);
        let r = redis.lend(&call).await.unwrap();
        clock.set(r.now);
        let m = memory.lend_now(&call).unwrap();
        assert_eq!(r.allowed, m.allowed, "{call:?}");
        assert_eq!(
            r.pass.to_bits(),
            m.pass.to_bits(),
            "{call:?}: {r:?} vs {m:?}"
        );
        if matches!(op, LendOp::Ask { .. }) {
            if r.allowed {
                allowed += 1
            } else {
                refused += 1
            }
        }
    }
    assert!(
        allowed > 20 && refused > 20,
        "{allowed} allowed, {refused} refused"
    );
    // A class out of range is refused by both, naming the classes.
    let bad = LendCall::new("turns", 3, 3, LendOp::Ask { window });
    let e = redis.lend(&bad).await.unwrap_err().to_string();
    assert!(e.contains("class 3 of 3"), "{e}");
    assert_eq!(memory.lend_now(&bad).unwrap_err().to_string(), e);
}

/// Script calls Redis has run so far (`EVALSHA` and `EVAL` in
/// `INFO commandstats`).
fn script_calls(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A call refused while every lane it could borrow is known full to this
/// process (found full a moment ago) asks Redis once, of its own lane: not
/// for its turn to borrow too, which it could not use.
#[tokio::test]
async fn a_refusal_with_every_lender_known_full_asks_redis_once() {
    let server = RedisServer::start();
    let class = PriorityClass {
        headroom: 1.0,
        max_wait: None,
    };
    let limiter = RateLimiter::builder("full/everywhere")
        .url(&server.url())
        .limits(Limits::new().requests(30).window_secs(60.0))
        .priority_classes(vec![class; 3])
        .class_shares(vec![ClassShare::new(0.2, 1.0); 3])
        .build()
        .await
        .unwrap();
    let at_once = AcquireOptions::class(0).max_wait(Duration::ZERO);
    // Class 0 takes its lane, then borrows the others' until every lane is
    // full; the refusal that ends it finds them full.
    let mut started = 0;
    while limiter
        .reserve(Cost::request_only(), &at_once)
        .await
        .is_ok()
    {
        started += 1;
        assert!(started <= 30, "more than the bucket");
    }
    assert!(started >= 27, "{started} of 30");
    let before = script_calls(&server);
    assert!(limiter
        .reserve(Cost::request_only(), &at_once)
        .await
        .is_err());
    assert_eq!(
        script_calls(&server) - before,
        1,
        "script calls for a refusal"
    );
}
