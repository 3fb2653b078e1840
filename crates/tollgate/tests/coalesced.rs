//! Coalesced calls: reservations of one key and class that travel together in
//! one store call get exactly what each would have got alone at that time —
//! the same slot, queue position, mark and refusal, to the bit — on the memory
//! store and on Redis (whose batch runs in one call of `reserve.lua`), and
//! concurrent acquires on Redis do travel together. The same for settlements
//! and cancellations of one key (one call of `settle.lua`), also when the
//! call carrying them times out.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use tollgate::store::{
    Backend, ManualClock, MemoryStore, RedisOptions, RedisStore, ReserveCall, Reserved, SettleCall,
    StoreError,
};
use tollgate::{Cost, Limits, Policy};
use tollgate_core::ReserveError;

use support::RedisServer;

/// Headroom of each priority class.
const HEADROOMS: [f64; 3] = [1.0, 0.6, 0.3];

/// One reservation asked for: input and output tokens, longest wait, queue cap.
#[derive(Debug, Clone)]
struct Ask {
    input: u64,
    output: u64,
    max_wait: Option<f64>,
    max_queue: Option<u64>,
}

fn ask() -> impl Strategy<Value = Ask> {
    (
        1u64..400,
        0u64..200,
        prop_oneof![3 => Just(None), 1 => (0.0..3.0f64).prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => (0u64..6).prop_map(Some)],
    )
        .prop_map(|(input, output, max_wait, max_queue)| Ask {
            input,
            output,
            max_wait,
            max_queue,
        })
}

/// Small limits, so that a batch fills the bucket and queues.
fn limits() -> impl Strategy<Value = Limits> {
    (
        prop_oneof![Just(None), (2u64..12).prop_map(Some)],
        prop_oneof![Just(None), (600u64..2500).prop_map(Some)],
        prop_oneof![Just(None), (300u64..1500).prop_map(Some)],
        prop_oneof![Just(1.0), 0.5..2.0f64],
        prop_oneof![Just(1.0), 0.5..3.0f64],
    )
        .prop_filter("at least one limit", |(r, t, i, _, _)| {
            r.is_some() || t.is_some() || i.is_some()
        })
        .prop_map(|(r, t, i, burst, window)| Limits {
            requests: r,
            tokens: t,
            input_tokens: i,
            output_tokens: None,
            window_secs: window,
            burst,
            burndown: 1.0,
        })
}

fn call<'a>(key: &'a str, policy: &'a Policy, class: u8, a: &Ask) -> ReserveCall<'a> {
    ReserveCall {
        key,
        policy,
        class,
        headroom: HEADROOMS[class as usize],
        cost: policy.units(Cost::split(a.input, a.output)),
        max_wait: a.max_wait,
        max_queue: a.max_queue,
        lease: None,
    }
}

