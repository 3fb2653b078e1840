//! Rate-limit headers as OpenAI's: `remaining` never above `limit` (a burst
//! factor shows apart, in `x-tollgate-burst-*`), and a 429 describes the
//! bucket that refused it.

mod common;

use common::*;

#[tokio::test]
async fn remaining_never_exceeds_the_limit_and_the_burst_shows_apart() {
    let mut t = tier(10, 1_000, 0, 0);
    t.burst = 2.0;
    let (_sim, gw, c) = start(model(100_000, 100_000_000), &[("bursty", t)]).await;
    let r = chat(&c, &gw, "bursty", &chat_body("hi", 5)).await;
    assert_eq!(r.status(), 200);
    for dim in ["requests", "tokens"] {
        let limit = header_u64(&r, &format!("x-ratelimit-limit-{dim}"));
        let remaining = header_u64(&r, &format!("x-ratelimit-remaining-{dim}"));
        let burst = header_u64(&r, &format!("x-tollgate-burst-{dim}"));
        assert!(
            remaining <= limit,
            "{dim}: remaining {remaining} > limit {limit}"
        );
        assert_eq!(burst, 2 * limit, "{dim}");
    }
    assert_eq!(header_u64(&r, "x-ratelimit-limit-requests"), 10);
    // With burst 1 there is no burst header.
    let (_sim, gw, c) = start(model(100_000, 100_000_000), &[("pro", pro_tier())]).await;
    let r = chat(&c, &gw, "pro", &chat_body("hi", 5)).await;
    assert!(header(&r, "x-tollgate-burst-requests").is_none());
}

#[tokio::test]
async fn a_429_of_the_provider_bucket_carries_that_buckets_headers() {
    let (_sim, gw, c) = start(model(2, 100_000_000), &[("pro", pro_tier())]).await;
    for _ in 0..2 {
        assert_eq!(
            chat(&c, &gw, "pro", &chat_body("hi", 5)).await.status(),
            200
        );
    }
    let r = chat(&c, &gw, "pro", &chat_body("hi", 5)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-tollgate-ratelimit-bucket"), Some("model"));
    assert_eq!(header_u64(&r, "x-ratelimit-limit-requests"), 2);
    assert_eq!(header_u64(&r, "x-ratelimit-remaining-requests"), 0);
    expect_error(r, 429, "model_rpm_exceeded").await;
    // The client's own refusal names the client bucket.
    let (_sim, gw, c) = start(
        model(100_000, 100_000_000),
        &[("one", tier(1, 100_000, 0, 0))],
    )
    .await;
    assert_eq!(
        chat(&c, &gw, "one", &chat_body("hi", 5)).await.status(),
        200
    );
    let r = chat(&c, &gw, "one", &chat_body("hi", 5)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-tollgate-ratelimit-bucket"), Some("client"));
    assert_eq!(header_u64(&r, "x-ratelimit-limit-requests"), 1);
}
