//! Every reservation has an owner, or goes away: callers that give up (a
//! paused Redis, a dropped future, a runtime shut down) leave nothing in Redis
//! that blocks the others, against real `redis-server` processes.

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::store::RedisOptions;
use tollgate::{Cost, Dimension, Error, Limits, OutagePolicy, RateLimiter, RetryConfig, Status};

use support::RedisServer;

/// A million tokens per ten hours: 27.8 tokens drain per second, so what a
/// key holds after a few seconds tells how many reservations it kept.
fn slow_bucket() -> Limits {
    Limits::new().tokens(1_000_000).window_secs(36_000.0)
}

const DRAIN_PER_SEC: f64 = 1_000_000.0 / 36_000.0;

async fn limiter(server: &RedisServer, key: &str, limits: Limits) -> RateLimiter {
    RateLimiter::builder(key)
        .url(&server.url())
        .limits(limits)
        .outage(OutagePolicy::Closed)
        .retry(RetryConfig {
            max_retries: 1,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
            ..RetryConfig::default()
        })
        .redis_options(
            RedisOptions::default()
                .connect_timeout(Duration::from_millis(150))
                .response_timeout(Duration::from_millis(150)),
        )
        .build()
        .await
        .unwrap()
}

/// The key's status once Redis answers again.
async fn status(limiter: &RateLimiter) -> Status {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match limiter.status().await {
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("redis did not come back: {e}"),
        }
    }
}

fn tokens_in_use(s: &Status) -> f64 {
    s.dimension(Dimension::Tokens).unwrap().in_use
}

