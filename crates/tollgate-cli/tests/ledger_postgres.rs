//! The usage ledger on a real PostgreSQL server of the test's own: rows kept
//! once however often they are written, and a server stopped and started
//! again under load loses and doubles nothing (the spool takes the rows
//! meanwhile and is replayed in order).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tollgate_gateway::budget::Level;
use tollgate_gateway::ledger::{GroupBy, LedgerSettings, Row, Store, UsageLedger, WriterConfig};
use tollgate_harness::postgres::PostgresServer;

fn row(client: &str, cost: i64) -> Row {
    let id = uuid::Uuid::now_v7();
    Row {
        request_id: id,
        started_at_ms: tollgate_gateway::ledger::row::now_ms(),
        finished_at_ms: tollgate_gateway::ledger::row::now_ms(),
        client: client.into(),
        tier: "pro".into(),
        route: "gpt-4o-mini".into(),
        requested_model: "gpt-4o-mini".into(),
        served_model: "gpt-4o-mini".into(),
        baseline_model: "gpt-4o-mini".into(),
        attempts: 1,
        est_input_tokens: 10,
        est_output_tokens: 50,
        input_tokens: 9,
        output_tokens: 40,
        cost_micro_usd: cost,
        baseline_cost_micro_usd: cost,
        queue_wait_us: 0,
        upstream_latency_us: Some(1000),
        first_token_us: Some(300),
        outcome: "ok".into(),
        error_code: None,
        instance: "t".into(),
        org: Some("org-1".into()),
        key_id: Some(format!("key_{client}")),
        budget_level: (cost % 7 == 0).then(|| "organisation".into()),
    }
}

#[tokio::test]
async fn postgres_keeps_each_row_once_and_sums_them() {
    let pg = PostgresServer::start_with(false).expect("PostgreSQL");
    let store = Store::open(&pg.url()).await.expect("open");
    // A second open (another instance starting) applies no migration twice.
    let other = Store::open(&pg.url()).await.expect("open again");
    let rows: Vec<Row> = (0..1_500)
        .map(|i| row(if i % 3 == 0 { "a" } else { "b" }, i))
        .collect();
    assert_eq!(store.insert(&rows[..1_000]).await.unwrap(), 1_000);
    assert_eq!(
        other.insert(&rows[500..]).await.unwrap(),
        500,
        "overlap kept once"
    );
    let back = store.rows().await.unwrap();
    assert_eq!(back.len(), 1_500);
    let mut want = rows.clone();
    want.sort_by_key(|r| r.request_id.to_string());
    assert_eq!(back, want, "every column back as written");
    let sums = store.usage(GroupBy::Client, 0, i64::MAX).await.unwrap();
    let total: i64 = sums.iter().map(|s| s.cost_micro_usd).sum();
    assert_eq!(total, (0..1_500).sum::<i64>());
    let spend = store.spend("a", 0, 0).await.unwrap();
    assert_eq!(spend.month, (0..1_500).filter(|i| i % 3 == 0).sum::<i64>());
    // Every level's spend, as the budgets rebuild it (migration 3).
    let org = store.spend_of(Level::Org, "org-1", 0, 0).await.unwrap();
    assert_eq!(org.month, total);
    let key = store.spend_of(Level::Key, "key_a", 0, 0).await.unwrap();
    assert_eq!(key.month, spend.month);
    let keys = store.all_spend_of(Level::Key, 0, 0).await.unwrap();
    assert_eq!(keys.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_loses_and_doubles_nothing() {
    let mut pg = PostgresServer::start_with(false).expect("PostgreSQL");
    let dir = std::env::temp_dir().join(format!("tollgate-pg-spool-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let settings = LedgerSettings {
        url: pg.url(),
        spool: dir.join("ledger.spool"),
        temporary_spool: false,
        instance: "t".into(),
        writer: WriterConfig {
            flush_interval: Duration::from_millis(20),
            retry_interval: Duration::from_millis(100),
            ..WriterConfig::default()
        },
    };
    let ledger = std::sync::Arc::new(UsageLedger::open(&settings).await.expect("open"));
    // A steady load of rows, 4 a millisecond, for 3 s.
    let load = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                for _ in 0..4 {
                    ledger.record(row("acme", 1));
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    pg.stop().expect("stop PostgreSQL");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let spooled = ledger.spooled();
    assert!(
        spooled > 0,
        "rows went to the spool while the database was down"
    );
    pg.start_again().expect("start PostgreSQL again");
    let sent = load.await.unwrap();
    ledger.flush().await;
    // The writer replays the spool with its next batch.
    let started = Instant::now();
    while ledger.spooled() > 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ledger.flush().await;
    }
    let s = ledger.stats();
    assert_eq!(ledger.spooled(), 0, "the spool was replayed");
    assert!(s.spooled.load(Relaxed) > 0 && s.replayed.load(Relaxed) >= s.spooled.load(Relaxed));
    assert_eq!(s.lost.load(Relaxed), 0);
    let store = Store::open(&pg.url()).await.unwrap();
    let rows = store.rows().await.unwrap();
    assert_eq!(
        rows.len() as u64,
        sent,
        "every row once: none lost, none doubled"
    );
    ledger.close().await;
    let _ = std::fs::remove_dir_all(dir);
}
