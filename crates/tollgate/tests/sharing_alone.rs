//! One class alone on a key whose bucket is shared by floor and weight
//! (`Builder::class_shares`): it must use nearly all of the bucket, not
//! only its own lane, also when every call is settled a little below its
//! estimate (the gateway's prompt estimate against the provider's count).
//!
//! The load is the fairness harness's free-tier flood, run through the real
//! limiter on the memory store on paused tokio time: closed-loop callers of
//! a low-priority class with a small lane and a short maximum wait, each
//! call reserved, waited for as the gateway does (`reserve`, then
//! `wait_for_slot`), run, and settled at 251 of its 258 estimated tokens; a
//! refused caller pauses before it asks again.

mod support;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use support::TokioClock;
use tollgate::store::{Clock, MemoryStore};
use tollgate::{
    AcquireOptions, ClassShare, Cost, Error, Limits, PriorityClass, RateLimiter, Store,
};

const TPM: u64 = 600_000;
/// Seconds the callers run, and the window measured (after the first
/// burst has drained).
const DURATION: f64 = 40.0;
const FROM: f64 = 10.0;

/// Tokens started by the lone class in `[FROM, DURATION)`, as a part of
/// what the bucket's rate allows over that window.
async fn lone_class_use(estimate: (u64, u64), used: (u64, u64)) -> f64 {
    let origin = tokio::time::Instant::now();
    let clock = Arc::new(TokioClock(origin));
    let store = Store::Memory(MemoryStore::with_clock(clock.clone()));
    // The harness's tiers: enterprise, free and professional, with the
    // gateway's default headrooms for their priorities (0, 3 and 1).
    let class = |headroom| PriorityClass {
        headroom,
        max_wait: None,
    };
    let limiter = RateLimiter::builder("model")
        .limits(Limits::new().tpm(TPM).rpm(6_000).burst(0.05))
        .priority_classes(vec![class(1.0), class(0.4), class(0.8)])
        .class_shares(vec![
            ClassShare::new(0.3, 3.0),
            ClassShare::new(0.05, 1.0),
            ClassShare::new(0.3, 2.0),
        ])
        .store(store)
        .build()
        .await
        .unwrap();
    let started = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let now = move || clock.now() - 1000.0;
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let (limiter, started, now) = (limiter.clone(), started.clone(), now.clone());
        tasks.push(tokio::spawn(async move {
            let options = AcquireOptions::class(1).max_wait(Duration::from_secs(2));
            while now() < DURATION {
                let cost = Cost::split(estimate.0, estimate.1);
                let mut permit = match limiter.reserve(cost, &options).await {
                    Ok(p) => p,
                    Err(Error::RateLimited { .. }) => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                };
                limiter.wait_for_slot(&mut permit).await;
                started.lock().push((now(), used.0 + used.1));
                tokio::time::sleep(Duration::from_millis(50)).await;
                limiter
                    .settle(permit, Cost::split(used.0, used.1))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let tokens: u64 = started
        .lock()
        .iter()
        .filter(|(t, _)| (FROM..DURATION).contains(t))
        .map(|(_, n)| n)
        .sum();
    tokens as f64 / (TPM as f64 / 60.0 * (DURATION - FROM))
}

fn run(estimate: (u64, u64), used: (u64, u64)) -> f64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(lone_class_use(estimate, used))
}

/// Property 4 with refunds: a class alone, borrowing nine tenths of the
/// bucket from idle lanes, uses at least 97% of its rate whether its calls
/// use their estimate or a little less.
#[test]
fn a_lone_class_uses_the_whole_bucket_with_calls_settled_below_their_estimate() {
    let exact = run((8, 250), (8, 250));
    let below = run((8, 250), (1, 250));
    assert!(
        exact >= 0.97,
        "settled at the estimate: {:.1}%",
        exact * 100.0
    );
    assert!(
        below >= 0.97,
        "settled 7 tokens below it: {:.1}%",
        below * 100.0
    );
}
