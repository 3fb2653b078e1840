//! A fixed number of decisions of the memory store, for counting the
//! instructions one costs (the machine may be shared, so time is a poor
//! guide; counts repeat).
//!
//! ```text
//! cargo build --release -p tollgate --example memory_decisions
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/a \
//!     target/release/examples/memory_decisions granted 100000
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/b \
//!     target/release/examples/memory_decisions granted 300000
//! ```
//!
//! Instructions per decision are the difference of the two totals over the
//! difference of the counts (the setup, the same in both, cancels out).
//!
//! Cases, as the `memory_store` bench has them:
//! - `granted`: a reservation granted at once on one key (`reserve_admitted`);
//! - `pair`: that, then its settlement below the estimate
//!   (`reserve_then_settle`);
//! - `queued:N`: a reservation that queues behind N queued ones on a key
//!   whose bucket is drained, then its cancellation
//!   (`memory_store_queued/reserve_then_cancel/N`).

use std::hint::black_box;
use std::sync::Arc;

use tollgate::store::{ManualClock, MemoryStore};
use tollgate::{Cost, Limits, Policy};

// The bench's calls, so that the cases are the bench's.
#[path = "../benches/common/mod.rs"]
mod common;
use common::call;

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "granted".into());
    let count: u64 = args
        .next()
        .map_or(100_000, |n| n.parse().expect("a count of decisions"));
    let roomy = Limits::new()
        .requests(u64::MAX / 4)
        .tokens(u64::MAX / 4)
        .validate()
        .expect("valid limits");
    match case.split_once(':') {
        None if case == "granted" => {
            let store = MemoryStore::new();
            let rc = call("openai/gpt-4o", &roomy, Cost::tokens(1000), Some(0.0));
            for _ in 0..count {
                black_box(store.reserve_now(black_box(&rc)).is_ok());
            }
        }
        None if case == "pair" => {
            let store = MemoryStore::new();
            let rc = call("openai/gpt-4o", &roomy, Cost::tokens(1000), Some(0.0));
            let used = roomy.units(Cost::tokens(700));
            for _ in 0..count {
                let r = store.reserve_now(black_box(&rc)).expect("granted");
                black_box(store.settle_now(&rc.settlement(&r, used)));
            }
        }
        Some(("queued", depth)) => {
            let depth: u64 = depth.parse().expect("a queue depth");
            let (store, policy) = drained_store();
            for _ in 0..depth {
                store
                    .reserve_now(&call("deep", &policy, Cost::request_only(), None))
                    .expect("queued");
            }
            let rc = call("deep", &policy, Cost::request_only(), None);
            for _ in 0..count {
                let r = store.reserve_now(black_box(&rc)).expect("queued");
                black_box(store.settle_now(&rc.settlement(&r, [0.0; 4])));
            }
        }
        _ => panic!("unknown case {case:?}: granted, pair or queued:N"),
    }
}

/// A store on a frozen clock whose key `deep` has no room left and nothing
/// queued: every reservation from here on queues (1 request per 10 ms, a
/// window of a day, so the queue never drains). The same as the bench's.
fn drained_store() -> (MemoryStore, Policy) {
    let store = MemoryStore::with_clock(Arc::new(ManualClock::new(1_000.0)));
    let policy = Limits::new()
        .requests(8_640_000)
        .window_secs(86_400.0)
        .burst(1e-6)
        .validate()
        .expect("valid limits");
    while store
        .reserve_now(&call("deep", &policy, Cost::request_only(), Some(0.0)))
        .is_ok()
    {}
    (store, policy)
}
