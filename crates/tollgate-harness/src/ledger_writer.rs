//! How many ledger rows a second the gateway's writer puts into SQLite and
//! PostgreSQL (a server of its own, fsync on), batched as the gateway does,
//! beside the same rows inserted one transaction each (what a writer without
//! batching would do). Each figure is the median of `runs` runs.

use std::time::{Duration, Instant};

use anyhow::Context;
use tollgate_gateway::ledger::{LedgerSettings, Row, Store, UsageLedger, WriterConfig};

use crate::postgres::PostgresServer;
use crate::procs::TempDir;

/// What to measure.
#[derive(Debug, Clone)]
pub struct WriterBenchOptions {
    /// Rows per batched run.
    pub rows: usize,
    /// Rows per one-at-a-time run (fewer: it is slow).
    pub single_rows: usize,
    /// Runs of each (the median is reported).
    pub runs: usize,
}

/// One line of the result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriterBenchRow {
    /// `sqlite` or `postgres`.
    pub database: String,
    /// `writer (batches of 500)` or `one row per transaction`.
    pub how: String,
    /// Rows per run.
    pub rows: usize,
    /// Median rows per second.
    pub rows_per_sec: f64,
    /// Every run's rows per second.
    pub runs: Vec<f64>,
}

fn row(i: usize) -> Row {
    let now = tollgate_gateway::ledger::row::now_ms();
    Row {
        request_id: uuid::Uuid::now_v7(),
        started_at_ms: now,
        finished_at_ms: now + 40,
        client: format!("client-{}", i % 1000),
        tier: "professional".into(),
        route: "gpt-4o-mini".into(),
        requested_model: "gpt-4o-mini".into(),
        served_model: "gpt-4o-mini".into(),
        baseline_model: "gpt-4o-mini".into(),
        attempts: 1,
        est_input_tokens: 120,
        est_output_tokens: 512,
        input_tokens: 118,
        output_tokens: 240,
        cost_micro_usd: 162,
        baseline_cost_micro_usd: 162,
        queue_wait_us: 0,
        upstream_latency_us: Some(41_000),
        first_token_us: Some(9_000),
        outcome: "ok".into(),
        error_code: None,
        instance: "bench".into(),
        org: None,
        key_id: None,
        budget_level: None,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Records `rows` rows through a fresh writer on `url` and waits until all
/// are in: rows per second.
async fn batched(url: &str, dir: &TempDir, n: usize, rows: usize) -> anyhow::Result<f64> {
    let settings = LedgerSettings {
        url: url.to_string(),
        spool: dir.path().join(format!("bench-{n}.spool")),
        temporary_spool: false,
        instance: "bench".into(),
        writer: WriterConfig {
            queue_rows: rows + 1,
            ..WriterConfig::default()
        },
    };
    let ledger = UsageLedger::open(&settings).await?;
    let made: Vec<Row> = (0..rows).map(row).collect();
    let started = Instant::now();
    for r in made {
        ledger.record(r);
    }
    ledger.flush().await;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        ledger.spooled() == 0,
        "rows were spooled: the database failed"
    );
    ledger.close().await;
    Ok(rows as f64 / secs)
}

async fn one_by_one(store: &Store, rows: usize) -> anyhow::Result<f64> {
    let made: Vec<Row> = (0..rows).map(row).collect();
    let started = Instant::now();
    for r in &made {
        store.insert(std::slice::from_ref(r)).await?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Runs the benchmark.
pub fn run(opts: &WriterBenchOptions) -> anyhow::Result<Vec<WriterBenchRow>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = TempDir::new("ledger-bench")?;
    let pg = PostgresServer::start().context("starting PostgreSQL")?;
    let sqlite = dir.path().join("ledger.sqlite").display().to_string();
    let mut out = Vec::new();
    rt.block_on(async {
        for (database, url) in [("sqlite", sqlite.as_str()), ("postgres", &pg.url())] {
            let mut runs = Vec::new();
            for n in 0..opts.runs {
                runs.push(batched(url, &dir, n, opts.rows).await?);
            }
            out.push(WriterBenchRow {
                database: database.into(),
                how: format!("writer (batches of {})", WriterConfig::default().batch_rows),
                rows: opts.rows,
                rows_per_sec: median(&mut runs.clone()),
                runs,
            });
            let store = Store::open(url).await?;
            let mut runs = Vec::new();
            for _ in 0..opts.runs {
                runs.push(one_by_one(&store, opts.single_rows).await?);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            out.push(WriterBenchRow {
                database: database.into(),
                how: "one row per transaction".into(),
                rows: opts.single_rows,
                rows_per_sec: median(&mut runs.clone()),
                runs,
            });
        }
        anyhow::Ok(())
    })?;
    Ok(out)
}

/// The result as a table.
pub fn table(rows: &[WriterBenchRow]) -> String {
    let mut s = format!(
        "{:<9} {:<26} {:>8} {:>12}  runs\n",
        "database", "how", "rows", "rows/s"
    );
    for r in rows {
        let runs: Vec<String> = r.runs.iter().map(|v| format!("{v:.0}")).collect();
        s.push_str(&format!(
            "{:<9} {:<26} {:>8} {:>12.0}  {}\n",
            r.database,
            r.how,
            r.rows,
            r.rows_per_sec,
            runs.join(" ")
        ));
    }
    s
}