/// Two outcomes of one reservation agree: slot, position and mark to the bit
/// (ids are per store), or the same refusal.
fn same(
    got: &Result<tollgate::store::Reserved, ReserveError>,
    want: &Result<tollgate::store::Reserved, ReserveError>,
    what: &str,
) -> Result<(), TestCaseError> {
    match (got, want) {
        (Ok(g), Ok(w)) => {
            prop_assert_eq!(g.slot.to_bits(), w.slot.to_bits(), "{}: slot", what);
            prop_assert_eq!(g.position, w.position, "{}: position", what);
            prop_assert_eq!(g.mark, w.mark, "{}: mark", what);
            prop_assert_eq!(g.now.to_bits(), w.now.to_bits(), "{}: time", what);
        }
        (Err(g), Err(w)) => prop_assert_eq!(g, w, "{}: refusal", what),
        _ => prop_assert!(false, "{}: {:?} against {:?}", what, got, want),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// On the memory store: a batch after some history gives each
    /// reservation what it gets one by one at the same time, and leaves the
    /// same state.
    #[test]
    fn a_memory_batch_gives_the_same_slots_as_one_by_one(
        limits in limits(),
        history in prop::collection::vec((ask(), 0u8..3, prop_oneof![Just(0.0), 0.0..0.7f64]), 0..12),
        batch in prop::collection::vec(ask(), 1..24),
        class in 0u8..3,
    ) {
        let policy = limits.validate().unwrap();
        let clock = ManualClock::new(1_000.0);
        let alone = MemoryStore::with_clock(Arc::new(clock.clone()));
        let together = MemoryStore::with_clock(Arc::new(clock.clone()));
        for (a, c, pause) in &history {
            clock.advance(*pause);
            let one = call("k", &policy, *c, a);
            same(&together.reserve_now(&one), &alone.reserve_now(&one), "history")?;
        }
        let calls: Vec<ReserveCall> = batch.iter().map(|a| call("k", &policy, class, a)).collect();
        let got = together.reserve_many_now(&calls);
        prop_assert_eq!(got.len(), calls.len());
        for (i, (g, c)) in got.iter().zip(&calls).enumerate() {
            let want = alone.reserve_now(c);
            same(g, &want, &format!("batch item {i}"))?;
            if let (Ok(g), Ok(w)) = (g, &want) {
                prop_assert_eq!(g.id, w.id, "batch item {}: id", i);
            }
        }
        prop_assert_eq!(together.snapshot_now("k"), alone.snapshot_now("k"));
    }
}

/// On Redis: one call of `reserve.lua` with a batch of reservations (after
/// some history, mirrored on a memory store set to each script's clock)
/// gives each what the memory store gives it one by one at the batch's
/// time, to the bit, and leaves the same state.
/// One `redis-server` and runtime serve all 48 cases (see [`on_redis`]).
#[test]
fn a_redis_batch_gives_the_same_slots_as_one_by_one() {
    let strategy = (
        limits(),
        prop::collection::vec((ask(), 0u8..3), 0..10),
        prop::collection::vec(ask(), 1..24),
        0u8..3,
    );
    on_redis(
        strategy,
        |runtime, store, case, (limits, history, batch, class)| {
            let key = format!("batch-{}", case);
            let policy = limits.validate().unwrap();
            let clock = ManualClock::new(0.0);
            let memory = MemoryStore::with_clock(Arc::new(clock.clone()));
            runtime.block_on(async {
                let redis = store;
                for (a, c) in &history {
                    let one = call(&key, &policy, *c, a);
                    // A refusal writes nothing, and its time is unknown: only
                    // grants are mirrored.
                    if let Ok(r) = redis.reserve(&one).await.unwrap() {
                        clock.set(r.now);
                        same(&Ok(r), &memory.reserve_now(&one), "history")?;
                    }
                }
                let calls: Vec<ReserveCall> = batch
                    .iter()
                    .map(|a| call(&key, &policy, class, a))
                    .collect();
                let got = redis.reserve_many(&calls).await.unwrap();
                prop_assert_eq!(got.len(), calls.len());
                let grants: Vec<_> = got.iter().filter_map(|g| g.as_ref().ok()).collect();
                // One script call: one clock, ids in order.
                prop_assert!(grants
                    .windows(2)
                    .all(|w| w[0].now == w[1].now && w[1].id == w[0].id + 1));
                let now = match grants.first() {
                    Some(r) => r.now,
                    // Nothing granted: the refusals' waits depend on the time.
                    None => {
                        for g in &got {
                            prop_assert!(g.is_err());
                        }
                        return Ok(());
                    }
                };
                clock.set(now);
                for (i, (g, c)) in got.iter().zip(&calls).enumerate() {
                    same(g, &memory.reserve_now(c), &format!("batch item {i}"))?;
                }
                let after = redis.snapshot(&key, &policy).await.unwrap();
                prop_assert_eq!(after.state, memory.snapshot_now(&key).state);
                Ok(())
            })
        },
    );
}

/// Runs 48 cases of `strategy` on one `redis-server` and runtime; they
/// belong to the test and stop with it (in a `static` the server outlived
/// the test process: statics are never dropped). `case` gets the runtime,
/// a store on the server and the case's number (for a key of its own).
fn on_redis<S: Strategy>(
    strategy: S,
    case: impl Fn(&tokio::runtime::Runtime, &RedisStore, u64, S::Value) -> Result<(), TestCaseError>,
) {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let store = runtime
        .block_on(RedisStore::connect(&server.url(), RedisOptions::default()))
        .expect("connect to the test redis-server");
    let cases = AtomicU64::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        // Seeds of past failures, as `proptest!` keeps them.
        source_file: Some(file!()),
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&strategy, |value| {
        case(
            &runtime,
            &store,
            cases.fetch_add(1, Ordering::Relaxed),
            value,
        )
    });
    if let Err(e) = outcome {
        panic!("{e}\n{runner}");
    }
}

