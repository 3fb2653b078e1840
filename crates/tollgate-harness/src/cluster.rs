//! The accuracy run on a 3-master Redis Cluster, with limiter keys spread over
//! the masters (one stand-in per key), and one master killed mid-run: the keys
//! on the other masters must go on being limited, and the outage policy must
//! cover the keys of the failed one.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::accuracy::{row, AccuracyOptions, AccuracyRow, Mode};
use crate::bucket::analyse;
use crate::fleet::{ClientKind, Fleet};
use crate::now_unix;
use crate::procs::{RedisCluster, TempDir};
use crate::standin::Standin;
use crate::table::Table;
use crate::worker::{WorkerCall, WorkerConfig};

/// Settings of the cluster run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterOptions {
    /// The load (limits per key, processes, tasks, duration).
    pub load: AccuracyOptions,
    /// Limiter keys (at least one per master).
    pub keys: usize,
    /// Kill the master of the first key at this fraction of the run (None: no kill).
    pub kill_at: Option<f64>,
    /// Outage policy of every limiter.
    pub policy: String,
}

/// One key's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterKeyRow {
    /// The limiter key.
    pub key: String,
    /// The master serving it (index).
    pub node: usize,
    /// Whether its master was killed.
    pub killed: bool,
    /// The accuracy figures over the whole run (for a killed master: until the kill).
    pub accuracy: AccuracyRow,
    /// Permits after the kill, by source.
    pub after_kill: Vec<(String, u64)>,
    /// Largest acquire overhead after the kill, ms.
    pub after_kill_max_ms: f64,
}

