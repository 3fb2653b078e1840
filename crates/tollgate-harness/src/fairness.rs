//! Tiers sharing one provider model through the gateway (issue 14): two
//! gateway instances on one Redis in front of the token-bucket stand-in,
//! a free-tier flood from the start, steady professional traffic from the
//! second phase, and enterprise traffic in bursts (on one phase, off the
//! next). Every tier's floor and weight are the gateway's `floor` and
//! `weight`; the stand-in's bucket has the model's limits exactly.
//!
//! Each phase is measured from `SETTLE` seconds after its start to its end,
//! from what the stand-in admitted (labelled by tier): each tier's share of
//! the model's rate against its floor and against the weighted share over
//! the tiers backlogged then (`floor_k + w_k / Σw × (1 − Σfloor)`, both
//! sums over those tiers). Targets: no upstream 429; utilisation ≥ 97%; a
//! tier alone ≥ 95% of the rate; each backlogged tier at least 95% of its
//! floor; where every tier is backlogged, each tier's excess above its
//! floor within 10% of its weighted part. Where a tier is idle, its share
//! is borrowed first-come by priority, not by weight (reported, not held
//! to the weights).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tollgate_gateway::config::{ClientConfig, Config, ModelConfig, ProviderConfig, TierConfig};

use crate::procs::{RedisServer, RedisSpec};
use crate::standin::{Standin, StandinConfig};
use crate::table::Table;
use crate::{now_unix, quantile};

/// Seconds after a phase starts before it is measured (queues settle).
const SETTLE: f64 = 4.0;
/// The model's limits: tokens a minute (binding) and requests a minute.
const TPM: u64 = 600_000;
const RPM: u64 = 6_000;
/// The model's bucket holds this part of a minute (3 s of its rate).
const BURST: f64 = 0.05;
/// Completion tokens of every call (plus one prompt token at the stand-in).
const MAX_TOKENS: u64 = 250;
/// The stand-in's answer latency, ms.
const LATENCY_MS: u64 = 50;
/// How long a caller refused by the gateway pauses before it asks again.
const REFUSED_PAUSE: Duration = Duration::from_millis(250);

/// One tier of the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TierSpec {
    /// Its name (also the client's).
    pub name: &'static str,
    /// Guaranteed share of the model.
    pub floor: f64,
    /// Weight in the excess.
    pub weight: f64,
    /// Priority class (0 = top).
    pub priority: u8,
    /// Longest wait, ms.
    pub max_wait_ms: u64,
    /// Closed-loop callers while the tier sends.
    pub callers: usize,
}

/// The tiers: free floods, professional is steady, enterprise bursts.
pub const TIERS: [TierSpec; 3] = [
    TierSpec {
        name: "enterprise",
        floor: 0.3,
        weight: 3.0,
        priority: 0,
        max_wait_ms: 30_000,
        callers: 32,
    },
    TierSpec {
        name: "free",
        floor: 0.05,
        weight: 1.0,
        priority: 3,
        max_wait_ms: 2_000,
        callers: 48,
    },
    TierSpec {
        name: "professional",
        floor: 0.3,
        weight: 2.0,
        priority: 1,
        max_wait_ms: 10_000,
        callers: 12,
    },
];

/// Options of a run.
#[derive(Debug, Clone)]
pub struct FairnessOptions {
    /// Seconds of each phase.
    pub phase_secs: f64,
    /// Number of phases: free alone, free + professional, then enterprise
    /// on and off in turn (at least 4).
    pub phases: usize,
}

/// Which tiers send in phase `i`.
fn senders(i: usize) -> Vec<&'static str> {
    match i {
        0 => vec!["free"],
        1 => vec!["free", "professional"],
        i if i % 2 == 0 => vec!["enterprise", "free", "professional"],
        _ => vec!["free", "professional"],
    }
}

/// One tier in one phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TierPhase {
    /// The tier.
    pub tier: String,
    /// Its floor.
    pub floor: f64,
    /// Its weighted share over the tiers sending then.
    pub expected: f64,
    /// Its share of the model's rate, as the stand-in admitted it.
    pub got: f64,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    /// Which tiers sent.
    pub senders: Vec<String>,
    /// Measured from, to (seconds since the start).
    pub window: (f64, f64),
    /// The stand-in's tokens admitted ÷ its rate over the window (the
    /// tiers' shares summed; above 1 where a burst was used).
    pub used: f64,
    /// Per sending tier.
    pub tiers: Vec<TierPhase>,
}