/// Script calls (`EVALSHA`) Redis has run so far.
fn script_calls(server: &RedisServer) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// 200 concurrent reservations on one key through [`Backend::reserve`]
/// travel in far fewer script calls than reservations, and each gets what
/// the memory store gives it one by one at the time of its call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_travel_together_and_get_what_they_would_alone() {
    let server = RedisServer::start();
    let redis = RedisStore::connect(&server.url(), RedisOptions::default())
        .await
        .unwrap();
    let policy = Limits::new()
        .requests(20)
        .tokens(3_000)
        .window_secs(2.0)
        .validate()
        .unwrap();
    let before = script_calls(&server);
    let n = 200;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (redis, policy) = (redis.clone(), policy.clone());
        tasks.spawn(async move {
            let ask = Ask {
                input: 1 + i * 7 % 90,
                output: i * 3 % 40,
                max_wait: (i % 11 == 0).then_some(2.0),
                max_queue: (i % 13 == 0).then_some(150),
            };
            let c = call("together", &policy, 0, &ask);
            (ask, redis.reserve(&c).await.unwrap())
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.unwrap());
    }
    let calls = script_calls(&server) - before;
    assert!(
        calls * 4 <= n,
        "{n} concurrent reservations took {calls} script calls"
    );
    // In the order Redis placed them (ids), each one is what the memory store
    // gives it alone at the time of its call.
    let mut grants: Vec<_> = results
        .iter()
        .filter_map(|(a, r)| r.as_ref().ok().map(|r| (a, r)))
        .collect();
    assert!(grants.len() > n as usize / 2, "most are granted");
    grants.sort_by_key(|(_, r)| r.id);
    let clock = ManualClock::new(0.0);
    let memory = MemoryStore::with_clock(Arc::new(clock.clone()));
    for (i, (a, r)) in grants.iter().enumerate() {
        clock.set(r.now);
        let m = memory
            .reserve_now(&call("together", &policy, 0, a))
            .unwrap_or_else(|e| panic!("grant {i}: memory refused ({e}), redis granted {r:?}"));
        assert_eq!(r.slot.to_bits(), m.slot.to_bits(), "grant {i}: slot");
        assert_eq!(r.position, m.position, "grant {i}: position");
        assert_eq!(r.mark, m.mark, "grant {i}: mark");
    }
    assert!(
        grants.iter().any(|(_, r)| r.slot > r.now),
        "the sequence must queue"
    );
}

/// A batch with two keys is refused with a clear error, and nothing is
/// written.
#[tokio::test]
async fn a_batch_of_two_keys_is_refused() {
    let server = RedisServer::start();
    let redis = RedisStore::connect(&server.url(), RedisOptions::default())
        .await
        .unwrap();
    let policy = Limits::new().rpm(10).validate().unwrap();
    let a = Ask {
        input: 1,
        output: 0,
        max_wait: None,
        max_queue: None,
    };
    let err = redis
        .reserve_many(&[call("one", &policy, 0, &a), call("two", &policy, 0, &a)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("one key and class"), "{err}");
    assert_eq!(server.cli(&["DBSIZE"]).trim(), "0");
}

/// How a reservation is settled: cancelled, under its estimate or over it
/// (its request count as reserved).
fn usage(policy: &Policy, r: &Reserved, kind: u8, a: u64, b: u64) -> [f64; 4] {
    let mut actual = match kind % 3 {
        0 => return [0.0; 4],
        1 => policy.units(Cost::split(a % 100, b % 50)),
        _ => policy.units(Cost::split(300 + a % 300, 100 + b % 200)),
    };
    actual[0] = r.mark.cost[0];
    actual
}

fn settle_call<'a>(
    key: &'a str,
    policy: &'a Policy,
    class: u8,
    r: &Reserved,
    actual: [f64; 4],
) -> SettleCall<'a> {
    SettleCall {
        key,
        policy,
        class,
        id: r.id,
        slot: r.slot,
        mark: r.mark,
        actual,
    }
}

