//! Reservations on several keys in one step (`RateLimiter::reserve_together`),
//! on a real `redis-server` and in memory: all granted, or none, with every
//! key's state (and on Redis its expiry) exactly as before a refusal, also
//! one of the caller's gate.

mod support;

use std::sync::LazyLock;

use tollgate::store::{Backend, Gate, GateScript, KeySnapshot};
use tollgate::{AcquireOptions, Cost, Joint, JointPart, Limits, RateLimiter, Store};

use support::RedisServer;

/// A gate that always refuses (`{7}`), and one that lets everything by.
static REFUSE: LazyLock<GateScript> = LazyLock::new(|| {
    GateScript::new(
        "local function gate(KEYS, ARGV) redis.call('SET', KEYS[1], ARGV[1]) redis.call('DEL', KEYS[1]) return {7} end\nlocal function ungate(KEYS, ARGV) end",
    )
});
static MARK: LazyLock<GateScript> = LazyLock::new(|| {
    GateScript::new(
        "local function gate(KEYS, ARGV) redis.call('SET', KEYS[1], ARGV[1]) return {0} end\nlocal function ungate(KEYS, ARGV) redis.call('DEL', KEYS[1]) end",
    )
});

fn limiters(store: &Store) -> (RateLimiter, RateLimiter) {
    let roomy =
        RateLimiter::with_store(store, "client", Limits::new().rpm(100).tpm(10_000)).unwrap();
    let tight =
        RateLimiter::with_store(store, "provider", Limits::new().rpm(2).tpm(10_000)).unwrap();
    (roomy, tight)
}

async fn snap(l: &RateLimiter) -> KeySnapshot {
    l.store().snapshot(l.key(), l.policy()).await.unwrap()
}

/// What a test reads of a key's state, besides its expiry on Redis.
async fn state_of(
    l: &RateLimiter,
    redis: Option<&RedisServer>,
) -> (tollgate_core::KeyState, String) {
    let expiry = redis.map_or(String::new(), |r| {
        r.cli(&["PEXPIRETIME", &format!("tollgate:{{{}}}:s", l.key())])
    });
    (snap(l).await.state, expiry)
}

async fn together(store: &Store, redis: Option<&RedisServer>) {
    let (client, provider) = limiters(store);
    let now = AcquireOptions::default().max_wait(std::time::Duration::ZERO);
    let cost = Cost::split(10, 20);
    let parts = [
        JointPart {
            limiter: &client,
            cost,
            options: &now,
        },
        JointPart {
            limiter: &provider,
            cost,
            options: &now,
        },
    ];
    // Both granted, twice: the provider bucket is then full.
    for _ in 0..2 {
        let Joint::Granted { permits, .. } =
            RateLimiter::reserve_together(&parts, None).await.unwrap()
        else {
            panic!("granted")
        };
        assert_eq!(permits.len(), 2);
        assert_eq!(permits[0].key(), "client");
        assert_eq!(permits[1].key(), "provider");
    }
    let before = (
        state_of(&client, redis).await,
        state_of(&provider, redis).await,
    );
    let granted = client.stats().granted;
    // The provider refuses: the client's grant is undone exactly.
    match RateLimiter::reserve_together(&parts, None).await.unwrap() {
        Joint::Refused { part: 1, error } => assert!(
            matches!(error, tollgate::Error::RateLimited { .. }),
            "{error:?}"
        ),
        other => panic!("refused by the provider: {other:?}"),
    }
    let after = (
        state_of(&client, redis).await,
        state_of(&provider, redis).await,
    );
    assert_eq!(after, before, "a refusal left a key changed");
    assert_eq!(client.stats().granted, granted);
    // A gate that refuses leaves both as they were too.
    let gate = match redis {
        Some(_) => Gate::Lua {
            script: &REFUSE,
            keys: vec!["gate-mark".into()],
            args: vec![b"1".to_vec()],
        },
        None => Gate::Local {
            check: &mut || false,
            undo: &mut || panic!("nothing to undo"),
        },
    };
    let wide = [
        JointPart {
            limiter: &client,
            cost,
            options: &now,
        },
        JointPart {
            limiter: &client,
            cost,
            options: &now,
        },
    ];
    let before = state_of(&client, redis).await;
    let answer = RateLimiter::reserve_together(&wide, Some((1, gate)))
        .await
        .unwrap();
    assert!(matches!(answer, Joint::GateRefused { .. }), "{answer:?}");
    assert_eq!(state_of(&client, redis).await, before);
    // A gate that let them by is undone when a part after it refuses.
    let mut undone = false;
    let mut check = || true;
    let mut undo = || undone = true;
    let gate = match redis {
        Some(_) => Gate::Lua {
            script: &MARK,
            keys: vec!["gate-mark".into()],
            args: vec![b"1".to_vec()],
        },
        None => Gate::Local {
            check: &mut check,
            undo: &mut undo,
        },
    };
    let answer = RateLimiter::reserve_together(&parts, Some((1, gate)))
        .await
        .unwrap();
    assert!(
        matches!(answer, Joint::Refused { part: 1, .. }),
        "{answer:?}"
    );
    match redis {
        Some(r) => assert_eq!(r.cli(&["EXISTS", "gate-mark"]).trim(), "0"),
        None => assert!(undone),
    }
    assert_eq!(state_of(&client, redis).await, before);
}

