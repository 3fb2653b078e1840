//! The fault runs: with load running, Redis is killed and restarted, its
//! scripts flushed, the limiter's connections killed, and the server paused
//! longer than the timeouts — once per outage policy. Each run reports how
//! calls fared during the fault, how long they took, which decisions the
//! policy made and how soon the store decided again.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bucket::CallRecord;
use crate::fleet::{ClientKind, Fleet};
use crate::procs::{RedisServer, RedisSpec, TempDir};
use crate::standin::{Standin, StandinConfig};
use crate::table::Table;
use crate::worker::{WorkerCall, WorkerConfig, WorkerReport};
use crate::{now_unix, quantile};

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// SIGKILL redis-server, wait, start it again on the same port (state lost).
    Kill,
    /// `SCRIPT FLUSH`: every loaded script is gone (callers see `NOSCRIPT`).
    ScriptFlush,
    /// `CLIENT KILL TYPE normal`: every client connection is dropped.
    ClientKill,
    /// SIGSTOP redis-server for longer than the timeouts, then SIGCONT.
    Pause,
}

impl Fault {
    /// Every fault, in the order they run.
    pub const ALL: [Fault; 4] = [
        Fault::Kill,
        Fault::ScriptFlush,
        Fault::ClientKill,
        Fault::Pause,
    ];

    /// Its name on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Kill => "kill+restart",
            Fault::ScriptFlush => "script-flush",
            Fault::ClientKill => "client-kill",
            Fault::Pause => "pause",
        }
    }

    /// Parses a name (as in [`Fault::name`], or `kill`, `flush`, `clients`).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "kill" | "kill+restart" => Fault::Kill,
            "flush" | "script-flush" => Fault::ScriptFlush,
            "clients" | "client-kill" => Fault::ClientKill,
            "pause" => Fault::Pause,
            _ => anyhow::bail!("fault {s:?}: use kill, flush, clients or pause"),
        })
    }

    /// Whether Redis stays unreachable for a while (not an instant event).
    pub fn lasts(&self) -> bool {
        matches!(self, Fault::Kill | Fault::Pause)
    }
}

/// Settings of the fault runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultOptions {
    /// Outage policies: `open`, `closed`, `local:<share>`.
    pub policies: Vec<String>,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// Seconds of load before the fault.
    pub before: f64,
    /// Seconds Redis stays down or paused (kill, pause).
    pub outage: f64,
    /// Seconds of load after Redis is back.
    pub after: f64,
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
    /// Redis connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Redis response timeout, ms.
    pub response_timeout_ms: u64,
    /// Also run the Python library through the lasting faults.
    pub python: bool,
}

impl Default for FaultOptions {
    fn default() -> Self {
        FaultOptions {
            policies: vec!["open".into(), "closed".into(), "local:0.5".into()],
            faults: Fault::ALL.to_vec(),
            before: 3.0,
            outage: 3.0,
            after: 4.0,
            processes: 2,
            tasks: 8,
            window_secs: 1.0,
            tokens: 200_000,
            requests: 1_000,
            connect_timeout_ms: 1000,
            response_timeout_ms: 500,
            python: false,
        }
    }
}

/// What one (policy, fault) run showed.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FaultRow {
    /// `tollgate` or `llmratelimiter`.
    pub client: String,
    /// The outage policy.
    pub policy: String,
    /// The fault's name.
    pub fault: String,
    /// Whether every worker process exited cleanly (no panic, no crash).
    pub clean_exit: bool,
    /// Error of a worker that did not exit cleanly.
    pub worker_error: Option<String>,
    /// Seconds Redis was unreachable as the harness saw it (0 for instant faults).
    pub outage_secs: f64,
    /// Calls asked while Redis was unreachable, by outcome.
    pub during: Vec<(String, u64)>,
    /// Median and largest time `acquire` took during the outage beyond its
    /// slot's wait, ms.
    pub during_ms: (f64, f64),
    /// Largest time any `acquire` took beyond its slot's wait, whole run, ms.
    pub max_overhead_ms: f64,
    /// The configured bound on that time, ms.
    pub bound_ms: f64,
    /// Whether the decisions during the outage were the policy's (no store
    /// decisions while Redis was down, only the policy's source).
    pub policy_applied: bool,
    /// Seconds from Redis answering again until every process's store
    /// answered its probe (None: some never did).
    pub recovery_secs: Option<f64>,
    /// Seconds from Redis answering again until every process had a permit
    /// decided by the store (None: some never did); decided = when `acquire`
    /// had its answer, before sleeping to the slot.
    pub first_store_permit_secs: Option<f64>,
    /// 429s at the stand-in before the fault, while down, in the window after,
    /// and later.
    pub rejected: (u64, u64, u64, u64),
    /// Calls that failed for another reason than the policy (store errors).
    pub other_errors: u64,
}

