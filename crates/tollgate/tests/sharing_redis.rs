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
    let builder = RateLimiter::builder("shared/model").url(url);
    shared(builder, Limits::new().requests(40).window_secs(1.0)).await
}

/// Two classes of the same priority on `limits`, lanes 0.7 and 0.3.
async fn shared(builder: tollgate::Builder, limits: Limits) -> RateLimiter {
    let class = PriorityClass {
        headroom: 1.0,
        max_wait: None,
    };
    builder
        .limits(limits)
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

/// Usage above a call's estimate is charged to every lane by its share, on
/// Redis as on the memory store: a call of lane 0 that used 100 requests
/// more than it reserved leaves 70 of them in use in its lane and 30 in the
/// other (lanes 0.7 and 0.3), as the whole bucket would hold all 100.
async fn usage_above_the_estimate_goes_to_every_lane(limiter: RateLimiter) {
    let permit = limiter
        .acquire_with(Cost::tokens(100), AcquireOptions::class(0))
        .await
        .unwrap();
    assert_eq!(permit.lane(), Some(0));
    let settled = limiter.settle(permit, Cost::tokens(200)).await.unwrap();
    assert_eq!(settled.charged[1], 100.0);
    let status = limiter.status().await.unwrap();
    let in_use = |class: usize| status.classes[class].dimensions[0].in_use;
    assert!((in_use(0) - 170.0).abs() < 0.5, "lane 0: {}", in_use(0));
    assert!((in_use(1) - 30.0).abs() < 0.5, "lane 1: {}", in_use(1));
}

async fn tokens_instance(builder: tollgate::Builder) -> RateLimiter {
    shared(builder, Limits::new().tokens(1_000).window_secs(60.0)).await
}

#[tokio::test]
async fn usage_above_the_estimate_goes_to_every_lane_on_redis_and_memory() {
    let server = RedisServer::start();
    let redis = tokens_instance(RateLimiter::builder("over").url(&server.url())).await;
    usage_above_the_estimate_goes_to_every_lane(redis).await;
    let memory = tokens_instance(RateLimiter::builder("over")).await;
    usage_above_the_estimate_goes_to_every_lane(memory).await;
}