/// Which reservations a batch settles, in its order (each at most once),
/// and how.
fn picks() -> impl Strategy<Value = Vec<(usize, u8, u64, u64)>> {
    prop::collection::vec((0usize..64, 0u8..3, 0u64..1000, 0u64..1000), 1..16)
}

/// The picks that name a distinct one of `live` reservations.
fn distinct(picks: &[(usize, u8, u64, u64)], live: usize) -> Vec<(usize, u8, u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    picks
        .iter()
        .map(|&(i, k, a, b)| (i % live.max(1), k, a, b))
        .filter(|p| live > 0 && seen.insert(p.0))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// On the memory store: settlements and cancellations of reservations
    /// (started and queued, over three classes) in one batch each get what
    /// they get one by one at the same time, and leave the same state.
    #[test]
    fn a_memory_batch_of_settlements_leaves_the_same_state_as_one_by_one(
        limits in limits(),
        history in prop::collection::vec((ask(), 0u8..3, prop_oneof![Just(0.0), 0.0..0.3f64]), 1..20),
        picks in picks(),
        pause in 0.0..2.0f64,
    ) {
        let policy = limits.validate().unwrap();
        let clock = ManualClock::new(1_000.0);
        let alone = MemoryStore::with_clock(Arc::new(clock.clone()));
        let together = MemoryStore::with_clock(Arc::new(clock.clone()));
        let mut live = Vec::new();
        for (a, c, p) in &history {
            clock.advance(*p);
            let one = call("k", &policy, *c, a);
            let (t, w) = (together.reserve_now(&one), alone.reserve_now(&one));
            same(&t, &w, "history")?;
            if let Ok(r) = t {
                live.push((*c, r));
            }
        }
        clock.advance(pause);
        let calls: Vec<SettleCall> = distinct(&picks, live.len())
            .into_iter()
            .map(|(i, k, a, b)| {
                let (c, r) = &live[i];
                settle_call("k", &policy, *c, r, usage(&policy, r, k, a, b))
            })
            .collect();
        let got = together.settle_many_now(&calls);
        prop_assert_eq!(got.len(), calls.len());
        for (i, (g, c)) in got.iter().zip(&calls).enumerate() {
            prop_assert_eq!(g, &alone.settle_now(c), "settlement {}", i);
        }
        prop_assert_eq!(together.snapshot_now("k"), alone.snapshot_now("k"));
    }
}