/// Runs every (policy, fault) in turn, each on a fresh Redis and stand-in.
pub fn run(opts: &FaultOptions) -> anyhow::Result<Vec<FaultRow>> {
    let mut rows = Vec::new();
    for policy in &opts.policies {
        for &fault in &opts.faults {
            let row = run_one(opts, ClientKind::Tollgate, policy, fault)?;
            eprintln!("{}", table(std::slice::from_ref(&row)));
            rows.push(row);
        }
    }
    if opts.python {
        for &fault in opts.faults.iter().filter(|f| f.lasts()) {
            let row = run_one(opts, ClientKind::Python, "open", fault)?;
            eprintln!("{}", table(std::slice::from_ref(&row)));
            rows.push(row);
        }
    }
    Ok(rows)
}

fn run_one(
    opts: &FaultOptions,
    client: ClientKind,
    policy: &str,
    fault: Fault,
) -> anyhow::Result<FaultRow> {
    let dir = TempDir::new("faults")?;
    let mut redis = RedisServer::start(RedisSpec::default())?;
    let standin = Standin::start(
        StandinConfig {
            requests: opts.requests,
            tokens: opts.tokens,
            window_secs: opts.window_secs,
            tolerance: 0.002,
            latency_ms: (10, 50),
        },
        0,
    )?;
    let lead = if client == ClientKind::Python {
        3.0
    } else {
        1.0
    };
    let start_at = now_unix() + lead;
    let fault_at = start_at + opts.before;
    let outage = if fault.lasts() { opts.outage } else { 0.0 };
    let stop_at = fault_at + outage + opts.after;
    let key = format!("fault-{}-{}", policy.replace(':', ""), fault.name());
    let configs: Vec<WorkerConfig> = (0..opts.processes)
        .map(|id| WorkerConfig {
            id,
            url: redis.url(),
            keys: vec![key.clone()],
            standins: vec![standin.addr()],
            requests: opts.requests,
            tokens: opts.tokens,
            window_secs: opts.window_secs,
            tasks: opts.tasks,
            start_at,
            stop_at,
            min_tokens: 100,
            max_tokens: 4_000,
            estimate_factor: 1.0,
            settle: true,
            outage: policy.to_string(),
            retries: 3,
            retry_base_ms: 20,
            retry_max_ms: 500,
            error_pause_ms: 20,
            // Demand about 70% of the limit: calls reach Redis all the time
            // instead of sleeping in a deep queue.
            think_ms: 200,
            variant: String::new(),
            ca_cert: None,
            probe_ms: 25,
            connect_timeout_ms: opts.connect_timeout_ms,
            response_timeout_ms: opts.response_timeout_ms,
        })
        .collect();
    let bound = configs[0].outage_bound();
    eprintln!(
        "{} policy={policy} fault={}: {} processes × {} tasks, fault at +{:.1}s for {outage:.1}s",
        client.name(),
        fault.name(),
        opts.processes,
        opts.tasks,
        opts.before
    );
    let fleet = Fleet::spawn(client, &configs, dir.path())?;

    sleep_until(fault_at);
    let down_at = now_unix();
    match fault {
        Fault::Kill => redis.kill(),
        Fault::Pause => redis.pause(),
        Fault::ScriptFlush => {
            redis.cli(&["SCRIPT", "FLUSH"])?;
        }
        Fault::ClientKill => {
            redis.cli(&["CLIENT", "KILL", "TYPE", "normal"])?;
        }
    }
    let up_at = if fault.lasts() {
        sleep_until(down_at + outage);
        match fault {
            Fault::Kill => redis.restart()?,
            _ => redis.resume(),
        }
        // Back when it answers again.
        let t = Instant::now();
        while redis
            .cli(&["PING"])
            .map(|r| r.trim() != "PONG")
            .unwrap_or(true)
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        now_unix()
    } else {
        down_at
    };

    let deadline = Instant::now() + Duration::from_secs_f64(stop_at - now_unix() + 40.0);
    let waited = fleet.wait(deadline, || {
        let (calls, rejected, _) = standin.counts();
        eprintln!(
            "  t={:5.1}s calls={calls} 429s={rejected}",
            now_unix() - start_at
        );
    });
    let records = standin.records();
    standin.stop();
    let mut row = FaultRow {
        client: client.name().to_string(),
        policy: policy.to_string(),
        fault: fault.name().to_string(),
        outage_secs: up_at - down_at,
        bound_ms: bound.as_secs_f64() * 1000.0,
        ..FaultRow::default()
    };
    match waited {
        Ok(reports) => {
            row.clean_exit = true;
            fill(&mut row, &reports, policy, down_at, up_at, fault.lasts());
        }
        Err(e) => row.worker_error = Some(format!("{e:#}")),
    }
    row.rejected = rejected_by_phase(&records, down_at, up_at, opts.window_secs);
    Ok(row)
}

fn sleep_until(t: f64) {
    let d = t - now_unix();
    if d > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(d));
    }
}

fn overhead(c: &WorkerCall) -> f64 {
    ((c.acquired - c.asked) - c.waited).max(0.0)
}

