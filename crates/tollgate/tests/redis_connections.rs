//! Reaching Redis in every supported way (TLS with a generated CA, password
//! and database in the URL, Cluster, an existing connection), and what happens
//! when it goes away (restart, pause) under each outage policy.

mod support;

use std::time::{Duration, Instant};

use tollgate::store::{RedisOptions, RedisStore};
use tollgate::{
    AcquireOptions, Cost, Error, Limits, OutagePolicy, RateLimiter, RetryConfig, Source, Store,
};

use support::{RedisCluster, RedisServer, TestCerts};

fn limits() -> Limits {
    Limits::new().rpm(600).tpm(100_000)
}

/// Acquires, queues, reports and cancels through a store: it works end to end.
async fn exercise(store: &Store, key: &str) {
    let limiter =
        RateLimiter::with_store(store, key, Limits::new().requests(2).window_secs(10.0)).unwrap();
    let a = limiter.acquire(Cost::request_only()).await.unwrap();
    assert!(a.store_reachable(), "{key}: {a:?}");
    let _b = limiter.acquire(Cost::request_only()).await.unwrap();
    let queued = limiter
        .reserve(Cost::request_only(), &AcquireOptions::default())
        .await
        .unwrap();
    assert!(
        queued.waited() > Duration::from_secs(4),
        "{key}: {queued:?}"
    );
    assert_eq!(limiter.status().await.unwrap().queue_depth, 1, "{key}");
    limiter.cancel(queued).await.unwrap();
    assert_eq!(limiter.status().await.unwrap().queue_depth, 0, "{key}");
}

/// `rediss://` to a TLS-only server whose certificate the test made: trusted
/// through the CA file, refused with an unrelated CA, accepted without
/// verification only when asked.
/// The TLS test's options: timeouts long enough for a debug build's
/// handshake on a loaded machine (it once took over the default 1 s in CI), so
/// a refusal asserted below is the certificate's, never the clock's.
fn tls_options() -> RedisOptions {
    RedisOptions::default()
        .connect_timeout(Duration::from_secs(5))
        .response_timeout(Duration::from_secs(2))
}

#[tokio::test]
async fn tls_with_a_generated_certificate() {
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls(&certs.cert, &certs.key, &certs.ca);
    assert!(server.url().starts_with("rediss://127.0.0.1:"));

    let trusted = tls_options().ca_cert(&certs.ca);
    let store = Store::redis_with(&server.url(), trusted).await.unwrap();
    exercise(&store, "tls/trusted").await;

    let wrong = tls_options().ca_cert(&certs.other_ca);
    let err = RedisStore::connect(&server.url(), wrong).await.unwrap_err();
    let msg = err.to_string().to_lowercase();
    assert!(
        msg.contains("certificate") || msg.contains("issuer"),
        "{msg}"
    );

    let insecure = tls_options().insecure_skip_verify(true);
    let store = Store::redis_with(&server.url(), insecure).await.unwrap();
    exercise(&store, "tls/insecure").await;

    let missing = tls_options().ca_cert(certs.dir().join("nope.pem"));
    let err = RedisStore::connect(&server.url(), missing)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

/// A password and a database number in the URL are used; a wrong password is
/// a permanent error that says what to check.
#[tokio::test]
async fn password_and_database_from_the_url() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", server.port());
    let store = Store::redis(&url).await.unwrap();
    exercise(&store, "auth/db3").await;
    let in_db =
        |db: &str| server.cli(&["--no-auth-warning", "-a", "s3cret", "-n", db, "KEYS", "*"]);
    assert!(
        in_db("3").contains("tollgate:{auth/db3}:s"),
        "{}",
        in_db("3")
    );
    assert!(in_db("0").trim().is_empty(), "db 0: {}", in_db("0"));

    let wrong = format!("redis://:nope@127.0.0.1:{}/3", server.port());
    let err = Store::redis(&wrong).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(
        !err.to_string().contains("nope"),
        "the password leaked: {err}"
    );
    let err = Store::redis("http://127.0.0.1:1").await.unwrap_err();
    assert!(err.to_string().contains("redis://"), "{err}");
}