/// Waits until the key holds about `expected` tokens (clean-ups run in the
/// background) and returns what it holds then.
async fn settles_at(limiter: &RateLimiter, expected: f64, started: Instant) -> (f64, u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = status(limiter).await;
        let drained = started.elapsed().as_secs_f64() * DRAIN_PER_SEC;
        let held = tokens_in_use(&s) + drained;
        if ((held - expected).abs() < 300.0 && s.queue_depth == 0) || Instant::now() > deadline {
            return (held, s.queue_depth);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Four tasks take 15 permits each of 1,000 tokens while Redis is paused
/// once; callers refused meanwhile retry. Afterwards the key holds exactly the
/// 60 permits handed out: no reservation written by a call that timed out.
async fn pause_leaves_only_the_permits(pause: Duration, warm: bool) {
    let server = RedisServer::start();
    let limiter = limiter(&server, "owned/pause", slow_bucket()).await;
    let started = Instant::now();
    if warm {
        let p = limiter.acquire(Cost::tokens(1_000)).await.unwrap();
        limiter.cancel(p).await.unwrap();
    }
    let granted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (limiter, granted, refused) = (limiter.clone(), granted.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = 0;
            while mine < 15 {
                match limiter.acquire(Cost::tokens(1_000)).await {
                    Ok(_held) => {
                        mine += 1;
                        granted.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(40)).await;
                    }
                    Err(Error::StoreUnavailable { .. }) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.pause();
    tokio::time::sleep(pause).await;
    server.resume();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(granted.load(Ordering::Relaxed), 60);
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the pause refused nobody"
    );
    let (held, queued) = settles_at(&limiter, 60_000.0, started).await;
    assert!(
        (held - 60_000.0).abs() < 300.0,
        "after a {pause:?} pause the key holds {held:.0} tokens for 60 permits of 1,000"
    );
    assert_eq!(queued, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_pause_leaves_only_the_permits() {
    pause_leaves_only_the_permits(Duration::from_secs(1), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_second_pause_leaves_only_the_permits() {
    pause_leaves_only_the_permits(Duration::from_secs(3), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eight_second_pause_before_any_reply_leaves_only_the_permits() {
    pause_leaves_only_the_permits(Duration::from_secs(8), false).await;
}

/// Two requests per 2 s, three callers refused during a 3 s pause: after it
/// the key is as the callers left it, and the next caller starts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_callers_leave_nothing_behind() {
    let server = RedisServer::start();
    let limits = Limits::new().requests(2).window_secs(2.0);
    let limiter = limiter(&server, "owned/refused", limits).await;
    server.pause();
    let mut callers = Vec::new();
    for _ in 0..3 {
        let limiter = limiter.clone();
        callers.push(tokio::spawn(async move {
            limiter.acquire(Cost::request_only()).await
        }));
    }
    for c in callers {
        let result = c.await.unwrap();
        assert!(
            matches!(result, Err(Error::StoreUnavailable { .. })),
            "{result:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.resume();
    let s = status(&limiter).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s2 = status(&limiter).await;
    let in_use = s2.dimension(Dimension::Requests).unwrap().in_use;
    assert!(
        in_use < 0.01 && s2.queue_depth == 0,
        "after the pause: {in_use:.2} of 2 in use, {} queued (first look {:?})",
        s2.queue_depth,
        s.dimension(Dimension::Requests)
    );
    let t = Instant::now();
    let p = limiter.acquire(Cost::request_only()).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "waited {:?}",
        t.elapsed()
    );
    limiter.cancel(p).await.unwrap();
}

/// Acquires dropped while their reserve call is on its way (polled once, so
/// the call is sent, then dropped; or given 20–500 µs): the key holds only
/// what the completed ones were granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquires_dropped_in_flight_leave_nothing() {
    let server = RedisServer::start();
    let limiter = limiter(&server, "owned/dropped", slow_bucket()).await;
    let started = Instant::now();
    let mut kept = Vec::new();
    let mut dropped = 0;
    for i in 0..400u64 {
        let mut acquire = Box::pin(limiter.acquire(Cost::tokens(1_000)));
        if i % 3 == 0 {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(permit) = acquire.as_mut().poll(&mut cx) {
                kept.push(permit.unwrap());
            } else {
                dropped += 1;
            }
            continue;
        }
        let limit = Duration::from_micros(20 + (i * 37) % 480);
        match tokio::time::timeout(limit, acquire).await {
            Ok(permit) => kept.push(permit.unwrap()),
            Err(_) => dropped += 1,
        }
    }
    assert!(
        dropped > 100,
        "{dropped} acquires dropped: the test shows little"
    );
    let expected = 1_000.0 * kept.len() as f64;
    let (held, queued) = settles_at(&limiter, expected, started).await;
    assert!(
        (held - expected).abs() < 300.0,
        "{dropped} dropped, {} kept: the key holds {held:.0} tokens, {expected:.0} expected",
        kept.len()
    );
    assert_eq!(queued, 0);
}

/// A caller that started and one queued behind it go away together (their
/// acquires dropped at once, after the first one's slot): the background
/// cancels them both in one call and the key holds nothing of either. Sent
/// in the other order (the queued one first), the one that started would
/// give back nothing: its refund is bounded by the refunds made on the key
/// since it was taken (see `tollgate_core::settle`), and 600 of its 1,000
/// tokens would stay in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_and_a_queued_caller_dropped_together_leave_nothing() {
    let server = RedisServer::start();
    let limits = Limits::new().tokens(1_000).window_secs(1.0);
    let limiter = limiter(&server, "owned/together", limits).await;
    let started = Instant::now();
    // The whole bucket: the next two wait 1 s and 2 s for their slots.
    let _held = limiter.acquire(Cost::tokens(1_000)).await.unwrap();
    let mut first = Box::pin(limiter.acquire(Cost::tokens(1_000)));
    let mut second = Box::pin(limiter.acquire(Cost::tokens(1_000)));
    for waiter in [first.as_mut(), second.as_mut()] {
        let waited = tokio::time::timeout(Duration::from_millis(100), waiter).await;
        assert!(waited.is_err(), "a caller did not wait for its slot");
    }
    assert_eq!(status(&limiter).await.queue_depth, 2);
    // The first one's slot passes while nobody polls it; both go.
    tokio::time::sleep_until((started + Duration::from_millis(1_400)).into()).await;
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = status(&limiter).await;
    assert!(
        tokens_in_use(&s) < 50.0 && s.queue_depth == 0,
        "{:.0} of 1,000 tokens in use, {} queued after both went ({:.2} s)",
        tokens_in_use(&s),
        s.queue_depth,
        started.elapsed().as_secs_f64()
    );
}

/// The key full, Redis stalled 300 ms, three acquires dropped after 50 ms:
/// they leave no queue, and the next caller waits only for the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquires_dropped_during_a_stall_leave_no_queue() {
    let server = RedisServer::start();
    let limits = Limits::new().requests(2).window_secs(2.0);
    let limiter = limiter(&server, "owned/stall", limits).await;
    let _a = limiter.acquire(Cost::request_only()).await.unwrap();
    let _b = limiter.acquire(Cost::request_only()).await.unwrap();
    server.pause();
    for _ in 0..3 {
        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            limiter.acquire(Cost::request_only()),
        )
        .await;
        assert!(gave_up.is_err());
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.resume();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = status(&limiter).await;
    assert_eq!(s.queue_depth, 0, "{s:?}");
    let t = Instant::now();
    let p = limiter.acquire(Cost::request_only()).await.unwrap();
    // Both requests were taken about 0.35 s ago: one is free in ~0.65 s.
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "waited {:?}",
        t.elapsed()
    );
    limiter.cancel(p).await.unwrap();
}

/// Waiters of a runtime that is dropped or shut down are cancelled anyway:
/// a caller in a new runtime finds no queue.
fn runtime_shutdown_cancels_its_waiters(how: &str) {
    let server = RedisServer::start();
    let limits = Limits::new().requests(2).window_secs(2.0);
    let key = format!("owned/shutdown-{how}");
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let limiter = limiter(&server, &key, limits.clone()).await;
        let _a = limiter.acquire(Cost::request_only()).await.unwrap();
        let _b = limiter.acquire(Cost::request_only()).await.unwrap();
        for _ in 0..5 {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(Cost::request_only()).await });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(limiter.status().await.unwrap().queue_depth, 5);
    });
    match how {
        "drop" => drop(first),
        "timeout" => first.shutdown_timeout(Duration::ZERO),
        _ => first.shutdown_background(),
    }
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let limiter = limiter(&server, &key, limits).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while limiter.status().await.unwrap().queue_depth > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = Instant::now();
        let p = limiter.acquire(Cost::request_only()).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(1_200),
            "{how}: the next caller waited {:?}",
            t.elapsed()
        );
        limiter.cancel(p).await.unwrap();
    });
}