/// One tier over the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TierTotal {
    /// The tier.
    pub tier: String,
    /// Requests sent per second of the phases it sent in.
    pub demand_rps: f64,
    /// Requests answered 200 per second of those phases.
    pub throughput_rps: f64,
    /// Median and 99th percentile wait in the gateway's queue, seconds
    /// (answer time less the stand-in's latency).
    pub wait_p50: f64,
    /// See `wait_p50`.
    pub wait_p99: f64,
    /// Requests the gateway refused (429).
    pub refused: u64,
    /// Other answers that were not 200.
    pub errors: u64,
}

/// A run's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FairnessReport {
    /// Seconds of load.
    pub secs: f64,
    /// Calls the stand-in answered 429.
    pub upstream_429: u64,
    /// Utilisation from the first phase's settling to the end.
    pub utilisation: f64,
    /// Each phase.
    pub phases: Vec<Phase>,
    /// Each tier.
    pub tiers: Vec<TierTotal>,
    /// Targets missed (empty: all met).
    pub missed: Vec<String>,
    /// Observations outside the targets (idle tiers' shares).
    pub notes: Vec<String>,
}

/// One answered request.
#[derive(Debug, Clone, Copy)]
struct Answer {
    took: f64,
    status: u16,
}

fn gateway_config(standin: &str, redis: &str) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.store.url = redis.to_string();
    c.ledger.url = "off".into();
    let model = ModelConfig {
        upstream_name: None,
        kind: Default::default(),
        rpm: Some(RPM),
        tpm: Some(TPM),
        input_tpm: None,
        output_tpm: None,
        burndown: 1.0,
        burst: BURST,
        input_usd_per_mtok: 0.0,
        output_usd_per_mtok: 0.0,
        context_window: 128_000,
        default_max_tokens: MAX_TOKENS,
        tokenizer: Some("approx".into()),
        fallbacks: Vec::new(),
        floors: Default::default(),
    };
    c.providers.insert(
        "standin".into(),
        ProviderConfig {
            base_url: format!("http://{standin}/v1"),
            api_key_env: None,
            models: BTreeMap::from([("m".to_string(), model)]),
        },
    );
    for t in TIERS {
        c.tiers.insert(
            t.name.into(),
            TierConfig {
                rpm: Some(1_000_000),
                tpm: Some(1_000_000_000),
                burst: 1.0,
                priority: t.priority,
                max_wait_ms: t.max_wait_ms,
                daily_budget_usd: None,
                monthly_budget_usd: None,
                floor: Some(t.floor),
                weight: Some(t.weight),
                lendable: None,
            },
        );
        c.clients.push(ClientConfig {
            id: t.name.into(),
            tier: t.name.into(),
            key_sha256: vec![tollgate_gateway::auth::hash_key(&format!("key-{}", t.name))],
            limits: Default::default(),
        });
    }
    c
}

