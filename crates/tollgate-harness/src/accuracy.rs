//! The accuracy run: several worker processes, each with several tasks, send
//! calls of random size through one shared limiter to the stand-in; the
//! stand-in's records show whether the limit held and how much of it was used.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bucket::{analyse, Analysis};
use crate::fleet::{ClientKind, Fleet};
use crate::now_unix;
use crate::procs::{RedisServer, RedisSpec, TempDir, TlsFiles};
use crate::standin::{Standin, StandinConfig};
use crate::table::Table;
use crate::worker::{WorkerConfig, WorkerReport};

/// Which store the tollgate workers share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreKind {
    /// A standalone redis-server the harness starts.
    Redis,
    /// A TLS-only redis-server with certificates the harness makes.
    Tls,
    /// The in-memory store: one worker process only (it cannot be shared).
    Memory,
}

/// Estimates the workers make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Estimate = actual usage; no settlement.
    Exact,
    /// Estimate = 2 × actual; every call settled with its actual usage.
    Double,
}

impl Mode {
    /// `exact` or `double+settle`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::Double => "double+settle",
        }
    }
}

/// The settings of an accuracy run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccuracyOptions {
    /// Seconds of load per run.
    pub duration: f64,
    /// Worker processes.
    pub processes: usize,
    /// Tasks per process.
    pub tasks: usize,
    /// Window of the limits, seconds.
    pub window_secs: f64,
    /// Tokens per window.
    pub tokens: u64,
    /// Requests per window.
    pub requests: u64,
    /// Smallest call.
    pub min_tokens: u64,
    /// Largest call.
    pub max_tokens: u64,
    /// Stand-in's jitter allowance, ms.
    pub tolerance_ms: f64,
    /// Jitter below which FIFO order is not judged, ms.
    pub fifo_jitter_ms: f64,
    /// Simulated call latency range, ms.
    pub latency_ms: (u64, u64),
    /// Store for tollgate.
    pub store: StoreKind,
    /// Limiters to run, in order.
    pub clients: Vec<ClientKind>,
    /// Modes to run, in order.
    pub modes: Vec<Mode>,
    /// Also run the Python library with its combined `tpm` (whose `adjust`
    /// cannot refund) in the double mode.
    pub python_combined: bool,
}