#[test]
fn a_dropped_runtime_cancels_its_waiters() {
    runtime_shutdown_cancels_its_waiters("drop");
}

#[test]
fn a_runtime_shut_down_with_a_timeout_cancels_its_waiters() {
    runtime_shutdown_cancels_its_waiters("timeout");
}

#[test]
fn a_runtime_shut_down_in_the_background_cancels_its_waiters() {
    runtime_shutdown_cancels_its_waiters("background");
}

/// The waiting process of `a_killed_waiting_process_lets_the_others_move_up`:
/// run by that test as a child (this test binary, this test alone, with
/// `TOLLGATE_CHILD_WAITER=<redis url>`); otherwise it does nothing.
#[test]
fn child_waiter() {
    let Ok(url) = std::env::var("TOLLGATE_CHILD_WAITER") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter = RateLimiter::builder("owned/killed")
            .url(&url)
            .limits(Limits::new().requests(1).window_secs(1.0))
            .lease(Some(Duration::from_millis(500)))
            .build()
            .await
            .unwrap();
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let limiter = limiter.clone();
            waiters.push(tokio::spawn(async move {
                limiter.acquire(Cost::request_only()).await
            }));
        }
        // Killed while they wait.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

/// A process whose three callers wait 1–3 s (with leases of 500 ms) is
/// killed with SIGKILL; a caller of another process queued behind them
/// starts within the lease and a poll of the kill, not at its slot 4 s away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_waiting_process_lets_the_others_move_up() {
    let server = RedisServer::start();
    let limiter = RateLimiter::builder("owned/killed")
        .url(&server.url())
        .limits(Limits::new().requests(1).window_secs(1.0))
        .build()
        .await
        .unwrap();
    let first = limiter.acquire(Cost::request_only()).await.unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_waiter", "--exact", "--nocapture"])
        .env("TOLLGATE_CHILD_WAITER", server.url())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&limiter).await.queue_depth < 3 {
        assert!(Instant::now() < deadline, "the child never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let behind = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let p = limiter.acquire(Cost::request_only()).await.unwrap();
            (Instant::now(), p)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let (started, p) = behind.await.unwrap();
    let after = started.duration_since(killed);
    assert!(
        after < Duration::from_millis(1_500),
        "the caller behind the killed process started {after:?} after the kill"
    );
    limiter.cancel(p).await.unwrap();
    drop(first);
}

/// A waiter whose process stalls past its lease loses its place: a waiter of
/// another process cancels it and moves up into its slot; once running again,
/// the stalled one finds its reservation gone and queues anew, behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_waiter_loses_its_place_and_queues_again() {
    let server = RedisServer::start();
    let limits = Limits::new().requests(1).window_secs(2.0);
    let main = RateLimiter::builder("owned/stalled")
        .url(&server.url())
        .limits(limits.clone())
        .build()
        .await
        .unwrap();
    let t0 = Instant::now();
    let first = main.acquire(Cost::request_only()).await.unwrap();
    let url = server.url();
    // The other process: a runtime of its own on a thread of its own, which
    // blocks that thread for 1.5 s while its caller waits for a slot 2 s away.
    let stalled = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let l = RateLimiter::builder("owned/stalled")
                .url(&url)
                .limits(limits)
                .lease(Some(Duration::from_millis(500)))
                .build()
                .await
                .unwrap();
            let waiter = {
                let l = l.clone();
                tokio::spawn(async move { l.acquire(Cost::request_only()).await })
            };
            tokio::time::sleep(Duration::from_millis(150)).await;
            std::thread::sleep(Duration::from_millis(1_500));
            let p = waiter.await.unwrap().unwrap();
            let started = Instant::now();
            l.cancel(p).await.unwrap();
            (started, l.stats().leases_lost)
        })
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&main).await.queue_depth < 1 {
        assert!(Instant::now() < deadline, "the other process never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let p = main.acquire(Cost::request_only()).await.unwrap();
    let behind_started = Instant::now();
    let (stalled_started, lost) = tokio::task::spawn_blocking(move || stalled.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        lost, 1,
        "the stalled waiter did not notice it lost its place"
    );
    let behind = behind_started.duration_since(t0).as_secs_f64();
    let again = stalled_started.duration_since(t0).as_secs_f64();
    assert!(
        behind < 2.5,
        "the waiter behind started at {behind:.2} s, the stalled one's slot was 2 s"
    );
    assert!(
        again > behind + 1.5,
        "the stalled waiter started at {again:.2} s, before the one that took its place ({behind:.2} s)"
    );
    main.cancel(p).await.unwrap();
    drop(first);
}