/// Runs the load and measures it.
pub fn run(opts: &FairnessOptions) -> anyhow::Result<FairnessReport> {
    anyhow::ensure!(opts.phases >= 4, "--phases must be at least 4");
    anyhow::ensure!(
        opts.phase_secs > SETTLE + 2.0 && opts.phase_secs <= 600.0,
        "--phase-secs must be in ({}, 600]",
        SETTLE + 2.0
    );
    let redis = RedisServer::start(RedisSpec::default())?;
    let window = 60.0 * BURST;
    let standin = Standin::start(
        StandinConfig {
            requests: (RPM as f64 * BURST) as u64,
            tokens: (TPM as f64 * BURST) as u64,
            window_secs: window,
            tolerance: 0.05,
            latency_ms: (LATENCY_MS, LATENCY_MS),
        },
        0,
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = gateway_config(&standin.addr().to_string(), &redis.url());
    let (answers, t0) = rt.block_on(async {
        let mut a = tollgate_gateway::start(config.clone())
            .await
            .context("gateway a")?;
        let mut b = tollgate_gateway::start(config).await.context("gateway b")?;
        let urls = [a.url(), b.url()];
        let out = load(opts, &urls).await;
        a.stop();
        b.stop();
        anyhow::Ok(out)
    })?;
    let records = standin.records();
    drop(standin);
    drop(redis);
    Ok(analyse(opts, t0, &records, &answers))
}

/// Every caller of every tier, in its phases; the answers by tier.
async fn load(
    opts: &FairnessOptions,
    urls: &[String; 2],
) -> (BTreeMap<&'static str, Vec<Answer>>, f64) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("an HTTP client");
    let t0 = now_unix();
    let start = Instant::now();
    let answers: Arc<Mutex<BTreeMap<&'static str, Vec<Answer>>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in TIERS {
        for i in 0..t.callers {
            let (http, answers) = (http.clone(), answers.clone());
            let url = format!("{}/v1/chat/completions", urls[i % 2]);
            let opts = opts.clone();
            tasks.push(tokio::spawn(async move {
                let body = serde_json::json!({
                    "model": "m", "max_tokens": MAX_TOKENS,
                    "messages": [{"role": "user", "content": t.name}],
                })
                .to_string();
                let end = opts.phase_secs * opts.phases as f64;
                loop {
                    let now = start.elapsed().as_secs_f64();
                    if now >= end {
                        break;
                    }
                    let phase = (now / opts.phase_secs) as usize;
                    if !senders(phase).contains(&t.name) {
                        // Asleep until the next phase.
                        let next = (phase + 1) as f64 * opts.phase_secs;
                        tokio::time::sleep(Duration::from_secs_f64(next - now + 0.001)).await;
                        continue;
                    }
                    let sent = now_unix();
                    let r = http
                        .post(&url)
                        .bearer_auth(format!("key-{}", t.name))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .timeout(Duration::from_secs(60))
                        .send()
                        .await;
                    let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
                    let took = now_unix() - sent;
                    if let Ok(mut a) = answers.lock() {
                        a.entry(t.name).or_default().push(Answer { took, status });
                    }
                    if status != 200 {
                        tokio::time::sleep(REFUSED_PAUSE).await;
                    }
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let answers = answers.lock().map(|a| a.clone()).unwrap_or_default();
    (answers, t0)
}

/// A tier's weighted share among `sending`.
fn expected(tier: &TierSpec, sending: &[&str]) -> f64 {
    let on: Vec<&TierSpec> = TIERS.iter().filter(|t| sending.contains(&t.name)).collect();
    let floors: f64 = on.iter().map(|t| t.floor).sum();
    let weights: f64 = on.iter().map(|t| t.weight).sum();
    tier.floor + tier.weight / weights * (1.0 - floors)
}

fn analyse(
    opts: &FairnessOptions,
    t0: f64,
    records: &[crate::bucket::CallRecord],
    answers: &BTreeMap<&'static str, Vec<Answer>>,
) -> FairnessReport {
    let rate = TPM as f64 / 60.0;
    let capacity = TPM as f64 * BURST;
    let secs = opts.phase_secs * opts.phases as f64;
    let admitted = |from: f64, to: f64, tier: Option<&str>| -> f64 {
        records
            .iter()
            .filter(|r| r.admitted && tier.is_none_or(|t| r.client == t))
            .map(|r| (r.arrival - t0, r.tokens as f64))
            .filter(|(at, _)| (from..to).contains(at))
            .map(|(_, n)| n)
            .sum()
    };
    // What the bucket held at `at` (refilled from the last call before it).
    let held = |at: f64| -> f64 {
        records
            .iter()
            .rfind(|r| r.arrival - t0 < at)
            .map(|r| (r.level_after + (at - (r.arrival - t0)) * rate).min(capacity))
            .unwrap_or(capacity)
    };
    let utilisation =
        |from: f64, to: f64| admitted(from, to, None) / (held(from) + rate * (to - from));
    let mut missed = Vec::new();
    let mut notes = Vec::new();
    let upstream_429 = records.iter().filter(|r| !r.admitted).count() as u64;
    if upstream_429 > 0 {
        missed.push(format!("{upstream_429} upstream 429s"));
    }
    let whole = utilisation(SETTLE, secs);
    if whole < 0.97 {
        missed.push(format!("utilisation {:.1}% < 97%", whole * 100.0));
    }
    let mut phases = Vec::new();
    for i in 0..opts.phases {
        let (from, to) = (
            i as f64 * opts.phase_secs + SETTLE,
            (i + 1) as f64 * opts.phase_secs,
        );
        let sending = senders(i);
        let name = sending.join(" + ");
        let mut tiers = Vec::new();
        let all = sending.len() == TIERS.len();
        let got_of = |t: &TierSpec| admitted(from, to, Some(t.name)) / (rate * (to - from));
        let on: Vec<&TierSpec> = TIERS.iter().filter(|t| sending.contains(&t.name)).collect();
        let excess_got: f64 = on.iter().map(|t| (got_of(t) - t.floor).max(0.0)).sum();
        let weights: f64 = on.iter().map(|t| t.weight).sum();
        for t in &on {
            let got = got_of(t);
            let exp = expected(t, &sending);
            if sending.len() == 1 && got < 0.95 {
                missed.push(format!(
                    "phase {i} ({name}): {} alone got {:.1}% < 95%",
                    t.name,
                    got * 100.0
                ));
            }
            if got < 0.95 * t.floor {
                missed.push(format!(
                    "phase {i} ({name}): {} got {:.3} < 95% of its floor {}",
                    t.name, got, t.floor
                ));
            }
            if sending.len() > 1 {
                let part = (got - t.floor).max(0.0) / excess_got;
                let want = t.weight / weights;
                let off = (part - want).abs() / want;
                let line = format!(
                    "phase {i} ({name}): {}'s part of the excess {:.3}, its weight's {:.3} ({:+.0}%)",
                    t.name, part, want, (part / want - 1.0) * 100.0
                );
                if all && off > 0.10 {
                    missed.push(line);
                } else if !all && off > 0.10 {
                    notes.push(line);
                }
            }
            tiers.push(TierPhase {
                tier: t.name.into(),
                floor: t.floor,
                expected: exp,
                got,
            });
        }
        phases.push(Phase {
            senders: sending.iter().map(|s| s.to_string()).collect(),
            window: (from, to),
            used: admitted(from, to, None) / (rate * (to - from)),
            tiers,
        });
    }
    let mut totals = Vec::new();
    for t in TIERS {
        let list = answers.get(t.name).cloned().unwrap_or_default();
        let active: f64 = (0..opts.phases)
            .filter(|&i| senders(i).contains(&t.name))
            .count() as f64
            * opts.phase_secs;
        let mut waits: Vec<f64> = list
            .iter()
            .filter(|a| a.status == 200)
            .map(|a| (a.took - LATENCY_MS as f64 / 1000.0).max(0.0))
            .collect();
        waits.sort_by(f64::total_cmp);
        let ok = waits.len() as f64;
        let refused = list.iter().filter(|a| a.status == 429).count() as u64;
        let errors = list
            .iter()
            .filter(|a| a.status != 200 && a.status != 429)
            .count() as u64;
        if errors > 0 {
            missed.push(format!("{}: {errors} answers neither 200 nor 429", t.name));
        }
        totals.push(TierTotal {
            tier: t.name.into(),
            demand_rps: list.len() as f64 / active.max(1.0),
            throughput_rps: ok / active.max(1.0),
            wait_p50: quantile(&waits, 0.5),
            wait_p99: quantile(&waits, 0.99),
            refused,
            errors,
        });
    }
    FairnessReport {
        secs,
        upstream_429,
        utilisation: whole,
        phases,
        tiers: totals,
        missed,
        notes,
    }
}

/// The report as Markdown tables.
pub fn render(r: &FairnessReport) -> String {
    let mut out = format!(
        "Model: {TPM} TPM ({} tokens a second), {RPM} RPM, burst {BURST}; calls of {} tokens; two gateway instances on one Redis; {:.0} s of load.\n\nUpstream 429s: {}. Utilisation from {SETTLE} s to the end (tokens the stand-in admitted ÷ what its bucket allowed: what it held at {SETTLE} s plus its refill): {:.1}%.\n\n",
        TPM / 60,
        MAX_TOKENS + 1,
        r.secs,
        r.upstream_429,
        r.utilisation * 100.0
    );
    let mut t = Table::new(&[
        "tier",
        "floor",
        "weight",
        "priority",
        "demand (req/s)",
        "throughput (req/s)",
        "wait p50 (s)",
        "wait p99 (s)",
        "refused (429)",
    ]);
    for (total, spec) in r.tiers.iter().zip(TIERS) {
        t.row(&[
            total.tier.clone(),
            format!("{}", spec.floor),
            format!("{}", spec.weight),
            spec.priority.to_string(),
            format!("{:.1}", total.demand_rps),
            format!("{:.2}", total.throughput_rps),
            format!("{:.2}", total.wait_p50),
            format!("{:.2}", total.wait_p99),
            total.refused.to_string(),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    let mut t = Table::new(&[
        "phase",
        "measured (s)",
        "tier",
        "floor",
        "weighted share expected",
        "share got",
        "used (of the rate)",
    ]);
    for (i, p) in r.phases.iter().enumerate() {
        for (j, tp) in p.tiers.iter().enumerate() {
            let first = j == 0;
            t.row(&[
                if first {
                    format!("{i}: {}", p.senders.join(" + "))
                } else {
                    String::new()
                },
                if first {
                    format!("{:.0}–{:.0}", p.window.0, p.window.1)
                } else {
                    String::new()
                },
                tp.tier.clone(),
                format!("{:.2}", tp.floor),
                format!("{:.3}", tp.expected),
                format!("{:.3}", tp.got),
                if first {
                    format!("{:.1}%", p.used * 100.0)
                } else {
                    String::new()
                },
            ]);
        }
    }
    out.push_str(&t.render());
    out.push('\n');
    if r.missed.is_empty() {
        out.push_str("All targets met.\n");
    } else {
        for m in &r.missed {
            out.push_str(&format!("MISSED: {m}\n"));
        }
    }
    for n in &r.notes {
        out.push_str(&format!(
            "note (a tier idle, not held to the weights): {n}\n"
        ));
    }
    out
}
