//! The load worker: one OS process (the harness re-executes itself with
//! `worker`) running several tasks that acquire through tollgate, call the
//! stand-in and settle. The Python worker (`py/worker.py`) takes the same
//! configuration and writes the same report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tollgate::store::RedisOptions;
use tollgate::{Cost, Error, Limits, OutagePolicy, RateLimiter, RetryConfig, Source};

use crate::client::StandinClient;
use crate::now_unix;

/// What one worker process does. Serialised to JSON on the command line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerConfig {
    /// Worker number (labels its calls, seeds its randomness).
    pub id: usize,
    /// Store URL for tollgate (`memory://`, `redis://…`, `rediss://…`,
    /// `redis+cluster://…`).
    pub url: String,
    /// Limiter keys; task `i` uses key `i % keys.len()`.
    pub keys: Vec<String>,
    /// The stand-in of each key (same length as `keys`).
    pub standins: Vec<SocketAddr>,
    /// Requests per window.
    pub requests: u64,
    /// Tokens per window.
    pub tokens: u64,
    /// Window in seconds.
    pub window_secs: f64,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Unix time at which the tasks start (so that all processes start together).
    pub start_at: f64,
    /// Unix time after which no task asks for another call.
    pub stop_at: f64,
    /// Smallest call, tokens.
    pub min_tokens: u64,
    /// Largest call, tokens.
    pub max_tokens: u64,
    /// Estimate = factor × actual (1 = exact).
    pub estimate_factor: f64,
    /// Settle every call with its actual usage.
    pub settle: bool,
    /// Outage policy: `open`, `closed` or `local:<share>`.
    pub outage: String,
    /// Retries of transient store errors.
    pub retries: u32,
    /// First retry delay, ms.
    pub retry_base_ms: u64,
    /// Longest retry delay, ms.
    pub retry_max_ms: u64,
    /// Pause after a refused or failed acquire, ms (avoids a hot loop).
    pub error_pause_ms: u64,
    /// Pause between calls of one task, ms (0 = back to back).
    pub think_ms: u64,
    /// How the Python worker maps a call onto its limiter: `split` (output
    /// tokens, so that `adjust` refunds) or `combined` (`tpm`). Ignored by tollgate.
    #[serde(default)]
    pub variant: String,
    /// CA certificate for `rediss://` (the harness's own CA).
    #[serde(default)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Every this many ms, a probe task reads the key's status from the store
    /// and records whether it answered (0 = no probe).
    #[serde(default)]
    pub probe_ms: u64,
    /// Redis connect timeout, ms (tollgate's default: 1000).
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Redis response timeout, ms (tollgate's default: 500).
    #[serde(default = "default_response_ms")]
    pub response_timeout_ms: u64,
}

fn default_connect_ms() -> u64 {
    1000
}

fn default_response_ms() -> u64 {
    500
}

impl WorkerConfig {
    /// The Redis settings: timeouts and the CA to trust.
    pub fn redis_options(&self) -> RedisOptions {
        let mut o = RedisOptions::default()
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms))
            .response_timeout(Duration::from_millis(self.response_timeout_ms));
        if let Some(ca) = &self.ca_cert {
            o = o.ca_cert(ca);
        }
        o
    }

    /// The longest `acquire` may take before its slot when the store fails:
    /// every attempt timing out on a reconnection plus an answer, and the
    /// retry delays between them (a small allowance for scheduling added).
    pub fn outage_bound(&self) -> Duration {
        let retry = self.retry();
        let attempt = Duration::from_millis(self.connect_timeout_ms + self.response_timeout_ms);
        attempt * (retry.max_retries + 1) + retry.worst_case_total() + Duration::from_millis(100)
    }

    /// The retry settings.
    pub fn retry(&self) -> RetryConfig {
        RetryConfig {
            max_retries: self.retries,
            base_delay: Duration::from_millis(self.retry_base_ms),
            max_delay: Duration::from_millis(self.retry_max_ms.max(self.retry_base_ms)),
            ..RetryConfig::default()
        }
    }

    /// The outage policy named by [`WorkerConfig::outage`].
    pub fn outage_policy(&self) -> anyhow::Result<OutagePolicy> {
        match self.outage.as_str() {
            "open" => Ok(OutagePolicy::Open),
            "closed" => Ok(OutagePolicy::Closed),
            s => match s.strip_prefix("local:").map(str::parse::<f64>) {
                Some(Ok(share)) => Ok(OutagePolicy::Local { share }),
                _ => anyhow::bail!("outage policy {s:?}: use open, closed or local:<share>"),
            },
        }
    }
}

/// One call as its worker saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerCall {
    /// Worker number.
    pub worker: usize,
    /// Index of the key in [`WorkerConfig::keys`].
    pub key: usize,
    /// When the task asked its limiter, Unix seconds.
    pub asked: f64,
    /// When `acquire` returned, Unix seconds.
    pub acquired: f64,
    /// How long the permit said the call had to wait for its slot, seconds
    /// (0 for refusals and outage decisions).
    pub waited: f64,
    /// `store`, `open`, `local`, `closed` (StoreUnavailable), `rate_limited`,
    /// `store_error`, `other`.
    pub outcome: String,
    /// HTTP status from the stand-in (0: not sent).
    pub status: u16,
    /// Actual tokens of the call.
    pub tokens: u64,
    /// Seconds the settlement took (0: not settled), and whether it failed.
    pub settle_secs: f64,
    /// The error, if acquire or settle failed.
    pub error: Option<String>,
}