/// A three-master Cluster: keys of many limiters land on different masters,
/// each limiter's keys stay in one slot, and scripts reload after a flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_spreads_limiters_over_the_masters() {
    let cluster = RedisCluster::start(3);
    let store = Store::redis(&cluster.url()).await.unwrap();
    let keys: Vec<String> = (0..9).map(|i| format!("cluster/model-{i}")).collect();
    for key in &keys {
        exercise(&store, key).await;
    }
    let Store::Redis(redis) = &store else {
        unreachable!()
    };
    let mut masters = std::collections::HashSet::new();
    for key in &keys {
        let (state, _) = redis.key_names(key);
        let node = cluster.node_holding(&state).expect("the state hash exists");
        masters.insert(node);
    }
    assert!(masters.len() >= 2, "all keys on one master: {masters:?}");

    for node in &cluster.nodes {
        node.cli(&["SCRIPT", "FLUSH"]);
    }
    exercise(&store, "cluster/after-flush").await;

    // The seed-list constructor reaches the same cluster from one node.
    let seeds = [cluster.nodes[1].addr()];
    let other = RedisStore::connect_cluster(&seeds, RedisOptions::default())
        .await
        .unwrap();
    exercise(&Store::Redis(other), "cluster/seeds").await;
}

/// A store on a connection the application made itself.
#[tokio::test]
async fn store_on_an_existing_connection() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    exercise(&Store::from_redis_connection(manager), "existing/manager").await;
    let multiplexed = client.get_multiplexed_async_connection().await.unwrap();
    let store = RedisStore::from_connection(multiplexed, RedisOptions::default().key_prefix("app"))
        .unwrap();
    let (state, _) = store.key_names("existing/multiplexed");
    exercise(&Store::Redis(store), "existing/multiplexed").await;
    assert!(server.cli(&["EXISTS", &state]).contains('1'), "{state}");
}

fn fast_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 1,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        ..RetryConfig::default()
    }
}

async fn limiter_with(url: &str, key: &str, outage: OutagePolicy) -> RateLimiter {
    RateLimiter::builder(key)
        .url(url)
        .limits(limits())
        .retry(fast_retry())
        .outage(outage)
        .redis_options(
            RedisOptions::default()
                .connect_timeout(Duration::from_millis(300))
                .response_timeout(Duration::from_millis(300)),
        )
        .build()
        .await
        .unwrap()
}

/// Redis dies: each outage policy applies (open lets through, closed refuses,
/// local limits in process), the outage is counted once; Redis comes back
/// empty on the same port: the connection heals and the scripts are loaded
/// again without anyone's help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_applies_the_outage_policy_then_recovers() {
    let mut server = RedisServer::start();
    let url = server.url();
    let open = limiter_with(&url, "outage/open", OutagePolicy::Open).await;
    let closed = limiter_with(&url, "outage/closed", OutagePolicy::Closed).await;
    let local = limiter_with(&url, "outage/local", OutagePolicy::Local { share: 0.5 }).await;
    for l in [&open, &closed, &local] {
        assert!(l.acquire(Cost::tokens(10)).await.unwrap().store_reachable());
    }

    server.kill();
    let started = Instant::now();
    for _ in 0..3 {
        let p = open.acquire(Cost::tokens(10)).await.unwrap();
        assert_eq!(p.source(), Source::Open);
        match closed.acquire(Cost::tokens(10)).await {
            Err(Error::StoreUnavailable { .. }) => {}
            other => panic!("closed policy: {other:?}"),
        }
        let p = local.acquire(Cost::tokens(10)).await.unwrap();
        assert_eq!(p.source(), Source::Local);
        local.settle(p, Cost::tokens(5)).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failing over took {:?}",
        started.elapsed()
    );
    // A local share of 50 % holds 50 000 tokens: a bigger call does not fit.
    assert!(matches!(
        local.try_acquire(Cost::tokens(60_000)).await,
        Err(Error::TooLarge(_))
    ));
    for l in [&open, &closed, &local] {
        assert_eq!(l.stats().outages, 1, "{}: one outage", l.key());
    }

    server.restart();
    for l in [&open, &closed, &local] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match l.acquire(Cost::tokens(10)).await {
                Ok(p) if p.store_reachable() => break,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => panic!("{} did not recover: {other:?}", l.key()),
            }
        }
        assert!(l.status().await.is_ok());
    }
}