#[tokio::test]
async fn reservations_together_are_all_or_nothing_on_redis() {
    let server = RedisServer::start();
    let store = Store::redis(&server.url()).await.unwrap();
    together(&store, Some(&server)).await;
}

#[tokio::test]
async fn reservations_together_are_all_or_nothing_in_memory() {
    together(&Store::memory(), None).await;
}

/// A part before the last that would have to wait within its own longest
/// wait is not decided together: nothing is reserved.
#[tokio::test]
async fn a_first_part_that_would_queue_is_reserved_apart() {
    let server = RedisServer::start();
    for store in [Store::memory(), Store::redis(&server.url()).await.unwrap()] {
        let (client, provider) = limiters(&store);
        let patient = AcquireOptions::default().max_wait(std::time::Duration::from_secs(600));
        let cost = Cost::split(10, 20);
        let parts = [
            JointPart {
                limiter: &provider,
                cost,
                options: &patient,
            },
            JointPart {
                limiter: &client,
                cost,
                options: &patient,
            },
        ];
        for _ in 0..2 {
            let _ = provider.reserve(cost, &patient).await.unwrap();
        }
        let before = (snap(&client).await.state, snap(&provider).await.state);
        let answer = RateLimiter::reserve_together(&parts, None).await.unwrap();
        assert!(matches!(answer, Joint::Apart), "{answer:?}");
        assert_eq!(
            (snap(&client).await.state, snap(&provider).await.state),
            before
        );
    }
}

/// Redis's time (`INFO commandstats`) for reservations on two keys: one
/// joint call against two calls of `reserve.lua` (a measurement):
/// `cargo test -p tollgate --test together redis_time -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn redis_time_of_two_keys() {
    let server = RedisServer::start();
    let store = Store::redis(&server.url()).await.unwrap();
    let big = Limits::new().rpm(100_000_000).tpm(1_000_000_000);
    let a = RateLimiter::with_store(&store, "a", big.clone()).unwrap();
    let b = RateLimiter::with_store(&store, "b", big).unwrap();
    let now = AcquireOptions::default().max_wait(std::time::Duration::ZERO);
    let cost = Cost::split(10, 20);
    let parts = [
        JointPart {
            limiter: &a,
            cost,
            options: &now,
        },
        JointPart {
            limiter: &b,
            cost,
            options: &now,
        },
    ];
    let usec = || {
        let info = server.cli(&["INFO", "commandstats"]);
        info.lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .and_then(|l| {
                l.split("usec=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    let n = 2000;
    for round in 1..=3 {
        let u0 = usec();
        for _ in 0..n {
            let _ = RateLimiter::reserve_together(&parts, None).await.unwrap();
        }
        let u1 = usec();
        for _ in 0..n {
            let _ = a.reserve(cost, &now).await.unwrap();
            let _ = b.reserve(cost, &now).await.unwrap();
        }
        let u2 = usec();
        println!(
            "round {round}: together {:.1} µs, apart {:.1} µs per pair",
            (u1 - u0) as f64 / n as f64,
            (u2 - u1) as f64 / n as f64
        );
    }
}
