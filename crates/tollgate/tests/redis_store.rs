//! The Redis store against real `redis-server` processes: the behavioural
//! suite every store passes, the Lua arithmetic checked bit for bit against
//! `tollgate-core`, and script reloading after `SCRIPT FLUSH`.

mod behaviour;
mod support;

use std::sync::Arc;

use tollgate::store::{
    Advance, AdvanceCall, Backend, ManualClock, MemoryStore, RedisOptions, RedisStore, ReserveCall,
    Reserved, SettleCall,
};
use tollgate::{Cost, Limits, RateLimiter, Store};
use tollgate_core::{reserve, KeyState, Policy, ReserveError, ReserveRequest, DIMENSIONS};

use support::RedisServer;

async fn redis() -> (Store, RedisServer) {
    let server = RedisServer::start();
    let store = Store::redis(&server.url())
        .await
        .expect("connect to the test redis-server");
    (store, server)
}

suite!(redis);

async fn redis_store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), RedisOptions::default())
        .await
        .expect("connect to the test redis-server")
}

/// A reservation as the test remembers it.
struct Held {
    class: u8,
    id: u64,
    slot: f64,
    mark: tollgate_core::Mark,
    live: bool,
}

/// Every reservation the scripts grant equals `tollgate_core::reserve` on the
/// same state and time: slot, mark and new state to the last bit, and so do the
/// refusals (too large, would wait, queue full) and the queue positions.
#[tokio::test]
async fn reserve_script_matches_the_core_bit_for_bit() {
    let server = RedisServer::start();
    let store = redis_store(&server).await;
    // Awkward numbers on every dimension, so any change in the order of the
    // floating-point operations shows.
    let policy = Limits::new()
        .requests(7)
        .tokens(1_013)
        .input_tokens(777)
        .output_tokens(333)
        .window_secs(3.7)
        .burst(1.3)
        .burndown(2.5)
        .validate()
        .unwrap();
    let key = "bits/reserve";
    let headrooms = [1.0, 0.6, 0.35];
    let mut held: Vec<Held> = Vec::new();
    let mut outcomes = [0usize; 4];
    // Per class, what the first of its queue gave back when cancelled: a
    // queued reservation's mark carries it (see tollgate_core::advance).
    let mut class_refunds = [[0.0; DIMENSIONS]; 3];
    for step in 0..120u64 {
        let class = (step % 3) as u8;
        let cost = policy.units(Cost::split(step * 37 % 300, step * 11 % 140));
        let max_wait = if step % 5 == 0 { Some(1.5) } else { None };
        let max_queue = if step % 7 == 0 { Some(3) } else { None };
        let before = store.snapshot(key, &policy).await.unwrap();
        let call = ReserveCall {
            key,
            policy: &policy,
            class,
            headroom: headrooms[class as usize],
            cost,
            max_wait,
            max_queue,
            lease: None,
        };
        let got = store.reserve(&call).await.unwrap();
        let after = store.snapshot(key, &policy).await.unwrap();
        // What the core says with the script's own clock (or, for refusals,
        // the snapshot's: the reply does not carry the time).
        let now = match &got {
            Ok(r) => r.now,
            Err(_) => before.now,
        };
        let queued: Vec<&Held> = held
            .iter()
            .filter(|h| h.live && h.class == class && h.slot > now)
            .collect();
        let request = ReserveRequest {
            cost,
            headroom: headrooms[class as usize],
            tail: queued
                .iter()
                .map(|h| h.slot)
                .fold(f64::NEG_INFINITY, f64::max),
            max_wait,
            queued: queued.len() as u64,
            max_queue,
        };
        let want = reserve(&policy, &before.state, now, &request);
        match (&got, &want) {
            (Ok(r), Ok(g)) => {
                outcomes[0] += 1;
                assert_eq!(r.slot.to_bits(), g.slot.to_bits(), "step {step}: slot");
                let mut mark = g.mark;
                if g.slot > now {
                    mark.class_refunds_at = class_refunds[class as usize];
                }
                assert_eq!(r.mark, mark, "step {step}: mark");
                assert_eq!(after.state, g.state, "step {step}: state");
                assert_eq!(r.position, queued.len() as u64, "step {step}: position");
                assert!(held.iter().all(|h| h.id < r.id), "ids must grow");
                held.push(Held {
                    class,
                    id: r.id,
                    slot: r.slot,
                    mark: r.mark,
                    live: true,
                });
            }
            (Err(e), Err(w)) => {
                assert_eq!(after.state, before.state, "step {step}: a refusal wrote");
                match (e, w) {
                    (ReserveError::TooLarge { .. }, _) => {
                        outcomes[1] += 1;
                        assert_eq!(e, w)
                    }
                    (
                        ReserveError::WouldWait { retry_after: a, .. },
                        ReserveError::WouldWait { retry_after: b, .. },
                    ) => {
                        outcomes[2] += 1;
                        assert!((a - b).abs() < 0.05, "step {step}: {a} vs {b}")
                    }
                    (
                        ReserveError::QueueFull { depth: a, .. },
                        ReserveError::QueueFull { depth: b, .. },
                    ) => {
                        outcomes[3] += 1;
                        assert_eq!(a, b, "step {step}")
                    }
                    _ => panic!("step {step}: redis {e:?}, core {w:?}"),
                }
            }
            _ => panic!("step {step}: redis {got:?}, core {want:?}"),
        }
        // Now and then cancel a queued reservation, so tails and positions
        // must follow removals too.
        if step % 4 == 3 {
            let first_of = |h: &Held, held: &[Held]| {
                held.iter()
                    .filter(|o| o.live && o.class == h.class && o.slot > now)
                    .all(|o| (o.slot, o.id) >= (h.slot, h.id))
            };
            let at = held.iter().rposition(|h| h.live && h.slot > now);
            if let Some(at) = at {
                let first = first_of(&held[at], &held);
                let h = &mut held[at];
                h.live = false;
                let settle = SettleCall {
                    key,
                    policy: &policy,
                    class: h.class,
                    id: h.id,
                    slot: h.slot,
                    mark: h.mark,
                    actual: [0.0; DIMENSIONS],
                };
                let settled = store.settle(&settle).await.unwrap();
                if first {
                    let counters = &mut class_refunds[h.class as usize];
                    for (c, r) in counters.iter_mut().zip(settled.returned) {
                        *c += r;
                    }
                }
            }
        }
    }
    assert!(
        class_refunds.iter().flatten().any(|&r| r > 0.0),
        "the sequence must cancel the first of a queue"
    );
    assert!(
        outcomes[0] > 20 && outcomes[2] > 0 && outcomes[3] > 0,
        "the sequence must exercise grants, waits and full queues: {outcomes:?}"
    );
}

