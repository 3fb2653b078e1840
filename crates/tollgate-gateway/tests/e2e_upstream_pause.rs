//! Two gateway instances on one Redis: an upstream 429 with `Retry-After`
//! seen by one pauses that provider model on both for that long (no request
//! reaches it meanwhile), then traffic resumes. The pause's read is judged
//! as every store call is: a read that only waits in this process still
//! finds the pause, and a paused Redis is still found out in time.
//!
//! The pause is 2 s here to keep the suite short; `TOLLGATE_PAUSE_SECS=7`
//! runs it with the 7 s of docs/RELIABILITY.md.

mod common;
#[path = "common/faulty_upstream.rs"]
mod faulty_upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use faulty_upstream::{Fault, FaultyUpstream};
use tollgate::store::RedisOptions;
use tollgate::Store;
use tollgate_gateway::pause::Hold;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_with_retry_after_seen_by_one_instance_holds_back_both() {
    let secs: u64 = std::env::var("TOLLGATE_PAUSE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pause = Duration::from_secs(secs);
    let retry_after: &'static str = Box::leak(secs.to_string().into_boxed_str());
    let redis = Redis::start().await;
    let up = FaultyUpstream::start(Fault::Status(429, Some(retry_after))).await;
    let tiers = [("pro", pro_tier())];
    let a = gateway(shared_config(&up.base_url(), &redis.url, &tiers)).await;
    let b = gateway(shared_config(&up.base_url(), &redis.url, &tiers)).await;
    let c = http();
    let body = chat_body("hello world", 100);

    let r = chat(&c, &a, "pro", &body).await;
    let seen = Instant::now();
    assert_eq!(header(&r, "retry-after"), Some(retry_after));
    expect_error(r, 429, "rate_limit_exceeded").await;
    up.set(Fault::Well { spaced: false });

    // Both instances, in turn every 50 ms, until one gets through.
    let (mut held, mut i) = (0, 0);
    let resumed_after = loop {
        let gw = [&a, &b][i % 2];
        i += 1;
        let sent = seen.elapsed();
        let r = chat(&c, gw, "pro", &body).await;
        if r.status() == 200 {
            break sent;
        }
        let left = header_u64(&r, "retry-after");
        assert!(left >= 1 && left <= secs, "retry-after {left}");
        expect_error(r, 429, "upstream_paused").await;
        assert_eq!(
            up.requests(),
            1,
            "nothing reached the upstream {sent:?} into the pause"
        );
        held += 1;
        assert!(
            sent < pause + Duration::from_secs(1),
            "still held {sent:?} after the 429"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "pause {secs} s: {held} requests held back on two instances, 0 reached the upstream; traffic resumed {:.3} s after the 429",
        resumed_after.as_secs_f64()
    );
    assert!(
        held >= 2 * secs as usize,
        "both instances were asked: {held}"
    );
    assert!(
        resumed_after >= pause - Duration::from_millis(100),
        "resumed after {resumed_after:?}, before the {pause:?} pause ended"
    );
    assert_eq!(chat(&c, &a, "pro", &body).await.status(), 200);
    assert_eq!(chat(&c, &b, "pro", &body).await.status(), 200);
    assert_eq!(up.requests(), 4, "the 429, then three answers");
}

/// A read of the shared pause that only waits in this process (the one
/// thread of its runtime kept busy past the store's timeout, as a burst on
/// a loaded machine keeps it) while Redis answers is not a store failure:
/// the pause another instance started still holds the request back. A
/// paused Redis (SIGSTOP) still fails the read long before the
/// connection's own limit (`late_reply_timeout`), holding nothing back.
#[tokio::test(flavor = "current_thread")]
async fn a_pause_read_kept_waiting_by_its_own_runtime_still_finds_the_pause() {
    let redis = Redis::start().await;
    let timeout = Duration::from_millis(200);
    let options = RedisOptions::default()
        .connect_timeout(timeout)
        .response_timeout(timeout);
    let store = Store::redis_with(&redis.url, options).await.unwrap();
    // Another instance saw the upstream's 429 and shared its pause.
    Hold::new("model:p/m")
        .start(&store, timeout, 429, Duration::from_secs(30))
        .await;
    for round in 0..3 {
        // A fresh instance: it knows of no pause and reads the store.
        let reader = Arc::new(Hold::new("model:p/m"));
        let read = tokio::spawn({
            let (reader, store) = (reader.clone(), store.clone());
            async move { reader.check(&store, timeout).await }
        });
        // Runs after the read was handed to the connection, before the
        // connection's task has sent it: the reply waits for this thread.
        tokio::spawn(async { std::thread::sleep(Duration::from_millis(600)) });
        let paused = read.await.unwrap();
        assert!(
            matches!(paused, Some(p) if p.status == 429 && p.left > Duration::from_secs(20)),
            "round {round}: {paused:?}"
        );
        assert_eq!(reader.failed_reads(), 0, "round {round}");
    }
    redis.pause();
    let reader = Hold::new("model:p/m");
    let started = Instant::now();
    let paused = reader.check(&store, timeout).await;
    let waited = started.elapsed();
    redis.resume();
    assert_eq!(paused, None);
    assert_eq!(reader.failed_reads(), 1);
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}
