//! Redis restarts empty (no persistence) while callers keep a provider's
//! bucket saturated. The provider stand-in's bucket is as drained after the
//! restart as before it; callers that acquire before each call must still
//! get no 429 from it, because the store starts its buckets drained. With
//! `AfterReset::Full` (the store trusted to be full, as before the epoch) the
//! same run does get 429s: the run can tell the two apart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tollgate::store::{AfterReset, RedisOptions};
use tollgate::{Cost, Limits, OutagePolicy, RateLimiter, RetryConfig};
use tollgate_harness::client::StandinClient;
use tollgate_harness::now_unix;
use tollgate_harness::procs::{RedisServer, RedisSpec};
use tollgate_harness::standin::{Standin, StandinConfig};

/// The provider's limits: 40 requests and 40 000 tokens per 2 s window.
const REQUESTS: u64 = 40;
const TOKENS: u64 = 40_000;
const WINDOW: f64 = 2.0;
/// Tokens per call: the requests bind (20 a second).
const CALL_TOKENS: u64 = 500;
const TASKS: usize = 4;
/// Seconds of load before the restart (the bucket is drained by then) and after.
const BEFORE: f64 = 3.0;
const AFTER: f64 = 3.5;

#[derive(Debug)]
struct Run {
    rejected_after_restart: u64,
    calls_after_restart: u64,
    rejected_before: u64,
    store_resets: u64,
}

fn run(after_reset: AfterReset) -> Run {
    let standin = Standin::start(
        StandinConfig {
            requests: REQUESTS,
            tokens: TOKENS,
            window_secs: WINDOW,
            tolerance: 0.005,
            latency_ms: (5, 20),
        },
        0,
    )
    .expect("starting the stand-in");
    let mut redis = RedisServer::start(RedisSpec::default()).expect("starting redis-server");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limiter = rt.block_on(async {
        RateLimiter::builder("provider")
            .url(&redis.url())
            .limits(
                Limits::new()
                    .requests(REQUESTS)
                    .tokens(TOKENS)
                    .window_secs(WINDOW),
            )
            .outage(OutagePolicy::Closed)
            .retry(RetryConfig {
                max_retries: 2,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(40),
                ..RetryConfig::default()
            })
            .redis_options(
                RedisOptions::default()
                    .connect_timeout(Duration::from_millis(300))
                    .response_timeout(Duration::from_millis(300))
                    .after_reset(after_reset),
            )
            .build()
            .await
            .expect("connecting the limiter")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (limiter, stop, addr) = (limiter.clone(), stop.clone(), standin.addr());
            rt.spawn(async move {
                let mut client = StandinClient::new(addr, &format!("task{t}"));
                while !stop.load(Ordering::Relaxed) {
                    let asked = now_unix();
                    match limiter.acquire(Cost::tokens(CALL_TOKENS)).await {
                        Ok(permit) => {
                            let _ = client.call(CALL_TOKENS, asked).await;
                            let _ = limiter.settle(permit, Cost::tokens(CALL_TOKENS)).await;
                        }
                        // Redis is down: the closed policy refused; try again soon.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(BEFORE));
    let (_, rejected_before, _) = standin.counts();
    let restarted_at = now_unix();
    redis.restart().expect("restarting redis-server");
    std::thread::sleep(Duration::from_secs_f64(AFTER));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    });
    let after: Vec<_> = standin
        .records()
        .into_iter()
        .filter(|r| r.arrival > restarted_at)
        .collect();
    let run = Run {
        rejected_after_restart: after.iter().filter(|r| !r.admitted).count() as u64,
        calls_after_restart: after.len() as u64,
        rejected_before,
        store_resets: limiter.stats().store_resets,
    };
    standin.stop();
    run
}

#[test]
fn no_429_across_a_redis_restart_with_drained_buckets() {
    let r = run(AfterReset::Drained);
    eprintln!("drained: {r:?}");
    assert_eq!(r.rejected_before, 0, "429s before the restart");
    assert_eq!(r.store_resets, 1, "the reset must be seen, once");
    // 3.5 s at 20 requests a second, less the time Redis was down.
    assert!(
        r.calls_after_restart >= 50,
        "too few calls after the restart: {}",
        r.calls_after_restart
    );
    assert_eq!(
        r.rejected_after_restart, 0,
        "the provider answered 429 to {} of {} calls after the restart",
        r.rejected_after_restart, r.calls_after_restart
    );
}

#[test]
fn a_store_trusted_full_after_the_restart_overflows_the_provider() {
    let r = run(AfterReset::Full);
    eprintln!("full: {r:?}");
    assert_eq!(r.rejected_before, 0, "429s before the restart");
    assert_eq!(r.store_resets, 1);
    assert!(
        r.rejected_after_restart > 10,
        "an empty store trusted to be full lets a burst through: {} 429s of {} calls",
        r.rejected_after_restart,
        r.calls_after_restart
    );
}