/// A limiter that refuses during an outage, with no retries and 200 ms timeouts.
async fn closed_with_short_timeouts(
    server: &RedisServer,
    key: &str,
    limits: Limits,
) -> RateLimiter {
    RateLimiter::builder(key)
        .url(&server.url())
        .limits(limits)
        .retry(RetryConfig::none())
        .outage(OutagePolicy::Closed)
        .redis_options(
            RedisOptions::default()
                .connect_timeout(Duration::from_millis(200))
                .response_timeout(Duration::from_millis(200)),
        )
        .build()
        .await
        .unwrap()
}

/// A paused Redis (it holds the connection but answers nothing) fails calls
/// after the response timeout instead of hanging them; once it resumes, calls
/// succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_times_out_instead_of_hanging() {
    let server = RedisServer::start();
    let limiter = closed_with_short_timeouts(&server, "paused", limits()).await;
    let _warm = limiter.acquire(Cost::tokens(1)).await.unwrap();
    server.pause();
    let started = Instant::now();
    let result = limiter.acquire(Cost::tokens(1)).await;
    let took = started.elapsed();
    server.resume();
    assert!(
        matches!(result, Err(Error::StoreUnavailable { .. })),
        "{result:?}"
    );
    assert!(took < Duration::from_millis(1_500), "took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match limiter.acquire(Cost::tokens(1)).await {
            Ok(p) if p.store_reachable() => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("did not recover after resume: {other:?}"),
        }
    }
}

/// A call that timed out while Redis was paused is still in the socket when
/// Redis resumes; it must not charge the bucket then (its caller was already
/// answered by the outage policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_timed_out_during_a_pause_leave_nothing_behind() {
    let server = RedisServer::start();
    let limiter =
        closed_with_short_timeouts(&server, "paused-late", Limits::new().tpm(100_000)).await;
    let _warm = limiter.acquire(Cost::tokens(1_000)).await.unwrap();
    server.pause();
    let late = limiter.acquire(Cost::tokens(50_000)).await;
    assert!(
        matches!(late, Err(Error::StoreUnavailable { .. })),
        "{late:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match limiter.status().await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("did not recover after resume: {e}"),
        }
    };
    let used = status
        .dimension(tollgate::Dimension::Tokens)
        .unwrap()
        .in_use;
    assert!(
        used < 1_100.0,
        "a timed-out reservation was charged after the pause: {used} tokens in use"
    );
}

/// A call whose answer waits in this process (the runtime's one thread busy
/// for longer than the call's limit, as a burst on a loaded machine keeps
/// it) is not an outage while Redis answers: the permit comes from the
/// store. A paused Redis still fails the call, long before the connection's
/// own limit (`late_reply_timeout`).
#[tokio::test(flavor = "current_thread")]
async fn a_call_kept_waiting_by_its_own_runtime_is_not_an_outage() {
    let server = RedisServer::start();
    let limiter = closed_with_short_timeouts(&server, "busy-runtime", limits()).await;
    for round in 0..3 {
        let call = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire(Cost::tokens(10)).await }
        });
        // Runs after the call was handed to the connection, before the
        // connection's task has sent it: the reply waits for this thread.
        tokio::spawn(async { std::thread::sleep(Duration::from_millis(600)) });
        let permit = call.await.unwrap();
        assert!(
            matches!(&permit, Ok(p) if p.source() == Source::Store),
            "round {round}: {permit:?}"
        );
    }
    server.pause();
    let started = Instant::now();
    let refused = limiter.acquire(Cost::tokens(10)).await;
    let waited = started.elapsed();
    server.resume();
    assert!(
        matches!(refused, Err(Error::StoreUnavailable { .. })),
        "{refused:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}
