//! The behavioural suite every store must pass. Each case takes a fresh store
//! (or one shared with other cases: keys are unique per case) and checks the
//! library's promises through its public API.
//!
//! A runner instantiates it with `behaviour::suite!(async_fn_returning_(Store, guard))`.
#![allow(dead_code)]

use std::time::Duration;

use tollgate::{AcquireOptions, Cost, Dimension, Error, Limits, PriorityClass, RateLimiter, Store};

fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test/{name}/{}/{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= tolerance
}

/// Generates one `#[tokio::test]` per case for a store factory.
#[macro_export]
macro_rules! suite {
    ($make:path) => {
        $crate::suite!(@cases $make;
            burst_then_waits_in_order, try_acquire_refuses_without_reserving,
            too_large_fails_at_once, settle_refunds_unused_estimate,
            refund_never_returns_drained_capacity, settle_charges_overuse,
            dropped_waiter_releases_its_slot, concurrent_acquires_are_fifo,
            split_limits_and_burndown, queue_cap_refuses_without_reserving,
            top_class_preempts_lower_class, status_reports_backlog_and_queue,
            keys_are_independent, cancel_gives_the_slot_back, acquire_waits_for_the_slot,
            status_at_grant_matches_status, settling_the_exact_estimate_changes_nothing,
            refunds_ahead_let_a_waiting_caller_start_earlier,
            a_reserved_permit_waits_and_moves_earlier_on_refunds_ahead,
            a_cancelled_waiter_lets_the_next_start_earlier, dropped_waiters_give_their_slots_back,
            a_started_call_that_gives_back_much_moves_the_queue_fully_up,
            a_permit_token_settles_once, a_permit_of_another_key_is_handed_back,
            a_margin_sees_the_bucket_full_earlier);
    };
    (@cases $make:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make().await;
                behaviour::$case(store).await;
            }
        )*
    };
}

async fn limiter(store: &Store, name: &str, limits: Limits) -> RateLimiter {
    RateLimiter::with_store(store, &unique(name), limits).expect("valid limits")
}

/// A full bucket admits its capacity at once, then spaces requests evenly, in order.
pub async fn burst_then_waits_in_order(store: Store) {
    let l = limiter(&store, "burst", Limits::new().requests(5).window_secs(1.0)).await;
    for i in 0..5 {
        let p = l
            .reserve(Cost::request_only(), &AcquireOptions::default())
            .await
            .unwrap();
        assert_eq!(
            p.waited(),
            Duration::ZERO,
            "request {i} of the burst waited"
        );
    }
    let mut last = 0.0;
    for i in 1..=3 {
        let p = l
            .reserve(Cost::request_only(), &AcquireOptions::default())
            .await
            .unwrap();
        let w = p.waited().as_secs_f64();
        assert!(close(w, 0.2 * i as f64, 0.1), "request {} waits {w}", 5 + i);
        assert!(w > last, "slots must come in order");
        assert_eq!(p.queue_position(), i - 1);
        last = w;
    }
}

