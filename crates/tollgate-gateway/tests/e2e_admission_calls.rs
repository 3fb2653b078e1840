//! What an admitted request asks of a real `redis-server` before its
//! answer: one script call, which reserves the client bucket, the budgets
//! and the provider bucket together (all or nothing). Every script call is
//! read from Redis itself: the totals of `INFO commandstats`, and each call
//! with its keys from the slow log (every command logged), to tell the
//! settlements that follow an answer from the reservations before it.

mod common;

use common::redis::Redis;
use common::*;
use serde_json::Value;
use tollgate_gateway::RunningGateway;

/// Script calls Redis has run (`EVALSHA`, `EVAL`, `FCALL` in `INFO commandstats`).
async fn script_calls(redis: &Redis) -> u64 {
    script_usec(redis).await.0
}

/// Logs every command from now on (the slow log, with no threshold).
async fn log_every_command(redis: &Redis) {
    let mut conn = redis.connection().await;
    for (k, v) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "100000"),
    ] {
        let () = ::redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let () = ::redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// The script calls logged since [`log_every_command`]: (reservations,
/// settlements). A settlement is a call of the buckets' `settle.lua` (one
/// key, a state hash) or of the spend's `settle_many.lua` (three keys per
/// hold, the first a spend counter); the spend's own reservation takes four.
async fn logged_calls(redis: &Redis) -> (u64, u64) {
    let mut conn = redis.connection().await;
    let log: Vec<::redis::Value> = ::redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let text = |v: &::redis::Value| match v {
        ::redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    };
    let (mut reserving, mut settling) = (0, 0);
    for entry in &log {
        let ::redis::Value::Array(fields) = entry else {
            continue;
        };
        let Some(::redis::Value::Array(args)) = fields.get(3) else {
            continue;
        };
        let args: Vec<String> = args.iter().map(text).collect();
        if !matches!(args[0].to_ascii_uppercase().as_str(), "EVALSHA" | "EVAL") {
            continue;
        }
        let numkeys: usize = args[2].parse().unwrap_or(0);
        let first = args.get(3).cloned().unwrap_or_default();
        let spend_settle = first.starts_with("tollgate:spend:") && numkeys != 4;
        let bucket_settle = numkeys == 1 && first.ends_with(":s");
        if spend_settle || bucket_settle {
            settling += 1;
        } else {
            reserving += 1;
        }
    }
    (reserving, settling)
}

/// `n` requests of `who`, one after the other, each using exactly its
/// estimate (so its buckets have nothing to settle); all answered 200.
async fn sequential(gw: &RunningGateway, who: &str, n: usize) {
    let c = http();
    // 9 tokens in (the estimate's input), 20 out (its max_tokens).
    let body = chat_body("hi [sim:tokens=20]", 20);
    for _ in 0..n {
        let r = chat(&c, gw, who, &body).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{v}");
    }
}

/// Waits until Redis has run no script call for a while (the last
/// settlements are in).
async fn quiet(redis: &Redis) -> u64 {
    let mut last = script_calls(redis).await;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = script_calls(redis).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

async fn one_call_per_admission(who: &str) {
    let redis = Redis::start().await;
    let mut budgeted = tier(100_000, 100_000_000, 0, 0);
    budgeted.daily_budget_usd = Some(1_000.0);
    let tiers = [
        ("plain", tier(100_000, 100_000_000, 0, 0)),
        ("budgeted", budgeted),
    ];
    let sim = sim().await;
    let gw = gateway(shared_config(&sim.base_url(), &redis.url, &tiers)).await;
    // The scripts loaded, the buckets made.
    sequential(&gw, who, 3).await;
    let before = quiet(&redis).await;
    log_every_command(&redis).await;
    let n = 20;
    sequential(&gw, who, n).await;
    let total = quiet(&redis).await - before;
    let (reserving, settling) = logged_calls(&redis).await;
    assert_eq!(reserving + settling, total, "the slow log missed calls");
    assert!(
        reserving <= n as u64,
        "{n} admitted requests of {who} made {reserving} reserving script calls before their answers ({settling} settlements after)"
    );
    // Each answer's spend settles after it, in at most one call.
    assert!(
        total <= 2 * n as u64,
        "{n} requests of {who}: {total} script calls in all"
    );
}

#[tokio::test]
async fn an_admitted_request_reserves_in_one_script_call() {
    one_call_per_admission("plain").await;
}

#[tokio::test]
async fn an_admitted_request_with_a_budget_reserves_in_one_script_call() {
    one_call_per_admission("budgeted").await;
}

/// Script calls and their microseconds (`INFO commandstats`) so far.
async fn script_usec(redis: &Redis) -> (u64, u64) {
    let info = redis.info("commandstats").await;
    let field = |l: &str, name: &str| -> u64 {
        l.split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    info.lines()
        .filter(|l| {
            ["cmdstat_evalsha:", "cmdstat_eval:", "cmdstat_fcall:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .fold((0, 0), |(c, u), l| {
            (c + field(l, "calls"), u + field(l, "usec"))
        })
}

/// Redis's own CPU time so far (`used_cpu_user` + `used_cpu_sys` of
/// `INFO cpu`), µs: what the server spent, however busy the machine.
async fn redis_cpu_us(redis: &Redis) -> f64 {
    let info = redis.info("cpu").await;
    info.lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum::<f64>()
        * 1e6
}

/// Redis's time in scripts per request, sequential requests of a client
/// without and with a budget, 3 rounds (a measurement, not a check):
/// `cargo test -p tollgate-gateway --test e2e_admission_calls redis_time -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn redis_time_per_request() {
    let n = 300;
    for round in 1..=3 {
        for who in ["plain", "budgeted"] {
            let redis = Redis::start().await;
            let mut budgeted = tier(1_000_000, 1_000_000_000, 0, 0);
            budgeted.daily_budget_usd = Some(1_000_000.0);
            let tiers = [
                ("plain", tier(1_000_000, 1_000_000_000, 0, 0)),
                ("budgeted", budgeted),
            ];
            let sim = sim().await;
            let mut config = shared_config(&sim.base_url(), &redis.url, &tiers);
            config.ledger.url = "off".into();
            let gw = gateway(config).await;
            sequential(&gw, who, 20).await;
            quiet(&redis).await;
            let (c0, u0) = script_usec(&redis).await;
            let cpu0 = redis_cpu_us(&redis).await;
            sequential(&gw, who, n).await;
            let cpu1 = redis_cpu_us(&redis).await;
            quiet(&redis).await;
            let (c1, u1) = script_usec(&redis).await;
            println!(
                "round {round} {who}: {:.2} script calls / request, {:.1} µs in scripts (commandstats) / request, {:.1} µs Redis CPU / request",
                (c1 - c0) as f64 / n as f64,
                (u1 - u0) as f64 / n as f64,
                (cpu1 - cpu0) / n as f64
            );
        }
    }
}