/// Runs the load on a fresh 3-master cluster.
pub fn run(opts: &ClusterOptions) -> anyhow::Result<Vec<ClusterKeyRow>> {
    let mut cluster = RedisCluster::start(3)?;
    let dir = TempDir::new("cluster")?;
    // Pick keys until every master has at least one, then fill up to `keys`.
    let mut keys: Vec<(String, usize)> = Vec::new();
    let mut per_node = [0usize; 3];
    for i in 0..200 {
        if keys.len() >= opts.keys.max(3) {
            break;
        }
        let key = format!("cluster-model-{i}");
        let node = cluster.node_of(&format!("tollgate:{{{key}}}:s"))?;
        let need = keys.len() + (3 - per_node.iter().filter(|&&n| n > 0).count());
        if per_node[node] == 0 || need < opts.keys.max(3) {
            per_node[node] += 1;
            keys.push((key, node));
        }
    }
    anyhow::ensure!(
        per_node.iter().all(|&n| n > 0),
        "could not spread keys over the 3 masters"
    );
    let load = &opts.load;
    let standins = keys
        .iter()
        .map(|_| Standin::start(crate::accuracy::standin_config(load), 0))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start_at = now_unix() + 1.0;
    let stop_at = start_at + load.duration;
    let configs: Vec<WorkerConfig> = (0..load.processes)
        .map(|id| WorkerConfig {
            id,
            url: cluster.url(),
            keys: keys.iter().map(|(k, _)| k.clone()).collect(),
            standins: standins.iter().map(Standin::addr).collect(),
            requests: load.requests,
            tokens: load.tokens,
            window_secs: load.window_secs,
            tasks: load.tasks,
            start_at,
            stop_at,
            min_tokens: load.min_tokens,
            max_tokens: load.max_tokens,
            estimate_factor: 1.0,
            settle: false,
            outage: opts.policy.clone(),
            retries: 3,
            retry_base_ms: 20,
            retry_max_ms: 500,
            error_pause_ms: 50,
            think_ms: 0,
            variant: String::new(),
            ca_cert: None,
            probe_ms: 0,
            connect_timeout_ms: 1000,
            response_timeout_ms: 500,
        })
        .collect();
    eprintln!(
        "cluster: {} keys on 3 masters, {} processes × {} tasks for {:.0} s, policy {}",
        keys.len(),
        load.processes,
        load.tasks,
        load.duration,
        opts.policy
    );
    let fleet = Fleet::spawn(ClientKind::Tollgate, &configs, dir.path())?;
    let killed_node = keys[0].1;
    let mut kill_time = None;
    let mut kill_at = opts.kill_at.map(|f| start_at + f * load.duration);
    let deadline =
        Instant::now() + Duration::from_secs_f64(load.duration + load.window_secs * 2.0 + 40.0);
    let reports = fleet.wait(deadline, || {
        if let Some(at) = kill_at {
            if now_unix() >= at {
                cluster.nodes[killed_node].kill();
                kill_time = Some(now_unix());
                kill_at = None;
                eprintln!(
                    "  killed master {killed_node} (port {})",
                    cluster.nodes[killed_node].port
                );
            }
        }
        let counts: Vec<String> = standins
            .iter()
            .map(|s| {
                let (c, r, _) = s.counts();
                format!("{c}/{r}")
            })
            .collect();
        eprintln!(
            "  t={:5.1}s calls/429s per key: {}",
            now_unix() - start_at,
            counts.join(" ")
        );
    })?;
    let calls: Vec<&WorkerCall> = reports.iter().flat_map(|r| &r.calls).collect();
    let mut rows = Vec::new();
    for (k, ((key, node), standin)) in keys.iter().zip(&standins).enumerate() {
        let killed = kill_time.is_some() && *node == killed_node;
        let end = match (killed, kill_time) {
            (true, Some(t)) => t,
            _ => stop_at,
        };
        let records: Vec<_> = standin
            .records()
            .into_iter()
            .filter(|r| !killed || r.arrival < end)
            .collect();
        let analysis = analyse(
            &records,
            load.tokens,
            load.window_secs,
            start_at + load.window_secs,
            end,
            load.fifo_jitter_ms / 1000.0,
        );
        let mine: Vec<_> = reports
            .iter()
            .map(|r| crate::worker::WorkerReport {
                calls: r.calls.iter().filter(|c| c.key == k).cloned().collect(),
                ..Default::default()
            })
            .collect();
        let accuracy = row(
            ClientKind::Tollgate,
            "tollgate",
            Mode::Exact,
            "cluster",
            load.tokens,
            analysis,
            &mine,
        );
        let mut after: Vec<(String, u64)> = Vec::new();
        let mut after_max: f64 = 0.0;
        if let Some(t) = kill_time {
            for c in calls.iter().filter(|c| c.key == k && c.asked >= t) {
                after_max = after_max.max(((c.acquired - c.asked) - c.waited).max(0.0) * 1000.0);
                match after.iter_mut().find(|(o, _)| *o == c.outcome) {
                    Some((_, n)) => *n += 1,
                    None => after.push((c.outcome.clone(), 1)),
                }
            }
        }
        after.sort();
        rows.push(ClusterKeyRow {
            key: key.clone(),
            node: *node,
            killed,
            accuracy,
            after_kill: after,
            after_kill_max_ms: after_max,
        });
    }
    Ok(rows)
}

/// Renders the cluster rows as a Markdown table.
pub fn table(rows: &[ClusterKeyRow]) -> String {
    let mut t = Table::new(&[
        "key",
        "master",
        "killed",
        "calls",
        "429s",
        "utilisation",
        "max window (steady)",
        "decisions after the kill",
        "max acquire overhead after (ms)",
    ]);
    for r in rows {
        let a = &r.accuracy.analysis;
        let after: Vec<String> = r
            .after_kill
            .iter()
            .map(|(o, n)| format!("{o} {n}"))
            .collect();
        t.row(&[
            r.key.clone(),
            r.node.to_string(),
            if r.killed {
                "yes".into()
            } else {
                "no".to_string()
            },
            a.calls.to_string(),
            a.rejected.to_string(),
            format!("{:.1}%", a.utilisation * 100.0),
            format!(
                "{:.3} × limit",
                a.max_window_tokens_steady as f64 / r.accuracy.limit as f64
            ),
            if after.is_empty() {
                "-".into()
            } else {
                after.join(", ")
            },
            format!("{:.0}", r.after_kill_max_ms),
        ]);
    }
    t.render()
}
