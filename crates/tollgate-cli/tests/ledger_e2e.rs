//! The usage ledger end to end: `tollgate serve` processes, a real Redis and
//! a real PostgreSQL of the test's own, a simulated upstream.
//!
//! - 10,000 requests over two instances leave exactly one row each, answered,
//!   refused and failed alike, and the report's totals are the rows' sums and
//!   the upstream's usage × prices to the micro-dollar;
//! - PostgreSQL stopped under load and started again: no row lost or doubled;
//! - a gateway killed with SIGKILL loses at most the rows of its last flush
//!   interval, and its restart replays its spool;
//! - Redis restarted empty: a client that had spent its budget is still
//!   refused (spend rebuilt from the ledger).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chat, send, Answer, Dir, Gateway, ADMIN, INPUT_PRICE, OUTPUT_PRICE};
use tollgate_gateway::ledger::{GroupBy, MicroPrice, Row, Store};
use tollgate_gateway::upstream_sim::{self, SimConfig};
use tollgate_harness::postgres::PostgresServer;
use tollgate_harness::procs::{RedisServer, RedisSpec};

use common::client as http;

async fn sim() -> upstream_sim::SimUpstream {
    upstream_sim::start(
        SimConfig {
            latency: Duration::from_millis(1),
            chunk_interval: Duration::ZERO,
            completion_tokens: 16,
            faults: Default::default(),
        },
        0,
    )
    .await
    .expect("simulated upstream")
}

