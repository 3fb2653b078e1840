//! Harnesses that prove tollgate under real load, real faults and side by side
//! with the Python `llmratelimiter` (issue 3).
//!
//! - [`standin`]: a provider stand-in on loopback enforcing an exact token bucket
//!   at its requests' arrival ([`arrival`]: the kernel's receive time).
//! - [`accuracy`]: several worker processes share one Redis and one stand-in;
//!   counts 429s, utilisation, the largest window and FIFO inversions.
//! - [`faults`]: Redis killed, flushed, disconnected and paused under load, for
//!   each outage policy.
//! - [`cluster`]: the accuracy run on a 3-master Redis Cluster with one master
//!   killed mid-run.
//! - [`speed`]: acquires per second and latency, tollgate against the Python
//!   library against Redis's own ceiling.
//! - [`fairness`]: tiers sharing one provider model through two gateway
//!   instances on Redis (floors, weights, a tier alone).
//! - [`registry_scale`]: the registry with 100,000 clients and 200,000
//!   keys in PostgreSQL, two gateway processes: start, memory per client,
//!   and another client's latency on one while the other takes 100 admin
//!   changes a second.
//! - [`script_cost`]: Redis's own time per call of the reserve and settle
//!   scripts, from `INFO commandstats`.
//!
//! Every run binds to 127.0.0.1 only, is bounded in time and count, and stops
//! (and kills) everything it started. The binary `tollgate-harness` exposes each
//! as a subcommand; see `docs/BENCHMARKS.md` and `docs/RELIABILITY.md`.
#![warn(missing_docs)]

pub mod accuracy;
pub mod affinity;
pub mod arrival;
pub mod bucket;
pub mod client;
pub mod cluster;
pub mod fairness;
pub mod faults;
pub mod fleet;
pub mod ledger_writer;
pub mod postgres;
pub mod procs;
pub mod python;
pub mod registry_load;
pub mod registry_scale;
pub mod script_cost;
pub mod speed;
pub mod standin;
pub mod table;
pub mod worker;

/// Seconds since the Unix epoch: the one clock every process of a run shares.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A quantile of sorted values (`q` in [0, 1]); 0 for none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Median of values (sorts a copy).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}