/// One random sequence of reservations, settlements (under, over and at the
/// estimate) and cancellations over three priority classes, run on Redis and
/// mirrored on a memory store whose clock is set to the time each script read:
/// every grant, settlement and stored state must be identical to the bit.
#[tokio::test]
async fn redis_and_memory_agree_on_every_call() {
    let all_dimensions = all_dimensions();
    mirror(all_dimensions, 0).await;
    // Tokens only, so that refunds ahead let waiting reservations move.
    mirror(Limits::new().tokens(2_000).window_secs(1.1), 1).await;
}

/// The same agreement on the lanes of a shared bucket
/// (`Builder::class_shares`): each lane is a bucket of a share of the key's
/// limits, charged by the same scripts with the lane's increments.
#[tokio::test]
async fn redis_and_memory_agree_on_the_lanes_of_a_shared_bucket() {
    let all_dimensions = all_dimensions();
    let shares = tollgate::ClassShare::new(0.3, 2.0);
    let shares =
        tollgate_core::Shares::new(vec![shares, tollgate::ClassShare::new(0.1, 1.0)]).unwrap();
    mirror_policy(shares.lane(&all_dimensions.validate().unwrap(), 0), 0).await;
    let tokens = Limits::new()
        .tokens(4_000)
        .window_secs(1.1)
        .validate()
        .unwrap();
    mirror_policy(shares.lane(&tokens, 1), 1).await;
}