/// Rows in the ledger once they stop changing and reach `want` (or after
/// `within`).
async fn rows_when(store: &Store, want: usize, within: Duration) -> Vec<Row> {
    let started = Instant::now();
    loop {
        let rows = store.rows().await.expect("rows");
        if rows.len() >= want || started.elapsed() > within {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `n` requests, `concurrency` at a time, the i-th made by `pick(i)`
/// (gateway url, client, body).
async fn load(
    n: usize,
    concurrency: usize,
    pick: impl Fn(usize) -> (String, &'static str, serde_json::Value) + Send + Sync + 'static,
) -> Vec<Answer> {
    load_until(n, concurrency, Arc::default(), pick).await
}

/// [`load`] that stops early once `stop` is set.
async fn load_until(
    n: usize,
    concurrency: usize,
    stop: Arc<AtomicBool>,
    pick: impl Fn(usize) -> (String, &'static str, serde_json::Value) + Send + Sync + 'static,
) -> Vec<Answer> {
    let c = http();
    let pick = Arc::new(pick);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, pick, next, stop) = (c.clone(), pick.clone(), next.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || stop.load(Ordering::Relaxed) {
                    return out;
                }
                let (url, who, body) = pick(i);
                out.push(send(&c, &url, who, &body).await);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn price() -> MicroPrice {
    MicroPrice::from_usd_per_mtok(INPUT_PRICE, OUTPUT_PRICE)
}

/// Every answer that got an id has exactly one row with that id, and no row
/// has an id that was not answered.
fn one_row_per_answer(answers: &[Answer], rows: &[Row]) {
    let answered: HashSet<&str> = answers.iter().filter_map(|a| a.id.as_deref()).collect();
    assert_eq!(
        answered.len(),
        answers.len(),
        "every answer carries its own id"
    );
    let ids: Vec<String> = rows.iter().map(|r| r.request_id.to_string()).collect();
    let unique: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(unique.len(), rows.len(), "no row twice");
    let missing: Vec<&&str> = answered
        .iter()
        .filter(|id| !unique.contains(**id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "answers without a row, e.g. {missing:?}"
    );
    assert_eq!(rows.len(), answers.len(), "rows equal requests exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_over_two_instances_leave_one_row_each_and_reports_add_up() {
    let dir = Dir::new("ledger-10k");
    let redis = RedisServer::start(RedisSpec::default()).expect("redis-server");
    let pg = PostgresServer::start_with(false).expect("PostgreSQL");
    let sim = sim().await;
    let mut config = common::config(
        &sim.base_url(),
        &[
            ("pro", common::tier(10_000_000, None)),
            // 60 a minute: most of its requests are refused.
            ("tight", common::tier(60, None)),
            // A budget of $0.0004: a few requests, then refusals.
            ("broke", common::tier(10_000_000, Some(0.0004))),
        ],
    );
    config.store.url = redis.url();
    config.ledger.url = pg.url();
    let mut a_cfg = config.clone();
    a_cfg.ledger.instance = Some("a".into());
    let mut b_cfg = config;
    b_cfg.ledger.instance = Some("b".into());
    let a = Gateway::start(&dir.0, "a", a_cfg).await;
    let b = Gateway::start(&dir.0, "b", b_cfg).await;
    let urls = [a.url.clone(), b.url.clone()];
    const N: usize = 10_000;
    let answers = load(N, 48, move |i| {
        let url = urls[i % 2].clone();
        match i % 20 {
            0 => (url, "tight", chat("gpt-4o-mini", i, 32)),
            1 => (url, "broke", chat("gpt-4o-mini", i, 32)),
            2 => (url, "pro", chat("broken", i, 32)),
            _ => (url, "pro", chat("gpt-4o-mini", i, 32)),
        }
    })
    .await;
    assert_eq!(answers.len(), N);
    let store = Store::open(&pg.url()).await.unwrap();
    let rows = rows_when(&store, N, Duration::from_secs(20)).await;
    one_row_per_answer(&answers, &rows);

    // Each row tells how its request ended, as its answer did.
    let by_id: HashMap<String, &Row> = rows.iter().map(|r| (r.request_id.to_string(), r)).collect();
    let mut statuses: HashMap<(u16, String), usize> = HashMap::new();
    let mut expected_spend = 0i64;
    for a in &answers {
        let row = by_id[a.id.as_deref().unwrap()];
        *statuses.entry((a.status, row.outcome.clone())).or_default() += 1;
        if a.status == 200 {
            let (i, o) = a.usage.expect("usage in every answer");
            assert_eq!((row.input_tokens, row.output_tokens), (i as i64, o as i64));
            let cost = price().cost_micro_usd(i, o);
            assert_eq!(row.cost_micro_usd, cost, "row {}", row.request_id);
            expected_spend += cost;
        } else {
            assert_eq!(row.cost_micro_usd, 0, "{row:?}");
        }
    }
    let count = |status: u16, outcome: &str| {
        statuses
            .get(&(status, outcome.to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert!(count(429, "rate_limited") > 0, "{statuses:?}");
    assert!(count(429, "budget_exceeded") > 0, "{statuses:?}");
    assert!(
        count(502, "upstream_error") + count(503, "upstream_error") > 0,
        "{statuses:?}"
    );
    assert!(count(200, "ok") > N / 2, "{statuses:?}");
    let instances: HashSet<&str> = rows.iter().map(|r| r.instance.as_str()).collect();
    assert_eq!(instances, HashSet::from(["a", "b"]));

    // The report's totals are the rows' sums and the upstream's usage × prices.
    let report = http()
        .get(format!("{}/admin/usage?group_by=client", a.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 200);
    let report: serde_json::Value = report.json().await.unwrap();
    let total = &report["total"];
    assert_eq!(total["requests"], N as i64);
    assert_eq!(total["spend_micro_usd"], expected_spend);
    let row_spend: i64 = rows.iter().map(|r| r.cost_micro_usd).sum();
    assert_eq!(row_spend, expected_spend);
    let refused: i64 = rows.iter().filter(|r| r.is_refusal()).count() as i64;
    let reported_refused: i64 = total["refused"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(reported_refused, refused);
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{groups:?}");
    let csv = admin_text(&format!("{}/admin/usage?group_by=model", b.url), "text/csv").await;
    let last = csv.lines().last().unwrap();
    assert!(last.starts_with(&format!("total,{N},")), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("broken,")), "{csv}");
    // `tollgate report` reads the same ledger.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["report", "--group-by", "tier", "--config"])
        .arg(&a.config_path)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dollars = tollgate_gateway::ledger::report::dollars(expected_spend);
    assert!(table.lines().last().unwrap().contains(&dollars), "{table}");
    let _ = store.usage(GroupBy::Day, 0, i64::MAX).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_and_started_again_loses_and_doubles_no_row() {
    let dir = Dir::new("ledger-pg-stop");
    let mut pg = PostgresServer::start_with(false).expect("PostgreSQL");
    let sim = sim().await;
    let mut config = common::config(&sim.base_url(), &[("pro", common::tier(10_000_000, None))]);
    config.ledger.url = pg.url();
    config.ledger.flush_interval_ms = 50;
    let gw = Gateway::start(&dir.0, "a", config).await;
    let url = gw.url.clone();
    let run = tokio::spawn(load(3_000, 8, move |i| {
        (url.clone(), "pro", chat("gpt-4o-mini", i, 16))
    }));
    tokio::time::sleep(Duration::from_millis(600)).await;
    pg.stop().unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    pg.start_again().unwrap();
    let answers = run.await.unwrap();
    let store = Store::open(&pg.url()).await.unwrap();
    let rows = rows_when(&store, answers.len(), Duration::from_secs(20)).await;
    one_row_per_answer(&answers, &rows);
    let metrics = admin_text(&format!("{}/metrics", gw.url), "text/plain").await;
    let spooled = metric(&metrics, "tollgate_ledger_spooled_total");
    assert!(spooled > 0.0, "rows went through the spool: {metrics}");
    assert_eq!(metric(&metrics, "tollgate_ledger_spool_rows"), 0.0);
    assert_eq!(metric(&metrics, "tollgate_ledger_lost_total"), 0.0);
}

/// The body of an admin GET of `url`, accepting `accept`.
async fn admin_text(url: &str, accept: &str) -> String {
    http()
        .get(url)
        .bearer_auth(ADMIN)
        .header("accept", accept)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_load_loses_at_most_its_flush_window_and_replays_its_spool() {
    const FLUSH_MS: u64 = 200;
    let dir = Dir::new("ledger-kill");
    let mut pg = PostgresServer::start_with(false).expect("PostgreSQL");
    let sim = sim().await;
    let mut config = common::config(&sim.base_url(), &[("pro", common::tier(10_000_000, None))]);
    config.ledger.url = pg.url();
    config.ledger.flush_interval_ms = FLUSH_MS;
    let mut gw = Gateway::start(&dir.0, "a", config).await;
    let url = gw.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(load_until(100_000, 8, stop.clone(), move |i| {
        (url.clone(), "pro", chat("gpt-4o-mini", i, 16))
    }));
    // Load with the database up, then down (rows go to the spool), then the
    // kill while it is still down.
    tokio::time::sleep(Duration::from_millis(800)).await;
    pg.stop().unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    gw.kill();
    let killed = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let answers: Vec<Answer> = run
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.status == 200)
        .collect();
    assert!(answers.len() > 50, "load ran: {} answers", answers.len());
    pg.start_again().unwrap();
    let store = Store::open(&pg.url()).await.unwrap();
    let before = store.rows().await.unwrap().len();
    // The restart replays what the killed process spooled.
    let _gw = Gateway::start_file(&gw.config_path, "a-again").await;
    let rows = rows_when(&store, answers.len(), Duration::from_secs(10)).await;
    assert!(
        rows.len() > before,
        "the restart replayed the spool ({before} before)"
    );
    let ids: HashSet<String> = rows.iter().map(|r| r.request_id.to_string()).collect();
    assert_eq!(ids.len(), rows.len(), "no row twice");
    let lost: Vec<&Answer> = answers
        .iter()
        .filter(|a| !ids.contains(a.id.as_deref().unwrap()))
        .collect();
    // What a kill can lose: the rows of the last flush interval (and one
    // write); answered earlier than that, a row is in the database or the
    // spool. The margin covers the client's view of "answered".
    let window = Duration::from_millis(FLUSH_MS + 300);
    for a in &lost {
        let age = killed.saturating_duration_since(a.at);
        assert!(
            age <= window,
            "a row answered {age:?} before the kill was lost (window {window:?})"
        );
    }
    eprintln!(
        "killed after {} answers: {} rows lost, the oldest answered {:?} before the kill",
        answers.len(),
        lost.len(),
        lost.iter()
            .map(|a| killed.saturating_duration_since(a.at))
            .max()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_spent_its_budget_is_still_refused_after_redis_restarts_empty() {
    let dir = Dir::new("ledger-budget");
    let mut redis = RedisServer::start(RedisSpec::default()).expect("redis-server");
    let sim = sim().await;
    let mut config = common::config(
        &sim.base_url(),
        &[("broke", common::tier(10_000_000, Some(0.0004)))],
    );
    config.store.url = redis.url();
    config.ledger.url = dir.0.join("ledger.sqlite").display().to_string();
    let gw = Gateway::start(&dir.0, "a", config).await;
    let c = http();
    let mut ok = 0;
    let mut refused = None;
    for i in 0..200 {
        let a = send(&c, &gw.url, "broke", &chat("gpt-4o-mini", i, 32)).await;
        match a.status {
            200 => ok += 1,
            429 => {
                refused = Some(i);
                break;
            }
            s => panic!("status {s}"),
        }
    }
    assert!(
        ok > 0 && refused.is_some(),
        "{ok} answered, then refused at {refused:?}"
    );
    redis.restart().unwrap();
    // The gateway's connection comes back; the budget must hold at once.
    let mut seen = Vec::new();
    for i in 0..20 {
        let a = send(&c, &gw.url, "broke", &chat("gpt-4o-mini", 1000 + i, 32)).await;
        seen.push(a.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !seen.contains(&200),
        "spent budget granted again after the reset: {seen:?}"
    );
    assert!(seen.contains(&429), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_falls_back_leaves_one_row_with_every_attempt() {
    let dir = Dir::new("ledger-fallback");
    let sim = sim().await;
    let mut config = common::config(&sim.base_url(), &[("pro", common::tier(10_000_000, None))]);
    // `broken` fails before the first byte; its fallback answers.
    config
        .providers
        .get_mut("down")
        .unwrap()
        .models
        .get_mut("broken")
        .unwrap()
        .fallbacks = vec!["gpt-4o-mini".into()];
    let ledger = dir.0.join("ledger.sqlite");
    config.ledger.url = ledger.display().to_string();
    let gw = Gateway::start(&dir.0, "a", config).await;
    let answers = load(20, 4, {
        let url = gw.url.clone();
        move |i| (url.clone(), "pro", chat("broken", i, 16))
    })
    .await;
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    let store = Store::open(ledger.to_str().unwrap()).await.unwrap();
    let rows = rows_when(&store, answers.len(), Duration::from_secs(10)).await;
    one_row_per_answer(&answers, &rows);
    for (r, a) in rows.iter().map(|r| {
        let a = answers
            .iter()
            .find(|a| a.id.as_deref() == Some(&r.request_id.to_string()))
            .unwrap();
        (r, a)
    }) {
        assert_eq!(r.attempts, 2, "{r:?}");
        assert_eq!(r.outcome, "ok");
        assert_eq!(r.requested_model, "broken");
        assert_eq!(r.served_model, "gpt-4o-mini");
        let (i, o) = a.usage.unwrap();
        assert_eq!(r.cost_micro_usd, price().cost_micro_usd(i, o), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_admission_leaves_one_row_charged_nothing() {
    let dir = Dir::new("ledger-gone");
    let redis = RedisServer::start(RedisSpec::default()).expect("redis-server");
    let sim = sim().await;
    let mut config = common::config(
        &sim.base_url(),
        &[("pro", common::tier(10_000_000, Some(10.0)))],
    );
    config.store.url = redis.url();
    let ledger = dir.0.join("ledger.sqlite");
    config.ledger.url = ledger.display().to_string();
    let gw = Gateway::start(&dir.0, "a", config).await;
    let c = http();
    // One answered request first, so that every connection is open and warm.
    let first = send(&c, &gw.url, "pro", &chat("gpt-4o-mini", 0, 16)).await;
    assert_eq!(first.status, 200);
    // The store is frozen while the next request is admitted, and its client
    // gives up before the gateway can answer.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    redis.pause();
    let gone = send(&impatient, &gw.url, "pro", &chat("gpt-4o-mini", 1, 4_000)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.resume();
    assert_eq!(gone.status, 0, "the frozen store cannot have let it answer");
    let store = Store::open(ledger.to_str().unwrap()).await.unwrap();
    // Exactly two rows: a third, if the gone request's admission finishing
    // in the background wrote one of its own, is given 3 s to show.
    let rows = rows_when(&store, 3, Duration::from_secs(3)).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let left: Vec<&Row> = rows
        .iter()
        .filter(|r| Some(r.request_id.to_string()) != first.id)
        .collect();
    assert_eq!(left.len(), 1, "{rows:?}");
    assert_eq!(left[0].outcome, "client_gone", "{:?}", left[0]);
    assert_eq!(left[0].cost_micro_usd, 0, "{:?}", left[0]);
    assert_eq!(left[0].output_tokens, 0, "{:?}", left[0]);
}
