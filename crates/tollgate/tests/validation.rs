//! What the library refuses, and that its errors say what is true: costs the
//! limits cannot charge, absurd settings, unknown URLs, TLS to a plain-text
//! server, outage messages, and limiters that disagree on one key.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};

use tollgate::{Cost, CostError, Error, Limits, RateLimiter};

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
    let err = l.settle(p, Cost::tokens(50)).await.unwrap_err();
    assert!(matches!(err, Error::Cost(_)), "{err:?}");
    // A request-only cost charges no tokens anywhere: nothing to split.
    let l = RateLimiter::memory(&unique("output"), Limits::new().rpm(5).output_tpm(100)).unwrap();
    assert!(l.try_acquire(Cost::request_only()).await.is_ok());
}