/// On Redis: one call of `settle.lua` with a batch of settlements and
/// cancellations (after a history of reservations in the top class,
/// mirrored on a memory store set to each script's clock) gives each what
/// the memory store gives it one by one at the time it was applied, to the
/// bit, and leaves the same state. (With reservations of several classes
/// settled microseconds apart, the two stores disagree now and then even
/// when the settlements go one call each, without batches: not what this
/// test is about, so its history keeps to one class.)
#[test]
fn a_redis_batch_of_settlements_leaves_the_same_state_as_one_by_one() {
    let settled = AtomicU64::new(0);
    let strategy = (
        limits(),
        prop::collection::vec((ask(), Just(0u8)), 1..16),
        picks(),
    );
    on_redis(
        strategy,
        |runtime, store, case, (limits, history, picks)| {
            let key = format!("settle-batch-{}", case);
            let policy = limits.validate().unwrap();
            let clock = ManualClock::new(0.0);
            let memory = MemoryStore::with_clock(Arc::new(clock.clone()));
            runtime.block_on(async {
                let redis = store;
                // (class, redis reservation, memory reservation)
                let mut live = Vec::new();
                for (a, c) in &history {
                    let one = call(&key, &policy, *c, a);
                    if let Ok(r) = redis.reserve(&one).await.unwrap() {
                        clock.set(r.now);
                        let m = memory.reserve_now(&one);
                        same(&Ok(r.clone()), &m, "history")?;
                        live.push((*c, r, m.unwrap()));
                    }
                }
                let picked = distinct(&picks, live.len());
                let on = |m: bool| -> Vec<SettleCall> {
                    picked
                        .iter()
                        .map(|&(i, k, a, b)| {
                            let (c, r, mr) = &live[i];
                            let actual = usage(&policy, r, k, a, b);
                            settle_call(&key, &policy, *c, if m { mr } else { r }, actual)
                        })
                        .collect()
                };
                let calls = on(false);
                let got = redis.settle_many(&calls).await.unwrap();
                prop_assert_eq!(got.len(), calls.len());
                for (i, (g, c)) in got.into_iter().zip(on(true)).enumerate() {
                    let (g, now) = g.unwrap();
                    clock.set(now);
                    prop_assert_eq!(g, memory.settle_now(&c), "settlement {}", i);
                    settled.fetch_add(1, Ordering::Relaxed);
                }
                let after = redis.snapshot(&key, &policy).await.unwrap();
                // At the snapshot's time, which is later than the last
                // settlement's: a reservation whose slot lies between the two
                // is no longer queued there.
                clock.set(after.now);
                let want = memory.snapshot_now(&key);
                prop_assert_eq!(after.state, want.state);
                prop_assert_eq!(after.queue_depth, want.queue_depth);
                Ok(())
            })
        },
    );
    let settled = settled.load(Ordering::Relaxed);
    assert!(settled > 100, "only {settled} settlements were checked");
}

/// A slow bucket (a million tokens per ten hours) and 1,000-token
/// reservations settled a few tokens below their estimate: no refund is
/// capped whatever the order (the earliest reservation's charge still lies
/// ahead by more than all the refunds together), so each settlement's
/// refund and the key's TAT tell whether a settlement was lost or applied
/// twice.
fn slow_bucket() -> Policy {
    Limits::new()
        .tokens(1_000_000)
        .window_secs(36_000.0)
        .validate()
        .unwrap()
}

/// `n` reservations of 1,000 tokens on `key`, all started.
async fn thousands(redis: &RedisStore, policy: &Policy, key: &str, n: u64) -> Vec<Reserved> {
    let a = Ask {
        input: 1_000,
        output: 0,
        max_wait: None,
        max_queue: None,
    };
    let mut held = Vec::new();
    for _ in 0..n {
        let r = redis
            .reserve(&call(key, policy, 0, &a))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.slot, r.now, "started at once");
        held.push(r);
    }
    held
}

/// The TAT of tokens, seconds.
async fn tokens_tat(redis: &RedisStore, policy: &Policy, key: &str) -> f64 {
    redis.snapshot(key, policy).await.unwrap().state.tat[1]
}

/// 120 concurrent settlements of one key (each 1,000 tokens reserved, 992
/// to 999 used) travel in far fewer script calls than settlements, and each
/// caller gets its own refund: 1,000 less what it used, no more, no less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settlements_travel_together_and_each_gets_its_own_refund() {
    let server = RedisServer::start();
    let redis = RedisStore::connect(&server.url(), RedisOptions::default())
        .await
        .unwrap();
    let policy = slow_bucket();
    let n = 120;
    let held = thousands(&redis, &policy, "settle-together", n).await;
    let before_tat = tokens_tat(&redis, &policy, "settle-together").await;
    let before = script_calls(&server);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, r) in held.into_iter().enumerate() {
        let (redis, policy) = (redis.clone(), policy.clone());
        tasks.spawn(async move {
            let used = 999 - (i as u64 * 7) % 8;
            let actual = policy.units(Cost::tokens(used));
            let c = settle_call("settle-together", &policy, 0, &r, actual);
            (used, redis.settle(&c).await.unwrap())
        });
    }
    let mut refunded = 0.0;
    while let Some(r) = tasks.join_next().await {
        let (used, settled) = r.unwrap();
        let want = 1_000.0 - used as f64;
        assert!(
            (settled.refunded[1] - want).abs() < 1e-3,
            "used {used}: refunded {:?}, {want} expected",
            settled.refunded
        );
        refunded += want;
    }
    let calls = script_calls(&server) - before;
    assert!(
        calls * 4 <= n,
        "{n} concurrent settlements took {calls} script calls"
    );
    let after_tat = tokens_tat(&redis, &policy, "settle-together").await;
    let per_token = policy.increment[1];
    assert!(
        (before_tat - after_tat - refunded * per_token).abs() < 1e-3,
        "the TAT moved back {} s, the refunds are {} s",
        before_tat - after_tat,
        refunded * per_token
    );
}

