//! The cost of one limiting decision on the in-memory store.
//!
//! Run: `cargo bench -p tollgate --bench memory_store`. Results are recorded in
//! `docs/BENCHMARKS.md`.

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tollgate::store::{ManualClock, MemoryStore};
use tollgate::{ClassShare, Cost, Limits, PriorityClass, RateLimiter};

mod common;
use common::call;

fn decisions(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_store");
    g.throughput(Throughput::Elements(1));

    // Admitted at once: a limit too high to ever queue at this rate.
    let store = MemoryStore::new();
    let roomy = Limits::new()
        .requests(u64::MAX / 4)
        .tokens(u64::MAX / 4)
        .validate()
        .unwrap();
    g.bench_function("reserve_admitted", |b| {
        let call = call("openai/gpt-4o", &roomy, Cost::tokens(1000), Some(0.0));
        b.iter(|| black_box(store.reserve_now(black_box(&call))).is_ok())
    });

    // The settlement of a reservation granted at once (the other half of a
    // decision's life), below its estimate: the reservation is made in the
    // setup, outside the measurement.
    let used = roomy.units(Cost::tokens(700));
    g.bench_function("settle_granted", |b| {
        let call = call("openai/gpt-4o", &roomy, Cost::tokens(1000), Some(0.0));
        b.iter_batched(
            || store.reserve_now(&call).expect("granted"),
            |r| black_box(store.settle_now(&call.settlement(&r, used))),
            BatchSize::SmallInput,
        )
    });

    // Refused: the bucket is empty and the caller will not wait.
    let tight = Limits::new().requests(1).tokens(1000).validate().unwrap();
    let _ = store.reserve_now(&call("tight", &tight, Cost::tokens(1000), None));
    g.bench_function("reserve_refused", |b| {
        let call = call("tight", &tight, Cost::tokens(1000), Some(0.0));
        b.iter(|| black_box(store.reserve_now(black_box(&call))).is_err())
    });

    // One of 10,000 keys, chosen round-robin.
    let keys: Vec<String> = (0..10_000).map(|i| format!("client/{i}")).collect();
    g.bench_function("reserve_admitted_10k_keys", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % keys.len();
            let call = call(&keys[i], &roomy, Cost::tokens(10), Some(0.0));
            black_box(store.reserve_now(&call)).is_ok()
        })
    });

    // The full path of the public API (the future polled once: on the memory
    // store it completes at once; no runtime in the measurement).
    let limiter = RateLimiter::memory(
        "api",
        Limits::new().requests(u64::MAX / 4).tokens(u64::MAX / 4),
    )
    .unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    g.bench_function("limiter_try_acquire", |b| {
        b.iter(|| {
            let fut = std::pin::pin!(limiter.try_acquire(Cost::split(800, 200)));
            match fut.poll(&mut cx) {
                std::task::Poll::Ready(r) => black_box(r.is_ok()),
                std::task::Poll::Pending => unreachable!("the memory store never waits here"),
            }
        })
    });
    g.finish();
}

/// A reservation into a queue that already holds N reservations, then its
/// cancellation: the cost must not grow with N (the Python library's does).
/// The key's bucket is drained first, so that the measured reservation
/// queues at every depth, 0 included (N = 0 is the same work on an empty
/// queue; a reservation granted at once is `memory_store/reserve_admitted`).
fn queue_depth(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_store_queued");
    g.throughput(Throughput::Elements(1));
    for depth in [0u64, 1_000, 10_000, 50_000] {
        let clock = ManualClock::new(1_000.0);
        let store = MemoryStore::with_clock(Arc::new(clock));
        // 1 request per 10 ms, window of a day: the queue never drains while frozen.
        let policy = Limits::new()
            .requests(8_640_000)
            .window_secs(86_400.0)
            .burst(1e-6)
            .validate()
            .unwrap();
        // Drained: what the bucket holds is taken by reservations granted at once.
        while store
            .reserve_now(&call("deep", &policy, Cost::request_only(), Some(0.0)))
            .is_ok()
        {}
        for _ in 0..depth {
            store
                .reserve_now(&call("deep", &policy, Cost::request_only(), None))
                .unwrap();
        }
        g.bench_with_input(
            BenchmarkId::new("reserve_then_cancel", depth),
            &depth,
            |b, _| {
                let rc = call("deep", &policy, Cost::request_only(), None);
                b.iter(|| {
                    let r = store.reserve_now(&rc).unwrap();
                    black_box(store.settle_now(&rc.settlement(&r, [0.0; 4])))
                })
            },
        );
    }
    g.finish();
}

/// `try_acquire` on a limiter whose classes share its bucket
/// (`Builder::class_shares`), with 4 and 16 classes: the call's own lane has
/// room (one store operation), or it is full and another lane lends (two),
/// beside the same limits without shares.
fn shared_bucket(c: &mut Criterion) {
    let mut g = c.benchmark_group("shared_bucket");
    g.throughput(Throughput::Elements(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // So long a window that a filled lane stays full, so large a limit that
    // the others never fill.
    let tpm = u64::MAX / 4;
    let limits = Limits::new().requests(tpm).tokens(tpm).window_secs(1e9);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut run = |g: &mut criterion::BenchmarkGroup<'_, _>, name: &str, limiter: &RateLimiter| {
        g.bench_function(name, |b| {
            b.iter(|| {
                let fut = std::pin::pin!(limiter.try_acquire(Cost::tokens(1_000)));
                match fut.poll(&mut cx) {
                    std::task::Poll::Ready(r) => black_box(r.is_ok()),
                    std::task::Poll::Pending => unreachable!("the memory store never waits here"),
                }
            })
        });
    };
    let plain = RateLimiter::memory("plain", limits.clone()).unwrap();
    run(&mut g, "no_shares", &plain);
    for classes in [4usize, 16] {
        let class = PriorityClass {
            headroom: 1.0,
            max_wait: None,
        };
        let build = |key: &str| {
            rt.block_on(
                RateLimiter::builder(key)
                    .limits(limits.clone())
                    .priority_classes(vec![class.clone(); classes])
                    .class_shares(vec![ClassShare::new(0.5 / classes as f64, 1.0); classes])
                    .store(tollgate::Store::memory())
                    .build(),
            )
            .unwrap()
        };
        let own = build("own");
        run(&mut g, &format!("own_lane/{classes}"), &own);
        let borrow = build("borrow");
        let lane = tpm as f64 / classes as f64;
        let fill = rt
            .block_on(borrow.try_acquire(Cost::split(lane as u64, 0)))
            .expect("the lane holds its capacity");
        assert_eq!(fill.lane(), Some(0));
        std::mem::forget(fill);
        run(&mut g, &format!("borrows/{classes}"), &borrow);
    }
    g.finish();
}

criterion_group!(benches, decisions, queue_depth, shared_bucket);
criterion_main!(benches);