/// A started call whose refund the queue's headroom holds back (it is
/// cancelled, or settles far below its estimate) hands the rest to the
/// waiter charged right after it, on Redis as on the memory store: every
/// settlement, move and state agrees to the bit, and every waiter moves.
#[tokio::test]
async fn redis_and_memory_agree_when_a_started_call_gives_back_more_than_the_queue_holds() {
    let server = RedisServer::start();
    let (redis, clock, memory, policy) = mirrored(&server).await;
    for round in 0..6u64 {
        let key = format!("held-{round}");
        let key = key.as_str();
        let mut pairs = Vec::new();
        for tokens in [600 + 60 * round, 700 - 50 * round, 300, 150 + 20 * round] {
            let call = waiting_call(key, &policy, tokens);
            pairs.push(reserve_on_both(&redis, &clock, &memory, &call).await);
        }
        let (x, waiters) = pairs.split_first_mut().unwrap();
        assert!(
            waiters[0].0.slot > waiters[0].0.now,
            "round {round}: a queue"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let actual = if round % 2 == 0 {
            [0.0; DIMENSIONS]
        } else {
            let mut a = policy.units(Cost::tokens(10 * round));
            a[0] = x.0.mark.cost[0];
            a
        };
        let settle = |res: &Reserved| SettleCall {
            key,
            policy: &policy,
            class: 0,
            id: res.id,
            slot: res.slot,
            mark: res.mark,
            actual,
        };
        let (got, now) = redis.settle_timed(&settle(&x.0)).await.unwrap();
        clock.set(now);
        assert_eq!(
            got,
            memory.settle_now(&settle(&x.1)),
            "round {round}: settlement"
        );
        assert!(
            got.held[1] > 0.0,
            "round {round}: the queue's headroom held nothing back: {got:?}"
        );
        for (n, (r, m)) in waiters.iter_mut().enumerate() {
            let call = |res: &Reserved| advance_call(key, &policy, res);
            let Advance::Moved(a) = redis.advance(&call(r)).await.unwrap() else {
                panic!("round {round}: waiter {n} did not move");
            };
            clock.set(a.now);
            assert_eq!(
                Some(a),
                memory.advance_now(&call(m)),
                "round {round}: waiter {n}"
            );
            r.slot = a.slot;
            m.slot = a.slot;
        }
        assert_eq!(
            redis.snapshot(key, &policy).await.unwrap().state,
            memory.snapshot_now(key).state,
            "round {round}: state"
        );
    }
}

/// The first of a queue that leaves (a call that borrowed another lane)
/// gives back for every reservation queued behind it, so what was handed on
/// down the queue by moving is forgotten, on Redis as on the memory store.
/// Four firsts leave, then the next one's refund is held back whole by the
/// waiter behind it, which is owed it, moves and hands it down the queue;
/// then that one leaves in turn, and every settlement, move and state
/// agrees to the bit.
#[tokio::test]
async fn redis_and_memory_agree_when_the_first_of_a_queue_leaves_after_moves() {
    let server = RedisServer::start();
    let (redis, clock, memory, policy) = mirrored(&server).await;
    for round in 0..3u64 {
        let key = format!("first-leaves-{round}");
        let key = key.as_str();
        let mut calls = Vec::new();
        // One started call, then the queue; four firsts leave, two more
        // join, the next first leaves (held back whole by the last old
        // waiter), then that waiter, owed it all, moves and leaves.
        let w = 200 + 20 * round;
        let plan: [(&[u64], &[usize], &[usize]); 4] = [
            (&[1_000, 200, 200, 200, 200, 200, 200], &[1, 2, 3, 4], &[]),
            (&[w, w], &[5], &[6, 7, 8]),
            (&[], &[6], &[7, 8]),
            (&[], &[], &[7, 8]),
        ];
        let mut moved_last = 0;
        for (stage, (costs, leaving, waiting)) in plan.iter().enumerate() {
            for &tokens in costs.iter() {
                let call = waiting_call(key, &policy, tokens);
                calls.push(reserve_on_both(&redis, &clock, &memory, &call).await);
            }
            for &n in leaving.iter() {
                assert!(calls[n].0.slot > calls[n].0.now, "round {round}: {n} waits");
                let what = format!("round {round}: cancelling {n}");
                cancel_on_both(&redis, &clock, &memory, key, &policy, &calls[n], &what).await;
            }
            for &n in waiting.iter() {
                let what = format!("round {round}: waiter {n} at stage {stage}");
                let got =
                    advance_on_both(&redis, &clock, &memory, key, &policy, &mut calls[n], &what)
                        .await;
                if let Advance::Moved(a) = got {
                    assert!(a.slot > a.now, "round {round}: waiter {n} started");
                    if stage == 2 && n == 8 {
                        moved_last += 1;
                    }
                }
            }
        }
        assert_eq!(moved_last, 1, "round {round}: the last waiter moved");
        assert_eq!(
            redis.snapshot(key, &policy).await.unwrap().state,
            memory.snapshot_now(key).state,
            "round {round}: state"
        );
    }
}

/// What a move handed further down a queue (the `h<id>`, `p<id>` fields of
/// `settle.lua`, the memory store's `ClassQueue::forget_moves`) is forgotten
/// when the first of the queue leaves: its give-back counts for every
/// reservation queued behind it already. Five wait behind a started call;
/// the third is cancelled, so the fourth, owed its seconds, moves and hands
/// what it vacated to the fifth; then the first leaves, and the fifth moves
/// by its give-back alone, before the second and fourth move and the
/// fourth hands on anew: on Redis as on the memory store, to the bit. (Were
/// the fifth's hand-on kept, it would count it a second time and move to
/// where the fourth is, a move earlier than the memory store.)
#[tokio::test]
async fn redis_and_memory_agree_when_the_first_leaves_after_a_move_behind_it() {
    let server = RedisServer::start();
    let (redis, clock, memory, policy) = mirrored(&server).await;
    for round in 0..3u64 {
        let key = format!("first-leaves-behind-{round}");
        let key = key.as_str();
        let mut calls = Vec::new();
        let w = 200 + 25 * round;
        for tokens in [1_000, w, w, w, w, w] {
            let call = waiting_call(key, &policy, tokens);
            calls.push(reserve_on_both(&redis, &clock, &memory, &call).await);
        }
        let mut moves = 0;
        for (leaving, waiting) in [(3, &[4][..]), (1, &[5, 2, 4, 5][..])] {
            assert!(calls[leaving].0.slot > calls[leaving].0.now);
            let what = format!("round {round}: cancelling {leaving}");
            cancel_on_both(
                &redis,
                &clock,
                &memory,
                key,
                &policy,
                &calls[leaving],
                &what,
            )
            .await;
            for &n in waiting {
                let what = format!("round {round}: waiter {n} after {leaving} left");
                let got =
                    advance_on_both(&redis, &clock, &memory, key, &policy, &mut calls[n], &what)
                        .await;
                if matches!(got, Advance::Moved(_)) {
                    moves += 1;
                }
            }
        }
        assert_eq!(moves, 5, "round {round}: every waiter asked moved");
        for n in [2, 4, 5] {
            let what = format!("round {round}: cancelling {n} at the end");
            cancel_on_both(&redis, &clock, &memory, key, &policy, &calls[n], &what).await;
        }
        assert_eq!(
            redis.snapshot(key, &policy).await.unwrap().state,
            memory.snapshot_now(key).state,
            "round {round}: state"
        );
    }
}

/// A Redis store and a memory store whose clock is set to the time each
/// script read, with a tokens-only policy (1,000 per 2 s) that queues.
async fn mirrored(server: &RedisServer) -> (RedisStore, ManualClock, MemoryStore, Policy) {
    let redis = redis_store(server).await;
    let clock = ManualClock::new(0.0);
    let memory = MemoryStore::with_clock(Arc::new(clock.clone()));
    let policy = Limits::new()
        .tokens(1_000)
        .window_secs(2.0)
        .validate()
        .unwrap();
    (redis, clock, memory, policy)
}

/// A reservation of class 0 that may wait as long as it must.
fn waiting_call<'a>(key: &'a str, policy: &'a Policy, tokens: u64) -> ReserveCall<'a> {
    ReserveCall {
        key,
        policy,
        class: 0,
        headroom: 1.0,
        cost: policy.units(Cost::tokens(tokens)),
        max_wait: None,
        max_queue: None,
        lease: None,
    }
}

/// Reserves on Redis, then on the memory store at the script's time: the
/// slots and marks must agree to the bit.
async fn reserve_on_both(
    redis: &RedisStore,
    clock: &ManualClock,
    memory: &MemoryStore,
    call: &ReserveCall<'_>,
) -> (Reserved, Reserved) {
    let r = redis.reserve(call).await.unwrap().unwrap();
    clock.set(r.now);
    let m = memory.reserve_now(call).unwrap();
    assert_eq!(r.slot.to_bits(), m.slot.to_bits(), "slot");
    assert_eq!(r.mark, m.mark, "mark");
    (r, m)
}

/// Cancels a reservation of class 0 (its Redis and its memory twin) on Redis,
/// then on the memory store at the script's time: the two must agree to the
/// bit.
async fn cancel_on_both(
    redis: &RedisStore,
    clock: &ManualClock,
    memory: &MemoryStore,
    key: &str,
    policy: &Policy,
    (r, m): &(Reserved, Reserved),
    what: &str,
) {
    let cancel = |res: &Reserved| SettleCall {
        key,
        policy,
        class: 0,
        id: res.id,
        slot: res.slot,
        mark: res.mark,
        actual: [0.0; DIMENSIONS],
    };
    let (got, now) = redis.settle_timed(&cancel(r)).await.unwrap();
    clock.set(now);
    assert_eq!(got, memory.settle_now(&cancel(m)), "{what}");
}

/// Asks whether a waiting reservation of class 0 (its Redis and its memory
/// twin) may move, on Redis, then on the memory store at the script's time:
/// the outcomes must agree; a move is applied to both.
async fn advance_on_both(
    redis: &RedisStore,
    clock: &ManualClock,
    memory: &MemoryStore,
    key: &str,
    policy: &Policy,
    (r, m): &mut (Reserved, Reserved),
    what: &str,
) -> Advance {
    let got = redis.advance(&advance_call(key, policy, r)).await.unwrap();
    if let Advance::Moved(a) = got {
        clock.set(a.now);
    }
    let want = memory.advance_outcome_now(&advance_call(key, policy, m));
    assert_eq!(got, want, "{what}");
    if let Advance::Moved(a) = got {
        r.slot = a.slot;
        m.slot = a.slot;
    }
    got
}

/// The check whether waiting reservation `res` (of class 0) may move.
fn advance_call<'a>(key: &'a str, policy: &'a Policy, res: &Reserved) -> AdvanceCall<'a> {
    AdvanceCall {
        key,
        policy,
        class: 0,
        headroom: 1.0,
        id: res.id,
        slot: res.slot,
        mark: res.mark,
        lease: None,
    }
}

/// Limits on every dimension, with an odd window, burst and burndown.
fn all_dimensions() -> Limits {
    Limits::new()
        .requests(11)
        .tokens(1_500)
        .input_tokens(900)
        .output_tokens(400)
        .window_secs(2.3)
        .burst(1.4)
        .burndown(3.0)
}

/// Runs the same random calls on Redis and on a memory store set to the
/// script's clock; every answer and state must agree to the bit.
async fn mirror(limits: Limits, least_moves: u32) {
    mirror_policy(limits.validate().unwrap(), least_moves).await
}

async fn mirror_policy(policy: tollgate::Policy, least_moves: u32) {
    let server = RedisServer::start();
    let redis = redis_store(&server).await;
    let clock = ManualClock::new(0.0);
    let memory = MemoryStore::with_clock(Arc::new(clock.clone()));
    let headrooms = [1.0, 0.7, 0.4];
    let key = "mirror";
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    // (class, redis reservation, memory reservation)
    let mut live: Vec<(u8, Reserved, Reserved)> = Vec::new();
    let (mut grants, mut settles, mut cancels, mut refused) = (0, 0, 0, 0);
    let (mut moved, mut held) = (0, 0);
    for step in 0..300 {
        // Let time pass, so that queued reservations start and settle.
        tokio::time::sleep(std::time::Duration::from_millis(4)).await;
        if !live.is_empty() && next(10) < 2 {
            // A waiting caller asks to start earlier. Only a move writes (and
            // tells the time it was decided at): mirror those.
            let at = next(live.len() as u64) as usize;
            let (class, r, m) = &mut live[at];
            let call = |res: &Reserved| AdvanceCall {
                key,
                policy: &policy,
                class: *class,
                headroom: headrooms[*class as usize],
                id: res.id,
                slot: res.slot,
                mark: res.mark,
                lease: None,
            };
            if let Advance::Moved(a) = redis.advance(&call(r)).await.unwrap() {
                clock.set(a.now);
                let b = memory.advance_now(&call(m));
                assert_eq!(Some(a), b, "step {step}: advance");
                r.slot = a.slot;
                m.slot = a.slot;
                moved += 1;
            }
        } else if live.is_empty() || next(10) < 6 {
            let class = next(3) as u8;
            let call = ReserveCall {
                key,
                policy: &policy,
                class,
                headroom: headrooms[class as usize],
                cost: policy.units(Cost::split(next(400), next(200))),
                max_wait: (next(4) == 0).then_some(3.0),
                max_queue: (next(5) == 0).then_some(6),
                lease: None,
            };
            match redis.reserve(&call).await.unwrap() {
                Ok(r) => {
                    clock.set(r.now);
                    let m = memory.reserve_now(&call).unwrap_or_else(|e| {
                        panic!("step {step}: memory refused ({e}), redis granted {r:?}")
                    });
                    assert_eq!(r.slot.to_bits(), m.slot.to_bits(), "step {step}: slot");
                    assert_eq!(r.position, m.position, "step {step}: position");
                    assert_eq!(r.mark, m.mark, "step {step}: mark");
                    grants += 1;
                    live.push((class, r, m));
                }
                // A refusal writes nothing; the time it was decided at is
                // unknown here, so the memory store is not asked.
                Err(_) => refused += 1,
            }
        } else {
            let (class, r, m) = live.swap_remove(next(live.len() as u64) as usize);
            let actual = match next(3) {
                0 => [0.0; DIMENSIONS],
                1 => {
                    let mut a = policy.units(Cost::split(next(100), next(50)));
                    a[0] = r.mark.cost[0];
                    a
                }
                _ => {
                    let mut a = policy.units(Cost::split(300 + next(300), 100 + next(200)));
                    a[0] = r.mark.cost[0];
                    a
                }
            };
            let call = |res: &Reserved| SettleCall {
                key,
                policy: &policy,
                class,
                id: res.id,
                slot: res.slot,
                mark: res.mark,
                actual,
            };
            let (got, now) = redis.settle_timed(&call(&r)).await.unwrap();
            clock.set(now);
            let want = memory.settle_now(&call(&m));
            assert_eq!(got, want, "step {step}: settlement");
            if got.held.iter().any(|&h| h > 0.0) {
                held += 1;
            }
            if actual == [0.0; DIMENSIONS] {
                cancels += 1;
            } else {
                settles += 1;
            }
        }
        let redis_state = redis.snapshot(key, &policy).await.unwrap().state;
        assert_eq!(
            redis_state,
            memory.snapshot_now(key).state,
            "step {step}: state"
        );
    }
    println!("mirror: {grants} grants, {settles} settlements, {cancels} cancellations, {refused} refusals, {moved} moves, {held} refunds held back");
    assert!(
        grants > 100 && settles > 20 && cancels > 10 && refused > 0 && moved >= least_moves,
        "the sequence must exercise every path: {grants} grants, {settles} settlements, \
         {cancels} cancellations, {refused} refusals, {moved} moves"
    );
}

/// `SCRIPT FLUSH` drops the scripts; the next acquire loads them again by
/// itself and succeeds.
#[tokio::test]
async fn scripts_reload_after_script_flush() {
    let server = RedisServer::start();
    let store = Store::redis(&server.url()).await.unwrap();
    let limiter = RateLimiter::with_store(&store, "flush", Limits::new().rpm(100)).unwrap();
    let first = limiter.acquire(Cost::request_only()).await.unwrap();
    assert!(first.store_reachable());
    server.cli(&["SCRIPT", "FLUSH"]);
    assert!(server.cli(&["SCRIPT", "EXISTS", "0"]).contains('0'));
    let second = limiter.acquire(Cost::request_only()).await.unwrap();
    assert!(
        second.store_reachable(),
        "the acquire after SCRIPT FLUSH fell back"
    );
    assert!(second.id() > first.id());
    limiter.settle(second, Cost::request_only()).await.unwrap();
    server.cli(&["SCRIPT", "FLUSH"]);
    let status = limiter.status().await.unwrap();
    assert_eq!(status.queue_depth, 0);
    assert_eq!(
        limiter.stats().store_errors,
        0,
        "NOSCRIPT must not count as a store error"
    );
}

/// The keys carry the limiter key as hash tag, have a TTL of about the
/// backlog plus the idle margin, and vanish once idle.
#[tokio::test]
async fn keys_use_the_hash_tag_and_expire_when_idle() {
    let server = RedisServer::start();
    let options = RedisOptions::default().idle_ttl(std::time::Duration::from_millis(300));
    let store = RedisStore::connect(&server.url(), options).await.unwrap();
    let (state, queue) = store.key_names("openai/gpt-4o");
    assert_eq!(state, "tollgate:{openai/gpt-4o}:s");
    assert_eq!(queue, "tollgate:{openai/gpt-4o}:q0");
    let store = Store::Redis(store);
    let limiter = RateLimiter::with_store(
        &store,
        "openai/gpt-4o",
        Limits::new().requests(2).window_secs(1.0),
    )
    .unwrap();
    let opts = tollgate::AcquireOptions::default();
    let _a = limiter.reserve(Cost::request_only(), &opts).await.unwrap();
    let _b = limiter.reserve(Cost::request_only(), &opts).await.unwrap();
    let c = limiter.reserve(Cost::request_only(), &opts).await.unwrap();
    assert!(c.waited().as_secs_f64() > 0.4);
    let keys = server.cli(&["KEYS", "*"]);
    assert!(keys.contains(&state) && keys.contains(&queue), "{keys}");
    // Backlog 1.5 s (three requests at 0.5 s each) + one to two 0.3 s margins.
    let ttl: i64 = server.cli(&["PTTL", &state]).trim().parse().unwrap();
    assert!((1_700..=2_150).contains(&ttl), "ttl {ttl} ms");
    let ttl_q: i64 = server.cli(&["PTTL", &queue]).trim().parse().unwrap();
    assert!(ttl_q > 0 && ttl_q <= ttl, "queue ttl {ttl_q} ms");
    assert!(
        server
            .cli(&["PTTL", &state.replace(":s", ":h0")])
            .trim()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    // One field holds the key's numbers (see reserve.lua).
    let fields = server.cli(&["HKEYS", &state]);
    assert_eq!(fields.trim(), "s", "{fields}");
    tokio::time::sleep(std::time::Duration::from_millis(2_300)).await;
    // Only the store's epoch stays: it tells an idle key from a lost store.
    assert_eq!(
        server.cli(&["KEYS", "*"]).trim(),
        "tollgate:epoch",
        "idle keys must expire"
    );
}

/// Ids keep growing when a key is created again after it expired: they
/// start from the clock in microseconds.
#[tokio::test]
async fn ids_do_not_repeat_after_expiry() {
    let server = RedisServer::start();
    let store = Store::redis(&server.url()).await.unwrap();
    let limiter = RateLimiter::with_store(&store, "ids", Limits::new().rpm(1000)).unwrap();
    let a = limiter.acquire(Cost::request_only()).await.unwrap();
    server.cli(&["FLUSHALL"]);
    let b = limiter.acquire(Cost::request_only()).await.unwrap();
    assert!(b.id() > a.id(), "{} then {}", a.id(), b.id());
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(
        a.id().abs_diff(now_us) < 60_000_000,
        "id {} is not near the clock",
        a.id()
    );
}

/// The state the scripts store survives a round trip exactly: what status
/// reports equals the core's arithmetic on the same numbers.
#[tokio::test]
async fn stored_floats_round_trip() {
    let server = RedisServer::start();
    let store = redis_store(&server).await;
    let policy = Limits::new().tokens(3).window_secs(0.1).validate().unwrap();
    let call = ReserveCall {
        key: "floats",
        policy: &policy,
        class: 0,
        headroom: 1.0,
        cost: policy.units(Cost::tokens(1)),
        max_wait: None,
        max_queue: None,
        lease: None,
    };
    let r = store.reserve(&call).await.unwrap().unwrap();
    let snap = store.snapshot("floats", &policy).await.unwrap();
    // 0.1 / 3 has no short decimal form: the stored TAT must still be exact.
    assert_eq!(snap.state.tat[1], r.mark.end[1]);
    assert_eq!(snap.state.tat[1], r.now.max(0.0) + 0.1 / 3.0);
    assert_eq!(snap.state, {
        let mut s = KeyState::default();
        s.tat[1] = r.mark.end[1];
        s
    });
}

/// A settlement made by a process that never saw a priority class queue on
/// the key still respects that class's reservations queued behind it: the
/// script asks for the class's headroom index and the store calls again.
#[tokio::test]
async fn a_settlement_respects_classes_only_another_process_queued() {
    let server = RedisServer::start();
    let (one, other) = (redis_store(&server).await, redis_store(&server).await);
    // 1000 tokens a second: T = 1 ms, tau = 1 s.
    let policy = Limits::new()
        .tokens(1_000)
        .window_secs(1.0)
        .validate()
        .unwrap();
    let call = |class: u8, headroom: f64, tokens: u64| ReserveCall {
        key: "classes",
        policy: &policy,
        class,
        headroom,
        cost: policy.units(Cost::tokens(tokens)),
        max_wait: None,
        max_queue: None,
        lease: None,
    };
    let first = one.reserve(&call(0, 1.0, 600)).await.unwrap().unwrap();
    // TAT now + 0.6 s; class 3 sees the bucket full at half its size, so 400
    // more tokens wait 0.5 s, promised the 0.1 s of headroom left before them.
    let queued = other.reserve(&call(3, 0.5, 400)).await.unwrap().unwrap();
    assert!(queued.slot - queued.now > 0.45, "{queued:?}");
    let settle = call(0, 1.0, 600).settlement(&first, policy.units(Cost::tokens(100)));
    let settled = one.settle(&settle).await.unwrap();
    assert!(
        (settled.refunded[1] - 100.0).abs() < 1e-3,
        "the refund must stop at the queued class's headroom (100 tokens), not 500: {settled:?}"
    );
}

/// A queued reservation cancelled twice (its lease ran out and another
/// process cancelled it, then its own dropped future did) gives back once:
/// the second cancellation writes nothing, on Redis as in memory.
#[tokio::test]
async fn a_second_cancel_of_a_queued_reservation_writes_nothing() {
    let server = RedisServer::start();
    let redis = Store::Redis(redis_store(&server).await);
    for store in [redis, Store::memory()] {
        let policy = Limits::new()
            .requests(1)
            .window_secs(1.0)
            .validate()
            .unwrap();
        let call = ReserveCall {
            key: "twice",
            policy: &policy,
            class: 0,
            headroom: 1.0,
            cost: policy.units(Cost::request_only()),
            max_wait: None,
            max_queue: None,
            lease: None,
        };
        store.reserve(&call).await.unwrap().unwrap();
        let queued = store.reserve(&call).await.unwrap().unwrap();
        assert!(queued.slot > queued.now);
        let cancel = call.settlement(&queued, [0.0; DIMENSIONS]);
        let first = store.settle(&cancel).await.unwrap();
        assert!(first.returned[0] > 0.9, "{first:?}");
        let after_first = store.snapshot("twice", &policy).await.unwrap().state;
        let second = store.settle(&cancel).await.unwrap();
        assert_eq!(second.returned, [0.0; DIMENSIONS], "{store:?}");
        let after_second = store.snapshot("twice", &policy).await.unwrap().state;
        assert_eq!(after_first, after_second, "{store:?}");
    }
}

/// Bytes Redis holds for one limiter key (`MEMORY USAGE` of each of its
/// keys, the store-wide epoch aside).
fn key_bytes(server: &RedisServer, key: &str) -> (u64, Vec<String>) {
    let names = server.cli(&["--scan", "--pattern", &format!("tollgate:{{{key}}}:*")]);
    let names: Vec<String> = names.lines().map(str::to_string).collect();
    let total = names
        .iter()
        .map(|n| {
            server
                .cli(&["MEMORY", "USAGE", n, "SAMPLES", "0"])
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("MEMORY USAGE of {n}"))
        })
        .sum();
    (total, names)
}

/// A key that admitted and settled a request (below its estimate, so a
/// refund is recorded) takes at most 200 bytes of Redis memory.
#[tokio::test]
async fn a_busy_key_takes_at_most_200_bytes() {
    let server = RedisServer::start();
    let store = Store::redis(&server.url()).await.unwrap();
    let key = "openai/gpt-4o-mini";
    let limiter =
        RateLimiter::with_store(&store, key, Limits::new().rpm(10_000).tpm(2_000_000)).unwrap();
    for _ in 0..3 {
        let permit = limiter.acquire(Cost::split(500, 200)).await.unwrap();
        limiter.settle(permit, Cost::split(500, 50)).await.unwrap();
    }
    let (bytes, names) = key_bytes(&server, key);
    println!("{bytes} B in {names:?}");
    assert!(bytes <= 200, "{bytes} B in {names:?}");
}