/// Redis paused (SIGSTOP) while 40 settlements of one key are on their way:
/// the lone first call and the batch behind it time out, and every caller
/// is told its settlement is pending, not lost; after SIGCONT each is
/// applied exactly once (the TAT moves back by the sum of the refunds), in
/// fewer calls than settlements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_of_a_batch_that_timed_out_are_applied_once() {
    let server = RedisServer::start();
    let options = RedisOptions::default()
        .connect_timeout(std::time::Duration::from_millis(150))
        .response_timeout(std::time::Duration::from_millis(150));
    let redis = RedisStore::connect(&server.url(), options).await.unwrap();
    let policy = slow_bucket();
    let n = 40;
    let held = thousands(&redis, &policy, "settle-paused", n).await;
    let before_tat = tokens_tat(&redis, &policy, "settle-paused").await;
    let before = script_calls(&server);
    server.pause();
    let mut tasks = tokio::task::JoinSet::new();
    for r in held {
        let (redis, policy) = (redis.clone(), policy.clone());
        tasks.spawn(async move {
            let actual = policy.units(Cost::tokens(995));
            let c = settle_call("settle-paused", &policy, 0, &r, actual);
            redis.settle(&c).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Err(StoreError::Pending(m)) => assert!(m.contains("applied once"), "{m}"),
            other => panic!("a settlement sent to a paused Redis gave {other:?}"),
        }
    }
    server.resume();
    let want = n as f64 * 5.0 * policy.increment[1];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut snapshots = 0;
    let moved = loop {
        snapshots += 1;
        let moved = before_tat - tokens_tat(&redis, &policy, "settle-paused").await;
        if (moved - want).abs() < 1e-3 || std::time::Instant::now() > deadline {
            break moved;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        (moved - want).abs() < 1e-3,
        "the TAT moved back {moved} s; {want} s is every settlement once"
    );
    // Nothing more arrives later.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let moved = before_tat - tokens_tat(&redis, &policy, "settle-paused").await;
    assert!((moved - want).abs() < 1e-3, "then {moved} s");
    let calls = script_calls(&server) - before - snapshots - 1;
    assert!(calls * 4 <= n, "{n} settlements took {calls} script calls");
}

/// A batch of settlements of two keys is refused with a clear error, and
/// nothing is written.
#[tokio::test]
async fn a_settlement_batch_of_two_keys_is_refused() {
    let server = RedisServer::start();
    let redis = RedisStore::connect(&server.url(), RedisOptions::default())
        .await
        .unwrap();
    let policy = slow_bucket();
    let held = thousands(&redis, &policy, "one", 1).await;
    let dbsize = server.cli(&["DBSIZE"]);
    let actual = policy.units(Cost::tokens(10));
    let err = redis
        .settle_many(&[
            settle_call("one", &policy, 0, &held[0], actual),
            settle_call("two", &policy, 0, &held[0], actual),
        ])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("one key"), "{err}");
    assert_eq!(server.cli(&["DBSIZE"]), dbsize);
    let state = redis.snapshot("one", &policy).await.unwrap().state;
    assert_eq!(state.refunded, [0.0; 4], "nothing was settled");
}