impl Default for AccuracyOptions {
    fn default() -> Self {
        AccuracyOptions {
            duration: 60.0,
            processes: 4,
            tasks: 16,
            window_secs: 10.0,
            tokens: 400_000,
            requests: 1_000,
            min_tokens: 100,
            max_tokens: 4_000,
            tolerance_ms: 5.0,
            fifo_jitter_ms: 5.0,
            latency_ms: (20, 200),
            store: StoreKind::Redis,
            clients: vec![ClientKind::Tollgate],
            modes: vec![Mode::Exact, Mode::Double],
            python_combined: false,
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccuracyRow {
    /// `tollgate` or `llmratelimiter` (and its variant).
    pub client: String,
    /// The mode's name.
    pub mode: String,
    /// The store (`redis`, `tls`, `memory`, `cluster`).
    pub store: String,
    /// Tokens per window.
    pub limit: u64,
    /// What the stand-in saw.
    pub analysis: Analysis,
    /// Calls whose acquire failed (any error).
    pub acquire_errors: u64,
    /// Permits not decided by the store (outage policy).
    pub not_from_store: u64,
    /// Median and largest time `acquire` took beyond the slot's wait, ms.
    pub overhead_ms: (f64, f64),
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccuracyReport {
    /// The settings.
    pub options: AccuracyOptions,
    /// One row per (client, mode).
    pub rows: Vec<AccuracyRow>,
}

impl AccuracyReport {
    /// The report as a Markdown table.
    pub fn table(&self) -> String {
        rows_table(&self.rows)
    }
}

/// Renders accuracy rows as a table.
pub fn rows_table(rows: &[AccuracyRow]) -> String {
    let mut t = Table::new(&[
        "limiter",
        "mode",
        "store",
        "calls",
        "429s",
        "utilisation",
        "max window (steady)",
        "max window (any)",
        "FIFO inversions",
        "max early (ms)",
        "acquire errors",
    ]);
    for r in rows {
        let a = &r.analysis;
        t.row(&[
            r.client.clone(),
            r.mode.clone(),
            r.store.clone(),
            a.calls.to_string(),
            a.rejected.to_string(),
            format!("{:.1}%", a.utilisation * 100.0),
            format!(
                "{:.3} × limit",
                a.max_window_tokens_steady as f64 / r.limit as f64
            ),
            format!("{:.3} × limit", a.max_window_tokens as f64 / r.limit as f64),
            format!("{} / {}", a.fifo_inversions, a.fifo_pairs),
            format!("{:.2}", a.max_early_by * 1000.0),
            r.acquire_errors.to_string(),
        ]);
    }
    t.render()
}

/// Runs every (client, mode) of the options, one after the other, against one
/// store the harness starts.
pub fn run(opts: &AccuracyOptions) -> anyhow::Result<AccuracyReport> {
    let dir = TempDir::new("accuracy")?;
    let redis = match opts.store {
        StoreKind::Memory => None,
        StoreKind::Redis => Some(RedisServer::start(RedisSpec::default())?),
        StoreKind::Tls => Some(RedisServer::start(RedisSpec {
            tls: Some(TlsFiles::generate(dir.path())?),
            cluster: false,
        })?),
    };
    let url = redis
        .as_ref()
        .map(tls_url)
        .unwrap_or_else(|| "memory://".to_string());
    let python_url = redis
        .as_ref()
        .map(|r| format!("redis://127.0.0.1:{}", r.port));
    let store = match opts.store {
        StoreKind::Redis => "redis",
        StoreKind::Tls => "redis-tls",
        StoreKind::Memory => "memory",
    };
    let mut rows = Vec::new();
    for &client in &opts.clients {
        let mut variants = vec![(client, String::new())];
        if client == ClientKind::Python && opts.python_combined {
            variants.push((client, "combined".to_string()));
        }
        for &mode in &opts.modes {
            for (client, variant) in &variants {
                if !variant.is_empty() && mode == Mode::Exact {
                    continue;
                }
                let url = match client {
                    ClientKind::Tollgate => url.clone(),
                    ClientKind::Python => match (&python_url, opts.store) {
                        (Some(u), StoreKind::Redis) => u.clone(),
                        _ => anyhow::bail!(
                            "the Python library runs on plain Redis only (--store redis)"
                        ),
                    },
                };
                let label = match variant.as_str() {
                    "" => client.name().to_string(),
                    v => format!("{} ({v})", client.name()),
                };
                let row = run_one(opts, *client, variant, mode, &url, store, &label, &dir)?;
                eprintln!("{}", rows_table(std::slice::from_ref(&row)));
                rows.push(row);
            }
        }
    }
    Ok(AccuracyReport {
        options: opts.clone(),
        rows,
    })
}

/// The URL tollgate uses for a server.
pub fn tls_url(r: &RedisServer) -> String {
    r.url()
}

/// The CA certificate the harness made in `dir`, if any (TLS runs).
fn tls_ca(dir: &TempDir) -> Option<std::path::PathBuf> {
    let ca = dir.path().join("ca.crt");
    ca.is_file().then_some(ca)
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    opts: &AccuracyOptions,
    client: ClientKind,
    variant: &str,
    mode: Mode,
    url: &str,
    store: &str,
    label: &str,
    dir: &TempDir,
) -> anyhow::Result<AccuracyRow> {
    let standin = Standin::start(standin_config(opts), 0)?;
    let ca_cert = tls_ca(dir);
    let (processes, tasks) = if opts.store == StoreKind::Memory && client == ClientKind::Tollgate {
        (1, opts.processes * opts.tasks)
    } else {
        (opts.processes, opts.tasks)
    };
    let lead = if client == ClientKind::Python {
        3.0
    } else {
        1.0
    };
    let start_at = now_unix() + lead;
    let stop_at = start_at + opts.duration;
    let key = format!(
        "acc-{}-{}-{}",
        label.replace([' ', '(', ')'], ""),
        mode.name(),
        std::process::id()
    );
    let configs: Vec<WorkerConfig> = (0..processes)
        .map(|id| WorkerConfig {
            id,
            url: url.to_string(),
            keys: vec![key.clone()],
            standins: vec![standin.addr()],
            requests: opts.requests,
            tokens: opts.tokens,
            window_secs: opts.window_secs,
            tasks,
            start_at,
            stop_at,
            min_tokens: opts.min_tokens,
            max_tokens: opts.max_tokens,
            estimate_factor: if mode == Mode::Double { 2.0 } else { 1.0 },
            settle: mode == Mode::Double,
            outage: "open".into(),
            retries: 3,
            retry_base_ms: 20,
            retry_max_ms: 500,
            error_pause_ms: 50,
            think_ms: 0,
            variant: variant.to_string(),
            ca_cert: ca_cert.clone(),
            probe_ms: 0,
            connect_timeout_ms: 1000,
            response_timeout_ms: 500,
        })
        .collect();
    eprintln!(
        "{label} {} on {store}: {processes} processes × {tasks} tasks for {:.0} s, \
         {} tokens / {} requests per {:.0} s",
        mode.name(),
        opts.duration,
        opts.tokens,
        opts.requests,
        opts.window_secs
    );
    let fleet = Fleet::spawn(client, &configs, dir.path())?;
    // Queued calls finish after stop_at: at most the backlog of every task.
    let drain = opts.window_secs * 2.0 + 30.0;
    let deadline = Instant::now() + Duration::from_secs_f64(lead + opts.duration + drain);
    let t0 = start_at;
    let reports = fleet.wait(deadline, || {
        let (calls, rejected, tokens) = standin.counts();
        eprintln!(
            "  [{label} {}] t={:5.1}s calls={calls} 429s={rejected} tokens admitted={tokens}",
            mode.name(),
            now_unix() - t0
        );
    })?;
    let records = standin.records();
    standin.stop();
    let analysis = analyse(
        &records,
        opts.tokens,
        opts.window_secs,
        start_at + opts.window_secs,
        stop_at,
        opts.fifo_jitter_ms / 1000.0,
    );
    Ok(row(
        client,
        label,
        mode,
        store,
        opts.tokens,
        analysis,
        &reports,
    ))
}

/// Builds a report row from the analysis and the workers' reports.
pub fn row(
    _client: ClientKind,
    label: &str,
    mode: Mode,
    store: &str,
    limit: u64,
    analysis: Analysis,
    reports: &[WorkerReport],
) -> AccuracyRow {
    let calls = reports.iter().flat_map(|r| &r.calls);
    let mut overhead: Vec<f64> = Vec::new();
    let (mut errors, mut not_store) = (0, 0);
    for c in calls {
        if c.outcome == "store" {
            overhead.push(((c.acquired - c.asked) - c.waited).max(0.0) * 1000.0);
        } else if matches!(c.outcome.as_str(), "open" | "local") {
            not_store += 1;
        } else {
            errors += 1;
        }
    }
    overhead.sort_by(f64::total_cmp);
    AccuracyRow {
        client: label.to_string(),
        mode: mode.name().to_string(),
        store: store.to_string(),
        limit,
        analysis,
        acquire_errors: errors,
        not_from_store: not_store,
        overhead_ms: (
            crate::quantile(&overhead, 0.5),
            overhead.last().copied().unwrap_or(0.0),
        ),
    }
}

/// The stand-in that enforces the run's limits.
pub fn standin_config(opts: &AccuracyOptions) -> StandinConfig {
    StandinConfig {
        requests: opts.requests,
        tokens: opts.tokens,
        window_secs: opts.window_secs,
        tolerance: opts.tolerance_ms / 1000.0,
        latency_ms: opts.latency_ms,
    }
}