/// What a worker process reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct WorkerReport {
    /// Every call.
    pub calls: Vec<WorkerCall>,
    /// Outages the limiters logged (each begins when the store fails after
    /// retries and ends at its next success).
    pub outages_logged: u64,
    /// Probe results: (Unix seconds when the probe returned, whether the store answered).
    #[serde(default)]
    pub probes: Vec<(f64, bool)>,
}

/// Runs the worker's tasks until `stop_at` and reports every call.
pub async fn run(cfg: WorkerConfig) -> anyhow::Result<WorkerReport> {
    anyhow::ensure!(
        !cfg.keys.is_empty() && cfg.keys.len() == cfg.standins.len(),
        "worker needs one stand-in per key"
    );
    let policy = cfg.outage_policy()?;
    let mut limiters = Vec::new();
    for key in &cfg.keys {
        let limiter = RateLimiter::builder(key)
            .url(&cfg.url)
            .limits(
                Limits::new()
                    .requests(cfg.requests)
                    .tokens(cfg.tokens)
                    .window_secs(cfg.window_secs),
            )
            .retry(cfg.retry())
            .outage(policy)
            .redis_options(cfg.redis_options())
            .build()
            .await
            .with_context(|| format!("building the limiter for {key} on {}", cfg.url))?;
        limiters.push(limiter);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..cfg.tasks {
        let key = t % cfg.keys.len();
        let limiter = limiters[key].clone();
        let cfg = cfg.clone();
        tasks.spawn(async move { task(cfg, t, key, limiter).await });
    }
    let probe = (cfg.probe_ms > 0).then(|| {
        let limiter = limiters[0].clone();
        let (every, stop_at) = (Duration::from_millis(cfg.probe_ms), cfg.stop_at);
        tokio::spawn(async move {
            let mut probes = Vec::new();
            while now_unix() < stop_at {
                let ok = limiter.status().await.is_ok();
                probes.push((now_unix(), ok));
                tokio::time::sleep(every).await;
            }
            probes
        })
    });
    let mut report = WorkerReport::default();
    while let Some(done) = tasks.join_next().await {
        report.calls.extend(done.context("a worker task panicked")?);
    }
    if let Some(p) = probe {
        report.probes = p.await.context("the probe task panicked")?;
    }
    report.outages_logged = limiters.iter().map(|l| l.stats().outages).sum();
    Ok(report)
}

async fn task(cfg: WorkerConfig, t: usize, key: usize, limiter: RateLimiter) -> Vec<WorkerCall> {
    let mut rng = rand::rngs::StdRng::seed_from_u64((cfg.id * 1000 + t) as u64 ^ 0x7011_6a7e);
    let label = format!("tollgate-w{}-t{t}", cfg.id);
    let mut client = StandinClient::new(cfg.standins[key], &label);
    // Connect before the start, so that the first calls do not arrive late
    // by a TCP handshake (the stand-in's bucket would then start draining
    // later than the limiter's model of it).
    client.warm().await;
    let wait = cfg.start_at - now_unix();
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    let mut calls = Vec::new();
    while now_unix() < cfg.stop_at {
        let tokens = rng.random_range(cfg.min_tokens..=cfg.max_tokens);
        let estimate = ((tokens as f64) * cfg.estimate_factor).round() as u64;
        let asked = now_unix();
        let started = Instant::now();
        let acquired = limiter.acquire(Cost::tokens(estimate)).await;
        let mut call = WorkerCall {
            worker: cfg.id,
            key,
            asked,
            acquired: asked + started.elapsed().as_secs_f64(),
            waited: 0.0,
            outcome: String::new(),
            status: 0,
            tokens,
            settle_secs: 0.0,
            error: None,
        };
        match acquired {
            Ok(permit) => {
                call.waited = permit.waited().as_secs_f64();
                call.outcome = match permit.source() {
                    Source::Store => "store",
                    Source::Open => "open",
                    Source::Local => "local",
                }
                .into();
                match client.call(tokens, asked).await {
                    Ok(status) => call.status = status,
                    Err(e) => call.error = Some(format!("stand-in: {e:#}")),
                }
                // A 429 used nothing; a success used `tokens`.
                let used = if call.status == 200 { tokens } else { 0 };
                if cfg.settle {
                    let s = Instant::now();
                    if let Err(e) = limiter.settle(permit, Cost::tokens(used)).await {
                        call.error = Some(format!("settle: {e}"));
                    }
                    call.settle_secs = s.elapsed().as_secs_f64().max(1e-9);
                }
            }
            Err(e) => {
                call.outcome = match &e {
                    Error::StoreUnavailable { .. } => "closed",
                    Error::RateLimited { .. } | Error::QueueFull { .. } => "rate_limited",
                    Error::Store(_) => "store_error",
                    _ => "other",
                }
                .into();
                call.error = Some(e.to_string());
            }
        }
        let failed = call.status != 200;
        calls.push(call);
        if failed && cfg.error_pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cfg.error_pause_ms)).await;
        } else if cfg.think_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cfg.think_ms)).await;
        }
    }
    calls
}