fn fill(
    row: &mut FaultRow,
    reports: &[WorkerReport],
    policy: &str,
    down: f64,
    up: f64,
    lasts: bool,
) {
    let calls: Vec<&WorkerCall> = reports.iter().flat_map(|r| &r.calls).collect();
    let during: Vec<&WorkerCall> = calls
        .iter()
        .copied()
        .filter(|c| lasts && c.asked >= down && c.asked < up)
        .collect();
    let mut by_outcome: Vec<(String, u64)> = Vec::new();
    for c in &during {
        match by_outcome.iter_mut().find(|(o, _)| *o == c.outcome) {
            Some((_, n)) => *n += 1,
            None => by_outcome.push((c.outcome.clone(), 1)),
        }
    }
    by_outcome.sort();
    row.during = by_outcome;
    let mut ms: Vec<f64> = during.iter().map(|c| overhead(c) * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    row.during_ms = (quantile(&ms, 0.5), ms.last().copied().unwrap_or(0.0));
    row.max_overhead_ms = calls
        .iter()
        .map(|c| overhead(c) * 1000.0)
        .fold(0.0, f64::max);
    // While Redis is down (after the first attempts have timed out), every
    // decision is the policy's.
    let expected = match policy.split(':').next() {
        Some("open") => "open",
        Some("closed") => "closed",
        _ => "local",
    };
    let settled_in = row.bound_ms / 1000.0;
    row.policy_applied = during
        .iter()
        .filter(|c| c.asked > down + settled_in && c.acquired < up)
        .all(|c| c.outcome == expected);
    row.other_errors = calls
        .iter()
        .filter(|c| matches!(c.outcome.as_str(), "store_error" | "other"))
        .count() as u64
        + calls
            .iter()
            .filter(|c| !lasts && c.outcome == "closed")
            .count() as u64;
    // Recovery: each process's first answered probe, and first store permit,
    // after Redis answered again.
    let mut probe = Some(0.0f64);
    let mut permit = Some(0.0f64);
    for r in reports {
        let p = r
            .probes
            .iter()
            .find(|(t, ok)| *ok && *t >= up)
            .map(|(t, _)| t - up);
        probe = match (probe, p) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let f = r
            .calls
            .iter()
            .map(|c| (c, c.acquired - c.waited))
            .filter(|(c, decided)| c.outcome == "store" && *decided >= up)
            .map(|(_, decided)| decided - up)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
        permit = match (permit, f) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    let any_probes = reports.iter().any(|r| !r.probes.is_empty());
    row.recovery_secs = if any_probes { probe } else { None };
    row.first_store_permit_secs = permit;
}

fn rejected_by_phase(
    records: &[CallRecord],
    down: f64,
    up: f64,
    window: f64,
) -> (u64, u64, u64, u64) {
    let mut r = (0, 0, 0, 0);
    for c in records.iter().filter(|c| !c.admitted) {
        if c.arrival < down {
            r.0 += 1;
        } else if c.arrival < up {
            r.1 += 1;
        } else if c.arrival < up + window {
            r.2 += 1;
        } else {
            r.3 += 1;
        }
    }
    r
}

/// Renders fault rows as a Markdown table.
pub fn table(rows: &[FaultRow]) -> String {
    let mut t = Table::new(&[
        "limiter",
        "policy",
        "fault",
        "clean exit",
        "down (s)",
        "calls while down",
        "acquire while down p50 / max (ms)",
        "max acquire overhead (ms) / bound",
        "policy applied",
        "store again after (ms)",
        "first store permit (ms)",
        "429s before / down / next window / later",
    ]);
    let opt_ms = |v: Option<f64>| v.map_or("never".to_string(), |s| format!("{:.0}", s * 1000.0));
    for r in rows {
        let during: Vec<String> = r.during.iter().map(|(o, n)| format!("{o} {n}")).collect();
        t.row(&[
            r.client.clone(),
            r.policy.clone(),
            r.fault.clone(),
            if r.clean_exit {
                "yes".into()
            } else {
                format!("NO: {}", r.worker_error.clone().unwrap_or_default())
            },
            format!("{:.2}", r.outage_secs),
            if during.is_empty() {
                "-".into()
            } else {
                during.join(", ")
            },
            format!("{:.0} / {:.0}", r.during_ms.0, r.during_ms.1),
            if r.client == "tollgate" {
                format!("{:.0} / {:.0}", r.max_overhead_ms, r.bound_ms)
            } else {
                format!("{:.0} / none", r.max_overhead_ms)
            },
            if r.policy_applied {
                "yes".into()
            } else {
                "NO".into()
            },
            if r.client == "tollgate" {
                opt_ms(r.recovery_secs)
            } else {
                "n/a".into()
            },
            opt_ms(r.first_store_permit_secs),
            format!(
                "{} / {} / {} / {}",
                r.rejected.0, r.rejected.1, r.rejected.2, r.rejected.3
            ),
        ]);
    }
    t.render()
}