/// `try_acquire` on an empty bucket refuses with the time to wait and charges nothing.
pub async fn try_acquire_refuses_without_reserving(store: Store) {
    let l = limiter(&store, "try", Limits::new().tokens(1000).window_secs(10.0)).await;
    let _p = l.try_acquire(Cost::tokens(1000)).await.unwrap();
    let before = l.status().await.unwrap();
    match l.try_acquire(Cost::tokens(500)).await {
        Err(Error::RateLimited { retry_after, .. }) => {
            assert!(
                close(retry_after.as_secs_f64(), 5.0, 0.2),
                "{retry_after:?}"
            )
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    let after = l.status().await.unwrap();
    let used = |s: &tollgate::Status| s.dimension(Dimension::Tokens).unwrap().in_use;
    assert!(
        used(&after) <= used(&before) + 1e-6,
        "a refused request was charged"
    );
    assert_eq!(after.queue_depth, 0);
}

/// A request larger than the bucket fails at once and says what to change.
pub async fn too_large_fails_at_once(store: Store) {
    let l = limiter(&store, "large", Limits::new().tokens(1000).requests(10)).await;
    let err = l.acquire(Cost::tokens(1001)).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("1001") && msg.contains("1000") && msg.contains("raise burst"),
        "{msg}"
    );
    let s = l.status().await.unwrap();
    assert!(
        s.dimension(Dimension::Requests).unwrap().in_use < 1e-9,
        "nothing may be charged"
    );
}

/// Settling below the estimate gives the unused part back.
pub async fn settle_refunds_unused_estimate(store: Store) {
    let l = limiter(
        &store,
        "refund",
        Limits::new().tokens(1000).window_secs(100.0),
    )
    .await;
    let p = l.acquire(Cost::tokens(800)).await.unwrap();
    let s = l.settle(p, Cost::tokens(200)).await.unwrap();
    assert!(close(s.refunded[1], 600.0, 1.0), "{:?}", s.refunded);
    let st = l.status().await.unwrap();
    let tokens = st.dimension(Dimension::Tokens).unwrap();
    assert!(close(tokens.in_use, 200.0, 1.0), "{tokens:?}");
    assert!(close(tokens.available, 800.0, 1.0), "{tokens:?}");
}

/// A refund never returns capacity that has already drained.
pub async fn refund_never_returns_drained_capacity(store: Store) {
    // 100 tokens per second drain; after ~0.5 s about 50 of the 100 have drained.
    let l = limiter(
        &store,
        "drained",
        Limits::new().tokens(100).window_secs(1.0),
    )
    .await;
    let p = l.acquire(Cost::tokens(100)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = l.settle(p, Cost::tokens(0)).await.unwrap();
    assert!(
        s.refunded[1] < 55.0,
        "refunded drained capacity: {:?}",
        s.refunded
    );
    let st = l.status().await.unwrap();
    assert!(st.dimension(Dimension::Tokens).unwrap().in_use < 1.0);
}

/// Settling above the estimate charges the difference.
pub async fn settle_charges_overuse(store: Store) {
    let l = limiter(
        &store,
        "overuse",
        Limits::new().tokens(1000).window_secs(100.0),
    )
    .await;
    let p = l.acquire(Cost::tokens(100)).await.unwrap();
    let s = l.settle(p, Cost::tokens(500)).await.unwrap();
    assert_eq!(s.charged[1], 400.0);
    let st = l.status().await.unwrap();
    assert!(close(
        st.dimension(Dimension::Tokens).unwrap().in_use,
        500.0,
        1.0
    ));
}

/// A waiting acquire that is dropped releases its reservation: the next caller
/// gets the slot it would have had.
pub async fn dropped_waiter_releases_its_slot(store: Store) {
    let l = limiter(
        &store,
        "dropped",
        Limits::new().requests(2).window_secs(1.0),
    )
    .await;
    let _a = l.acquire(Cost::request_only()).await.unwrap();
    let _b = l.acquire(Cost::request_only()).await.unwrap();
    // The third waits ~0.5 s; give up after 50 ms.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), l.acquire(Cost::request_only())).await;
    assert!(
        gave_up.is_err(),
        "the third request should have had to wait"
    );
    let mut depth = u64::MAX;
    for _ in 0..100 {
        depth = l.status().await.unwrap().queue_depth;
        if depth == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(depth, 0, "the dropped reservation is still queued");
    let p = l
        .reserve(Cost::request_only(), &AcquireOptions::default())
        .await
        .unwrap();
    assert!(
        p.waited() < Duration::from_millis(480),
        "waits behind a cancelled request: {:?}",
        p.waited()
    );
    assert_eq!(l.stats().cancelled, 1);
}

/// Concurrent callers get slots in the order the store saw them.
pub async fn concurrent_acquires_are_fifo(store: Store) {
    let l = limiter(&store, "fifo", Limits::new().tokens(1000).window_secs(1.0)).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let l = l.clone();
            // Varied sizes: a small request must not jump ahead of a big one.
            let cost = if i % 3 == 0 { 300 } else { 10 };
            tokio::spawn(async move {
                l.reserve(Cost::tokens(cost), &AcquireOptions::default())
                    .await
            })
        })
        .collect();
    let mut permits = Vec::new();
    for t in tasks {
        permits.push(t.await.unwrap().unwrap());
    }
    permits.sort_by_key(|p| p.id());
    for w in permits.windows(2) {
        assert!(
            w[1].slot() >= w[0].slot(),
            "id {} slot {} before id {} slot {}",
            w[1].id(),
            w[1].slot(),
            w[0].id(),
            w[0].slot()
        );
    }
    for p in permits {
        let _ = l.cancel(p).await;
    }
}

/// Separate input and output limits, and the burndown of output tokens in the
/// combined limit, are all charged at once.
pub async fn split_limits_and_burndown(store: Store) {
    let limits = Limits::new()
        .tokens(2000)
        .input_tokens(1000)
        .output_tokens(200)
        .burndown(5.0)
        .window_secs(100.0);
    let l = limiter(&store, "split", limits).await;
    let p = l.try_acquire(Cost::split(100, 150)).await.unwrap();
    let st = l.status().await.unwrap();
    assert!(close(
        st.dimension(Dimension::Tokens).unwrap().in_use,
        850.0,
        1.0
    ));
    assert!(close(
        st.dimension(Dimension::InputTokens).unwrap().in_use,
        100.0,
        1.0
    ));
    assert!(close(
        st.dimension(Dimension::OutputTokens).unwrap().in_use,
        150.0,
        1.0
    ));
    // Output is the binding limit now: 150 more output tokens do not fit.
    assert!(matches!(
        l.try_acquire(Cost::split(10, 150)).await,
        Err(Error::RateLimited { .. })
    ));
    let s = l.settle(p, Cost::split(100, 50)).await.unwrap();
    assert!(
        close(s.refunded[3], 100.0, 1.0) && close(s.refunded[1], 500.0, 5.0),
        "{s:?}"
    );
    let _q = l
        .try_acquire(Cost::split(10, 150))
        .await
        .expect("fits after the refund");
}

/// A key with a queue cap refuses once that many wait, and writes nothing.
pub async fn queue_cap_refuses_without_reserving(store: Store) {
    let l = RateLimiter::builder(&unique("cap"))
        .store(store.clone())
        .limits(Limits::new().requests(1).window_secs(10.0))
        .max_queue(2)
        .build()
        .await
        .unwrap();
    let opts = AcquireOptions::default();
    let first = l.reserve(Cost::request_only(), &opts).await.unwrap();
    let a = l.reserve(Cost::request_only(), &opts).await.unwrap();
    let b = l.reserve(Cost::request_only(), &opts).await.unwrap();
    assert_eq!(
        (
            first.queue_position(),
            a.queue_position(),
            b.queue_position()
        ),
        (0, 0, 1)
    );
    match l.reserve(Cost::request_only(), &opts).await {
        Err(Error::QueueFull {
            depth: 2,
            max_queue: 2,
            retry_after,
            ..
        }) => {
            assert!(retry_after > Duration::from_secs(25))
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert_eq!(l.status().await.unwrap().queue_depth, 2);
    l.cancel(b).await.unwrap();
    l.cancel(a).await.unwrap();
    assert_eq!(l.status().await.unwrap().queue_depth, 0);
}

/// A higher class that arrives later may start before queued lower-class requests.
pub async fn top_class_preempts_lower_class(store: Store) {
    let l = RateLimiter::builder(&unique("prio"))
        .store(store.clone())
        .limits(Limits::new().tokens(1000).window_secs(10.0))
        .priority_classes(vec![
            PriorityClass {
                headroom: 1.0,
                max_wait: None,
            },
            PriorityClass {
                headroom: 0.5,
                max_wait: None,
            },
        ])
        .build()
        .await
        .unwrap();
    let low = AcquireOptions::class(1);
    let first = l.reserve(Cost::tokens(500), &low).await.unwrap();
    assert_eq!(first.waited(), Duration::ZERO);
    let queued = l.reserve(Cost::tokens(500), &low).await.unwrap();
    assert!(
        close(queued.waited().as_secs_f64(), 5.0, 0.2),
        "{:?}",
        queued.waited()
    );
    let top = l
        .reserve(Cost::tokens(400), &AcquireOptions::class(0))
        .await
        .unwrap();
    assert!(
        top.slot() < queued.slot(),
        "top {} should start before queued low {}",
        top.slot(),
        queued.slot()
    );
    // The lower class has no way into the top share, even with a long wait allowed.
    let bounded = AcquireOptions::class(1).max_wait(Duration::from_secs(1));
    assert!(matches!(
        l.reserve(Cost::tokens(10), &bounded).await,
        Err(Error::RateLimited { .. })
    ));
    assert!(l
        .reserve(
            Cost::tokens(1),
            &AcquireOptions {
                class: 7,
                max_wait: None
            }
        )
        .await
        .is_err());
}

/// `status` reports limit, backlog, availability, refill time and queue depth.
pub async fn status_reports_backlog_and_queue(store: Store) {
    let l = limiter(
        &store,
        "status",
        Limits::new().requests(10).tokens(1000).window_secs(10.0),
    )
    .await;
    let fresh = l.status().await.unwrap();
    let t = fresh.dimension(Dimension::Tokens).unwrap();
    assert_eq!(
        (t.limit, t.capacity, t.in_use, t.available),
        (1000, 1000.0, 0.0, 1000.0)
    );
    assert_eq!(fresh.queue_depth, 0);
    let _p = l.try_acquire(Cost::tokens(1000)).await.unwrap();
    let q = l
        .reserve(Cost::tokens(100), &AcquireOptions::default())
        .await
        .unwrap();
    let st = l.status().await.unwrap();
    let t = st.dimension(Dimension::Tokens).unwrap();
    assert!(close(t.in_use, 1100.0, 2.0), "{t:?}");
    assert_eq!(t.available, 0.0);
    assert!(close(t.full_in.as_secs_f64(), 11.0, 0.2), "{t:?}");
    assert_eq!(st.queue_depth, 1);
    assert!(st.dimension(Dimension::InputTokens).is_none());
    l.cancel(q).await.unwrap();
}

/// Two keys on one store do not share limits.
pub async fn keys_are_independent(store: Store) {
    let a = limiter(&store, "a", Limits::new().requests(1).window_secs(60.0)).await;
    let b = limiter(&store, "b", Limits::new().requests(1).window_secs(60.0)).await;
    let _pa = a.try_acquire(Cost::request_only()).await.unwrap();
    let _pb = b.try_acquire(Cost::request_only()).await.unwrap();
    assert!(a.try_acquire(Cost::request_only()).await.is_err());
}

/// Cancelling a queued reservation refunds it and takes it out of the queue.
pub async fn cancel_gives_the_slot_back(store: Store) {
    let l = limiter(
        &store,
        "cancel",
        Limits::new().tokens(1000).window_secs(10.0),
    )
    .await;
    let _p = l.try_acquire(Cost::tokens(1000)).await.unwrap();
    let q = l
        .reserve(Cost::tokens(500), &AcquireOptions::default())
        .await
        .unwrap();
    assert!(q.waited() > Duration::from_secs(4));
    let s = l.cancel(q).await.unwrap();
    assert!(close(s.refunded[1], 500.0, 1.0), "{s:?}");
    let r = l
        .reserve(Cost::tokens(500), &AcquireOptions::default())
        .await
        .unwrap();
    assert!(
        close(r.waited().as_secs_f64(), 5.0, 0.2),
        "{:?}",
        r.waited()
    );
    l.cancel(r).await.unwrap();
}

/// `acquire` really waits until the slot before returning.
pub async fn acquire_waits_for_the_slot(store: Store) {
    let l = limiter(&store, "wait", Limits::new().requests(1).window_secs(0.2)).await;
    let _a = l.acquire(Cost::request_only()).await.unwrap();
    let start = std::time::Instant::now();
    let b = l.acquire(Cost::request_only()).await.unwrap();
    assert!(b.waited() > Duration::from_millis(150), "{:?}", b.waited());
    assert!(start.elapsed() >= b.waited(), "returned before its slot");
}

/// A permit tells the key's state right after its grant, without asking the
/// store: the same numbers `status` reads just after, less what drained since.
pub async fn status_at_grant_matches_status(store: Store) {
    let l = limiter(
        &store,
        "at-grant",
        Limits::new().requests(10).tokens(1000).window_secs(10.0),
    )
    .await;
    let opts = AcquireOptions::default();
    let _first = l.reserve(Cost::tokens(600), &opts).await.unwrap();
    let p = l.reserve(Cost::tokens(300), &opts).await.unwrap();
    let at_grant = l.status_at_grant(&p).expect("the store decided");
    let now = l.status().await.unwrap();
    assert_eq!(at_grant.len(), now.dimensions.len());
    for (g, s) in at_grant.iter().zip(&now.dimensions) {
        assert_eq!(
            (g.dimension, g.limit, g.capacity),
            (s.dimension, s.limit, s.capacity)
        );
        // Between the grant and the status read at most ~0.2 s drained:
        // 0.2 requests and 20 tokens at these rates.
        let drained = if g.dimension == Dimension::Tokens {
            20.0
        } else {
            0.2
        };
        assert!(
            g.in_use >= s.in_use - 1e-6 && g.in_use <= s.in_use + drained,
            "{:?}: at grant {} in use, status {}",
            g.dimension,
            g.in_use,
            s.in_use
        );
        assert!(close(g.available, g.capacity - g.in_use, 1e-6));
        assert!(g.full_in >= s.full_in, "{:?}", g.dimension);
    }
    let tokens = &at_grant[1];
    assert_eq!(tokens.dimension, Dimension::Tokens);
    assert!(close(tokens.in_use, 900.0, 1.0), "{}", tokens.in_use);
    assert!(
        close(tokens.full_in.as_secs_f64(), 9.0, 0.1),
        "{:?}",
        tokens.full_in
    );
    // A request that waits for its slot sees an empty bucket at its grant.
    let waiting = l.reserve(Cost::tokens(500), &opts).await.unwrap();
    assert!(waiting.waited() > Duration::ZERO);
    let at_grant = l.status_at_grant(&waiting).unwrap();
    assert!(at_grant[1].available < 1.0, "{:?}", at_grant[1]);
    assert!(
        close(at_grant[1].full_in.as_secs_f64(), 14.0, 0.1),
        "{:?}",
        at_grant[1]
    );
}

/// Settling with exactly the estimate charges and refunds nothing; a permit
/// that queued still leaves its queue.
pub async fn settling_the_exact_estimate_changes_nothing(store: Store) {
    let l = limiter(
        &store,
        "exact",
        Limits::new().requests(10).tokens(1000).window_secs(10.0),
    )
    .await;
    let opts = AcquireOptions::default();
    let now_ = l.reserve(Cost::tokens(800), &opts).await.unwrap();
    let queued = l.reserve(Cost::tokens(400), &opts).await.unwrap();
    assert!(queued.waited() > Duration::ZERO);
    let before = l.status().await.unwrap();
    assert_eq!(before.queue_depth, 1);
    let s = l.settle(now_, Cost::tokens(800)).await.unwrap();
    assert_eq!((s.charged, s.refunded), ([0.0; 4], [0.0; 4]));
    let after = l.status().await.unwrap();
    let tokens = |s: &tollgate::Status| s.dimension(Dimension::Tokens).unwrap().in_use;
    assert!(tokens(&after) <= tokens(&before) + 1e-6);
    assert!(tokens(&after) >= tokens(&before) - 20.0, "nothing refunded");
    assert_eq!(after.queue_depth, 1);
    let s = l.settle(queued, Cost::tokens(400)).await.unwrap();
    assert_eq!((s.charged, s.refunded), ([0.0; 4], [0.0; 4]));
    assert_eq!(
        l.status().await.unwrap().queue_depth,
        0,
        "the queued permit left its queue"
    );
}

/// A caller waiting behind an over-estimated call starts early once that call
/// settles below its estimate: the refund reaches the queue.
pub async fn refunds_ahead_let_a_waiting_caller_start_earlier(store: Store) {
    // 1000 tokens per 2 s: 500 tokens refill per second.
    let l = limiter(
        &store,
        "advance",
        Limits::new().tokens(1000).window_secs(2.0),
    )
    .await;
    let first = l.acquire(Cost::tokens(1000)).await.unwrap();
    let waiter = {
        let l = l.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let p = l.acquire(Cost::tokens(500)).await.unwrap();
            (p, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The first call used 100 of its 1000: the waiter (due at ~1 s) may go now.
    l.settle(first, Cost::tokens(100)).await.unwrap();
    let (p, took) = waiter.await.unwrap();
    assert!(
        took < Duration::from_millis(700),
        "waited {took:?} for a slot that was free after 100 ms"
    );
    assert!(
        took >= Duration::from_millis(90),
        "started before the refund: {took:?}"
    );
    assert!(l.stats().advanced >= 1);
    // And the bucket holds: 100 + 500 used, at most ~500 left (full at 1000).
    assert!(l.try_acquire(Cost::tokens(600)).await.is_err());
    l.settle(p, Cost::tokens(500)).await.unwrap();
}

/// A permit taken with `reserve` (a caller with its own scheduling, such as
/// the gateway's two buckets) waits through `wait_for_slot` and moves
/// earlier as `acquire` does when the call ahead settles below its estimate;
/// the permit stays reserved until it is settled.
pub async fn a_reserved_permit_waits_and_moves_earlier_on_refunds_ahead(store: Store) {
    // 1000 tokens per 2 s: 500 tokens refill per second.
    let l = limiter(
        &store,
        "reserve-advance",
        Limits::new().tokens(1000).window_secs(2.0),
    )
    .await;
    let first = l.acquire(Cost::tokens(1000)).await.unwrap();
    let opts = AcquireOptions::default();
    let mut waiting = l.reserve(Cost::tokens(500), &opts).await.unwrap();
    assert!(
        waiting.waited() > Duration::from_millis(800),
        "{:?}",
        waiting.waited()
    );
    let waiter = {
        let l = l.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            l.wait_for_slot(&mut waiting).await;
            (waiting, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The first call used 100 of its 1000: the waiter (due at ~1 s) may go now.
    l.settle(first, Cost::tokens(100)).await.unwrap();
    let (p, took) = waiter.await.unwrap();
    assert!(
        took < Duration::from_millis(700),
        "waited {took:?} for a slot that was free after 100 ms"
    );
    assert!(
        took >= Duration::from_millis(90),
        "started before the refund: {took:?}"
    );
    assert!(p.waited() >= Duration::from_millis(90) && p.waited() < Duration::from_millis(700));
    // Still reserved: 100 + 500 in use.
    assert!(l.try_acquire(Cost::tokens(600)).await.is_err());
    l.settle(p, Cost::tokens(500)).await.unwrap();
    // Without anything ahead settling, it waits for its slot.
    let full = l.acquire(Cost::tokens(1000)).await.unwrap();
    let mut late = l.reserve(Cost::tokens(250), &opts).await.unwrap();
    let start = std::time::Instant::now();
    l.wait_for_slot(&mut late).await;
    assert!(
        start.elapsed() >= Duration::from_millis(350),
        "{:?}",
        start.elapsed()
    );
    l.settle(full, Cost::tokens(1000)).await.unwrap();
    l.settle(late, Cost::tokens(250)).await.unwrap();
}

/// A waiter that gives up moves the one behind it up: A's slot at 1 s, B's at
/// 2 s; A's future is dropped at 0.2 s, and B starts at about 1 s.
pub async fn a_cancelled_waiter_lets_the_next_start_earlier(store: Store) {
    let l = limiter(
        &store,
        "cancel-moves-up",
        Limits::new().requests(1).window_secs(1.0),
    )
    .await;
    let first = l.acquire(Cost::request_only()).await.unwrap();
    let started = std::time::Instant::now();
    let a = {
        let l = l.clone();
        tokio::spawn(async move { l.acquire(Cost::request_only()).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let b = {
        let l = l.clone();
        tokio::spawn(async move {
            let p = l.acquire(Cost::request_only()).await.unwrap();
            (started.elapsed(), p)
        })
    };
    tokio::time::sleep(Duration::from_millis(170)).await;
    a.abort();
    let (b_started, b_permit) = b.await.unwrap();
    assert!(
        close(b_started.as_secs_f64(), 1.0, 0.15),
        "B started at {b_started:?}, A's slot was 1.0 s"
    );
    l.cancel(b_permit).await.unwrap();
    l.cancel(first).await.unwrap();
}

/// A started call that gives back more than the next waiter's headroom (it
/// is cancelled, or settles far below its estimate) moves the queue up as far
/// as the freed capacity allows, not only by that headroom: 1000 tokens per
/// 2 s; X (900) starts at once, W (800) is due at 1.4 s and V (400) at 2.2 s.
/// When X gives back at 0.1 s, W may start at once and V when 400 tokens are
/// free again behind W (0.5 s after a cancellation, 0.6 s after X used 100);
/// W's headroom alone (0.4 s) moved them to 1.0 and 1.8 s.
pub async fn a_started_call_that_gives_back_much_moves_the_queue_fully_up(store: Store) {
    for (used, v_due) in [(None, 0.5), (Some(100), 0.6)] {
        let l = limiter(
            &store,
            "started-gives-back",
            Limits::new().tokens(1000).window_secs(2.0),
        )
        .await;
        let t0 = std::time::Instant::now();
        let x = l.acquire(Cost::tokens(900)).await.unwrap();
        let waiter = |tokens| {
            let l = l.clone();
            tokio::spawn(async move {
                let p = l.acquire(Cost::tokens(tokens)).await.unwrap();
                (t0.elapsed().as_secs_f64(), p)
            })
        };
        let w = waiter(800);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let v = waiter(400);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(l.status().await.unwrap().queue_depth, 2);
        match used {
            None => l.cancel(x).await.unwrap(),
            Some(t) => l.settle(x, Cost::tokens(t)).await.unwrap(),
        };
        let (w_at, w_permit) = w.await.unwrap();
        let (v_at, v_permit) = v.await.unwrap();
        assert!(
            w_at < 0.45,
            "W started at {w_at:.2} s, not at once when X ({used:?} used) gave back at 0.1 s"
        );
        // Never before the bucket has room (that would overdraw it).
        assert!(
            v_at >= v_due - 0.06 && v_at < v_due + 0.3,
            "V started at {v_at:.2} s, not at ~{v_due} s when X ({used:?} used) gave back at 0.1 s"
        );
        // The bucket holds what W and V use: 250 more do not fit yet.
        assert!(l.try_acquire(Cost::tokens(250)).await.is_err());
        l.settle(w_permit, Cost::tokens(800)).await.unwrap();
        l.settle(v_permit, Cost::tokens(400)).await.unwrap();
    }
}

/// Five waiters whose futures are all dropped give every slot back: the next
/// caller waits only for what the bucket itself holds.
pub async fn dropped_waiters_give_their_slots_back(store: Store) {
    let l = limiter(
        &store,
        "all-give-up",
        Limits::new().requests(2).window_secs(2.0),
    )
    .await;
    let _a = l.acquire(Cost::request_only()).await.unwrap();
    let _b = l.acquire(Cost::request_only()).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let l = l.clone();
        waiters.push(tokio::spawn(async move {
            l.acquire(Cost::request_only()).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(l.status().await.unwrap().queue_depth, 5);
    for w in &waiters {
        w.abort();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while l.status().await.unwrap().queue_depth > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = std::time::Instant::now();
    let p = l.acquire(Cost::request_only()).await.unwrap();
    // The two taken at 0 s: one request is free again at 1 s.
    assert!(
        t.elapsed() < Duration::from_millis(1_000),
        "the next caller waited {:?}",
        t.elapsed()
    );
    l.cancel(p).await.unwrap();
}

/// A permit written as a token settles once, from any limiter of its key
/// on the same store; a second time, or on another key, it is refused.
pub async fn a_permit_token_settles_once(store: Store) {
    let name = unique("token");
    let limits = Limits::new().tokens(10_000);
    let a = RateLimiter::with_store(&store, &name, limits.clone()).unwrap();
    let b = RateLimiter::with_store(&store, &name, limits.clone()).unwrap();
    let token = a.acquire(Cost::tokens(1_000)).await.unwrap().into_token();
    let done = b.settle_token(&token, Cost::tokens(400)).await.unwrap();
    assert_eq!(done.refunded[Dimension::Tokens.index()], 600.0);
    for again in [
        a.settle_token(&token, Cost::tokens(100)).await,
        b.cancel_token(&token).await,
    ] {
        assert!(
            matches!(
                again,
                Err(Error::Token(tollgate::TokenError::AlreadySettled { .. }))
            ),
            "{again:?}"
        );
    }
    let other = limiter(&store, "token-other", limits).await;
    let token = a.acquire(Cost::tokens(1_000)).await.unwrap().into_token();
    assert!(matches!(
        other.settle_token(&token, Cost::tokens(1)).await,
        Err(Error::Token(tollgate::TokenError::OtherKey { .. }))
    ));
    assert!(matches!(
        a.settle_token("tg1:nonsense", Cost::tokens(1)).await,
        Err(Error::Token(tollgate::TokenError::Malformed(_)))
    ));
    // Refused tokens were not used up.
    a.cancel_token(&token).await.unwrap();
    let s = a.status().await.unwrap();
    assert!(
        s.dimension(Dimension::Tokens).unwrap().in_use < 500.0,
        "{s:?}"
    );
}

/// A permit given to the limiter of another key is refused and handed back,
/// unsettled, so it can still be settled where it was taken.
pub async fn a_permit_of_another_key_is_handed_back(store: Store) {
    let a = limiter(&store, "own-a", Limits::new().tokens(10_000)).await;
    let b = limiter(&store, "own-b", Limits::new().tokens(10_000)).await;
    let permit = a.acquire(Cost::tokens(1_000)).await.unwrap();
    let permit = match b.settle(permit, Cost::tokens(100)).await {
        Err(Error::ForeignPermit { permit, .. }) => *permit,
        other => panic!("{other:?}"),
    };
    assert!(
        b.status()
            .await
            .unwrap()
            .dimension(Dimension::Tokens)
            .unwrap()
            .in_use
            < 1.0
    );
    let done = a.settle(permit, Cost::tokens(100)).await.unwrap();
    assert_eq!(done.refunded[Dimension::Tokens.index()], 900.0);
}

/// With a safety margin every class sees the bucket full that much earlier:
/// of a burst of 5 on 5 per second, the fifth waits the margin, and the
/// sixth its emission interval plus the margin.
pub async fn a_margin_sees_the_bucket_full_earlier(store: Store) {
    let l = RateLimiter::builder(&unique("margin"))
        .store(store)
        .limits(Limits::new().requests(5).window_secs(1.0))
        .margin(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let mut permits = Vec::new();
    for _ in 0..6 {
        permits.push(
            l.reserve(Cost::request_only(), &Default::default())
                .await
                .unwrap(),
        );
    }
    let waits: Vec<f64> = permits.iter().map(|p| p.waited().as_secs_f64()).collect();
    assert!(waits[..4].iter().all(|&w| w == 0.0), "{waits:?}");
    // Each slot as the bucket places it, at the store time each reservation
    // was made (slot − wait: on a loaded machine they are made apart): one
    // request every 0.2 s, seen full 50 ms early (tau 1 s − the margin).
    // Made at once, the fifth waits 0.05 s and the sixth 0.25 s.
    let mut tat = f64::NEG_INFINITY;
    for (i, p) in permits.iter().enumerate() {
        let made = p.slot() - p.waited().as_secs_f64();
        tat = tat.max(made) + 0.2;
        let want = made.max(tat - 0.95);
        assert!(close(p.slot(), want, 0.002), "permit {i}: {waits:?}");
    }
    let too_wide = RateLimiter::builder(&unique("margin-wide"))
        .limits(Limits::new().requests(5).window_secs(1.0))
        .margin(Duration::from_secs(1))
        .build()
        .await;
    assert!(
        matches!(
            too_wide,
            Err(Error::Config {
                field: "margin",
                ..
            })
        ),
        "{too_wide:?}"
    );
    for p in permits {
        l.cancel(p).await.unwrap();
    }
}
