//! A Redis that restarts empty (no persistence) has forgotten how much of
//! every bucket was used, while the provider's own buckets are as drained as
//! before. The store notices (its epoch key is gone too) and starts the
//! buckets drained; a key that merely expired while idle starts full.

mod support;

use std::time::Duration;

use tollgate::store::{AfterReset, RedisOptions};
use tollgate::{AcquireOptions, Cost, Limits, OutagePolicy, RateLimiter, RetryConfig, Store};

use support::RedisServer;

/// 10 requests per second: one every 100 ms, a full bucket holds 10.
fn limits() -> Limits {
    Limits::new().requests(10).window_secs(1.0)
}

async fn store(server: &RedisServer, options: RedisOptions) -> Store {
    Store::redis_with(&server.url(), options).await.unwrap()
}

async fn limiter(store: &Store, key: &str) -> RateLimiter {
    RateLimiter::builder(key)
        .limits(limits())
        .retry(RetryConfig {
            max_retries: 8,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            ..RetryConfig::default()
        })
        .outage(OutagePolicy::Closed)
        .store(store.clone())
        .build()
        .await
        .unwrap()
}

/// Waits of `n` reservations taken back to back, in seconds.
async fn waits(l: &RateLimiter, n: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let p = l
            .reserve(Cost::request_only(), &AcquireOptions::default())
            .await
            .unwrap();
        out.push(p.waited().as_secs_f64());
    }
    out
}

/// Before the restart the bucket is nearly full (one request taken); after
/// it, the first reservations wait as they would on an empty bucket: 0.1 s,
/// 0.2 s, 0.3 s. A second limiter on the same store, first used after the
/// restart, starts drained too, and the reset counts once.
#[tokio::test]
async fn a_store_restarted_empty_starts_its_buckets_drained() {
    let mut server = RedisServer::start();
    let store = store(&server, RedisOptions::default()).await;
    let first = limiter(&store, "reset/a").await;
    let second = limiter(&store, "reset/b").await;
    let fresh = waits(&first, 1).await;
    assert_eq!(fresh, [0.0], "a fresh store is trusted to be full");

    server.restart();
    let after = waits(&first, 3).await;
    for (k, w) in after.iter().enumerate() {
        let drained = 0.1 * (k + 1) as f64;
        assert!(
            (w - drained).abs() < 0.03,
            "reservation {k} after the restart waited {w:.3} s, a drained bucket {drained:.1} s: {after:?}"
        );
    }
    let other = waits(&second, 1).await;
    assert!(
        (other[0] - 0.1).abs() < 0.03,
        "a key first used after the restart waited {other:?}"
    );
    assert_eq!(first.stats().store_resets, 1, "{:?}", first.stats());
    assert_eq!(second.stats().store_resets, 1, "one reset, counted once");
    assert_eq!(first.stats().outage_closed, 0, "{:?}", first.stats());
}

/// With `AfterReset::Full` the empty store is trusted: no waits after the
/// restart. The reset is still counted.
#[tokio::test]
async fn after_reset_full_trusts_the_empty_store() {
    let mut server = RedisServer::start();
    let store = store(
        &server,
        RedisOptions::default().after_reset(AfterReset::Full),
    )
    .await;
    let l = limiter(&store, "reset/full").await;
    assert_eq!(waits(&l, 1).await, [0.0]);
    server.restart();
    assert_eq!(waits(&l, 3).await, [0.0, 0.0, 0.0]);
    assert_eq!(l.stats().store_resets, 1);
}

/// A key that expired because it was idle is full, not drained: the store
/// kept its epoch, so nothing was lost.
#[tokio::test]
async fn a_key_that_expired_idle_starts_full() {
    let server = RedisServer::start();
    let store = store(
        &server,
        RedisOptions::default().idle_ttl(Duration::from_millis(50)),
    )
    .await;
    let l = limiter(&store, "reset/idle").await;
    assert_eq!(waits(&l, 2).await, [0.0, 0.0]);
    // The backlog (0.2 s) drains, then the keys expire after the margin.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // All but the record of its limits (kept for FINGERPRINT_TTL).
    let keys = server.cli(&["KEYS", "*{reset/idle}*"]);
    let left: Vec<&str> = keys
        .lines()
        .filter(|k| !k.trim().is_empty() && !k.ends_with(":f"))
        .collect();
    assert!(left.is_empty(), "the key did not expire: {left:?}");
    assert_eq!(waits(&l, 3).await, [0.0, 0.0, 0.0]);
    assert_eq!(l.stats().store_resets, 0);
}
