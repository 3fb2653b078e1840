//! What the library refuses, and that its errors say what is true: costs the
//! limits cannot charge, absurd settings, unknown URLs, TLS to a plain-text
//! server, outage messages, and limiters that disagree on one key.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use tollgate::store::RedisOptions;
use tollgate::{Cost, CostError, Error, Limits, OutagePolicy, RateLimiter, RetryConfig, Source};

use support::RedisServer;

/// A key no other test of this process uses.
fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("validation/{name}/{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `Cost::tokens` says nothing of output tokens, so on limits with an output
/// limit it is refused (it used to pass five times over `output_tpm = 100`),
/// for reservations and settlements alike; `Cost::split` is charged.
#[tokio::test]
async fn combined_tokens_cannot_slip_past_an_output_limit() {
    let limits = Limits::new().tpm(1_000_000).output_tpm(100);
    let l = RateLimiter::memory(&unique("output"), limits).unwrap();
    for _ in 0..5 {
        let err = l.try_acquire(Cost::tokens(10_000)).await.unwrap_err();
        assert!(
            matches!(err, Error::Cost(CostError::Unsplit { .. })),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("Cost::split(input, output)"),
            "{err}"
        );
    }
    assert_eq!(l.stats().granted, 0);
    let p = l.try_acquire(Cost::split(10, 100)).await.unwrap();
    assert!(
        l.try_acquire(Cost::split(10, 1)).await.is_err(),
        "output bucket is full"
    );
    // The permit comes back unsettled with the error, to be settled right.
    let p = match l.settle(p, Cost::tokens(50)).await {
        Err(Error::BadUsage { permit, .. }) => *permit,
        other => panic!("{other:?}"),
    };
    l.settle(p, Cost::split(10, 40)).await.unwrap();
    // A request-only cost charges no tokens anywhere: nothing to split.
    let l = RateLimiter::memory(&unique("output"), Limits::new().rpm(5).output_tpm(100)).unwrap();
    assert!(l.try_acquire(Cost::request_only()).await.is_ok());
}

/// A limiter on `server` with no retries and short timeouts, so that failures
/// show quickly.
async fn redis_limiter(
    server: &RedisServer,
    key: &str,
    limits: Limits,
    policy: OutagePolicy,
) -> RateLimiter {
    // Long enough for the first call (its scripts loaded) on a loaded
    // machine; the errors asserted come from a killed server, at once.
    let options = RedisOptions::default()
        .connect_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2));
    RateLimiter::builder(key)
        .url(&server.url())
        .redis_options(options)
        .limits(limits)
        .retry(RetryConfig::none())
        .outage(policy)
        .build()
        .await
        .unwrap()
}

