//! Load check of the Redis store (ignored by default; run in release):
//!
//! ```text
//! cargo test -p tollgate --release --test redis_load -- --ignored --nocapture
//! ```
//!
//! 64 tasks acquire without pause on one key for a few seconds, against a
//! `redis-server` on this machine; prints acquires per second and latency
//! percentiles. Target (2 cores shared with Redis): >= 50,000/s, p99 < 2 ms.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::{Cost, Limits, RateLimiter, Store};

use support::RedisServer;

const TASKS: usize = 64;

async fn run(limiter: &RateLimiter, secs: f64, settle: bool) -> (f64, Vec<Duration>) {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let l = limiter.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(200_000);
                while Instant::now() < stop {
                    let t = Instant::now();
                    let p = l.acquire(Cost::tokens(10)).await.expect("acquire");
                    if settle {
                        l.settle(p, Cost::tokens(7)).await.expect("settle");
                    } else {
                        drop(p);
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load check: run in release with --ignored"]
async fn acquires_per_second_at_concurrency_64() {
    let server = RedisServer::start();
    let store = Store::redis(&server.url()).await.unwrap();
    let limiter = RateLimiter::with_store(
        &store,
        "load/gpt-4o",
        Limits::new().rpm(1_000_000_000).tpm(1_000_000_000_000),
    )
    .unwrap();
    let limiter = Arc::new(limiter);
    run(&limiter, 0.5, false).await; // warm up
    for (name, settle) in [("acquire", false), ("acquire+settle", true)] {
        server.cli(&["CONFIG", "RESETSTAT"]);
        let started = Instant::now();
        let (rate, lat) = run(&limiter, 3.0, settle).await;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name:>15}: {rate:>8.0}/s  p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 0.999),
            lat[lat.len() - 1]
        );
        // What Redis itself did meanwhile: script calls per acquire, its
        // time per acquire, and how busy that kept its one thread.
        let stats = server.cli(&["INFO", "commandstats"]);
        let (calls, usec) = evalsha(&stats);
        let acquires = rate * secs;
        println!(
            "{name:>15}: redis {calls} EVALSHA, {:.3} calls and {:.2} us of Redis time per acquire, its thread {:.0}% busy",
            calls as f64 / acquires,
            usec as f64 / acquires,
            usec as f64 / 1e6 / secs * 100.0
        );
    }
}

/// `calls` and `usec` of `EVALSHA` in an `INFO commandstats` reply.
fn evalsha(stats: &str) -> (u64, u64) {
    let Some(line) = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:")) else {
        return (0, 0);
    };
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("calls="), field("usec="))
}

/// Median and p99 of one queued reservation, measured on a key whose class
/// queue holds `depth` reservations (all waiting, none drained).
async fn queued_latency(store: &Store, key: &str, depth: usize) -> (Duration, Duration) {
    use tollgate::AcquireOptions;
    // 1 request per second, a window of a day: every reservation queues.
    let limiter = RateLimiter::with_store(
        store,
        key,
        Limits::new()
            .requests(86_400)
            .window_secs(86_400.0)
            .burst(0.001),
    )
    .unwrap();
    let limiter = Arc::new(limiter);
    let opts = AcquireOptions::default();
    let fill: Vec<_> = (0..64)
        .map(|t| {
            let l = limiter.clone();
            let opts = opts.clone();
            tokio::spawn(async move {
                for _ in (t..depth).step_by(64) {
                    let _ = l.reserve(Cost::request_only(), &opts).await.unwrap();
                }
            })
        })
        .collect();
    for f in fill {
        f.await.unwrap();
    }
    let mut lat = Vec::new();
    for _ in 0..2_000 {
        let t = Instant::now();
        let _ = limiter.reserve(Cost::request_only(), &opts).await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    (pct(&lat, 0.5), pct(&lat, 0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load check: run in release with --ignored"]
async fn latency_does_not_grow_with_the_queue() {
    let server = RedisServer::start();
    let store = Store::redis(&server.url()).await.unwrap();
    let (p50_empty, p99_empty) = queued_latency(&store, "deep/empty", 0).await;
    let (p50_deep, p99_deep) = queued_latency(&store, "deep/50k", 50_000).await;
    println!("queued reserve, empty queue: p50 {p50_empty:?} p99 {p99_empty:?}");
    println!("queued reserve, 50k queued:  p50 {p50_deep:?} p99 {p99_deep:?}");
    let depth = server.cli(&["ZCARD", "tollgate:{deep/50k}:q0"]);
    println!("queue length {}", depth.trim());
    assert!(p50_deep < p50_empty * 2, "latency grows with the queue");
}