/// A settlement that fails under the `open` outage policy must not claim the
/// policy was `closed`; a refused acquire under `closed` names it.
#[tokio::test]
async fn store_unavailable_names_the_policy_that_applied() {
    let mut server = RedisServer::start();
    let open = redis_limiter(
        &server,
        &unique("open"),
        Limits::new().tpm(1000),
        OutagePolicy::Open,
    )
    .await;
    let closed = redis_limiter(
        &server,
        &unique("closed"),
        Limits::new().tpm(1000),
        OutagePolicy::Closed,
    )
    .await;
    let permit = open.acquire(Cost::tokens(100)).await.unwrap();
    assert_eq!(permit.source(), Source::Store);
    server.kill();

    let err = open.settle(permit, Cost::tokens(10)).await.unwrap_err();
    assert!(matches!(err, Error::StoreUnavailable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(!msg.contains("closed"), "{msg}");

    let err = closed.acquire(Cost::tokens(10)).await.unwrap_err();
    assert!(matches!(err, Error::StoreUnavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("outage policy: closed"), "{err}");
}

/// A URL the library does not know is refused, naming the forms it knows;
/// `memoryx://` no longer passes for `memory://`.
#[tokio::test]
async fn unknown_url_schemes_are_refused() {
    for url in [
        "memoryx://",
        "memory://elsewhere",
        "mem://",
        "http://:secret@h:1",
        "localhost:6379",
        "",
    ] {
        let err = RateLimiter::new(url, &unique("url"), Limits::new().rpm(10))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Config { field: "url", .. }),
            "{url:?}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("memory://") && msg.contains("redis://") && !msg.contains("secret"),
            "{url:?}: {msg}"
        );
    }
}

/// Absurd limits are refused with the reason, through the library too.
#[tokio::test]
async fn absurd_limits_are_refused_with_a_reason() {
    let err = RateLimiter::memory(&unique("burst"), Limits::new().rpm(10).burst(1e12)).unwrap_err();
    assert!(matches!(err, Error::Limits { .. }), "{err:?}");
    assert!(err.to_string().contains("at most 1000"), "{err}");
    let no_tpm = Limits::new().rpm(10).output_tpm(100).burndown(5.0);
    let err = RateLimiter::memory(&unique("burndown"), no_tpm).unwrap_err();
    assert!(err.to_string().contains("set tpm"), "{err}");
}

/// Every `memory://` limiter of a process shares one store: two limiters of
/// one key are one bucket (they used to be two, granting 20 on rpm = 10).
/// `RateLimiter::memory` keeps making a private store.
#[tokio::test]
async fn memory_url_names_one_store_per_process() {
    let key = unique("shared");
    let limits = Limits::new().rpm(10);
    let a = RateLimiter::new("memory://", &key, limits.clone())
        .await
        .unwrap();
    let b = RateLimiter::builder(&key)
        .url("memory://")
        .limits(limits.clone())
        .build()
        .await
        .unwrap();
    let mut granted = Vec::new();
    for _ in 0..10 {
        for l in [&a, &b] {
            if let Ok(p) = l.try_acquire(Cost::request_only()).await {
                granted.push(p);
            }
        }
    }
    assert_eq!(granted.len(), 10);
    let private = RateLimiter::memory(&key, limits).unwrap();
    assert!(private.try_acquire(Cost::request_only()).await.is_ok());
}

/// `rediss://` to a plain-text server fails saying the TLS handshake did not
/// complete, not only that something timed out.
#[tokio::test]
async fn tls_to_a_plain_text_server_says_tls() {
    let server = RedisServer::start();
    let url = server.url().replacen("redis://", "rediss://", 1);
    let started = std::time::Instant::now();
    let err = tollgate::store::RedisStore::connect(&url, RedisOptions::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("TLS") && msg.contains("may not speak TLS"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The same for a Cluster seed node.
    let url = server.url().replacen("redis://", "rediss+cluster://", 1);
    let err = tollgate::store::RedisStore::connect(&url, RedisOptions::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("TLS") && msg.contains("may not speak TLS"),
        "{msg}"
    );
}

/// The limits of the second limiter of a key, when they differ from the
/// first's: refused, naming both.
fn assert_conflict(result: Result<RateLimiter, Error>, ours: &str, theirs: &str) {
    match result {
        Err(Error::LimitsConflict {
            ours: o, theirs: t, ..
        }) => assert_eq!((o.as_str(), t.as_str()), (ours, theirs)),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Two limiters of one key on the process memory store must agree on the
/// limits while both live; replacing them is explicit.
#[tokio::test]
async fn memory_limiters_of_one_key_must_agree() {
    let key = unique("agree");
    let ten = Limits::new().rpm(10);
    let twenty = Limits::new().rpm(20).burst(2.0);
    let first = RateLimiter::new("memory://", &key, ten.clone())
        .await
        .unwrap();
    let again = RateLimiter::new("memory://", &key, ten.clone())
        .await
        .unwrap();
    let err = RateLimiter::new("memory://", &key, twenty.clone()).await;
    assert_conflict(err, &twenty.fingerprint(), &ten.fingerprint());
    let msg = RateLimiter::new("memory://", &key, twenty.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("rpm=20") && msg.contains("rpm=10") && msg.contains("replace_stored_limits"),
        "{msg}"
    );
    // A private store is another set of buckets: nothing to agree with.
    assert!(RateLimiter::memory(&key, twenty.clone()).is_ok());

    // Once every limiter with the old limits is gone, new ones may be set.
    drop((first, again));
    let now = RateLimiter::new("memory://", &key, twenty.clone())
        .await
        .unwrap();
    let replaced = RateLimiter::builder(&key)
        .url("memory://")
        .limits(ten.clone())
        .replace_stored_limits(true)
        .build()
        .await
        .unwrap();
    assert_conflict(
        RateLimiter::new("memory://", &key, twenty.clone()).await,
        &twenty.fingerprint(),
        &ten.fingerprint(),
    );
    drop((now, replaced));
}

/// The same through Redis: the limits are recorded with the key (with an
/// expiry), a limiter with others is refused however it reaches the store,
/// and `replace_stored_limits` overwrites the record.
#[tokio::test]
async fn redis_limiters_of_one_key_must_agree() {
    let server = RedisServer::start();
    let key = unique("agree");
    let ten = Limits::new().rpm(10).tpm(1000);
    let split = Limits::new()
        .rpm(10)
        .tpm(1000)
        .output_tpm(100)
        .burndown(5.0);
    let first = RateLimiter::new(&server.url(), &key, ten.clone())
        .await
        .unwrap();
    let record = format!("tollgate:{{{key}}}:f");
    assert_eq!(server.cli(&["GET", &record]).trim(), ten.fingerprint());
    let ttl: u64 = server.cli(&["PTTL", &record]).trim().parse().unwrap();
    assert!(
        ttl > 0 && ttl <= tollgate::FINGERPRINT_TTL.as_millis() as u64,
        "{ttl}"
    );

    assert!(RateLimiter::new(&server.url(), &key, ten.clone())
        .await
        .is_ok());
    assert_conflict(
        RateLimiter::new(&server.url(), &key, split.clone()).await,
        &split.fingerprint(),
        &ten.fingerprint(),
    );
    let through_store = RateLimiter::builder(&key)
        .store(first.store().clone())
        .limits(split.clone())
        .build()
        .await;
    assert_conflict(through_store, &split.fingerprint(), &ten.fingerprint());
    // Another prefix is another set of keys.
    let other_prefix = RateLimiter::builder(&key)
        .url(&server.url())
        .redis_options(RedisOptions::default().key_prefix("elsewhere"))
        .limits(split.clone())
        .build()
        .await;
    assert!(other_prefix.is_ok(), "{other_prefix:?}");

    RateLimiter::builder(&key)
        .url(&server.url())
        .limits(split.clone())
        .replace_stored_limits(true)
        .build()
        .await
        .unwrap();
    assert_eq!(server.cli(&["GET", &record]).trim(), split.fingerprint());
    assert_conflict(
        RateLimiter::new(&server.url(), &key, ten.clone()).await,
        &ten.fingerprint(),
        &split.fingerprint(),
    );
}
