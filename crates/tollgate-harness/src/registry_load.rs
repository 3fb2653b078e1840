//! What opening the registry costs, in this process: a PostgreSQL of the
//! run's own seeded as [`crate::registry_scale`] seeds it, then
//! `Registry::open` (what `tollgate serve` does at start to read its
//! clients and keys) `opens` times, each timed by the wall clock and by
//! this process's CPU time (user + system, every thread: the database
//! driver's too). The server's own work is in its process, not counted.
//!
//! Under `valgrind --tool=callgrind` (which does not follow the server,
//! a child process) the difference between `--opens 1` and `--opens 0`
//! is the instructions one open takes.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tollgate::{OutagePolicy, Store};

use crate::postgres::PostgresServer;

/// One open's cost.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Open {
    /// Wall time, seconds.
    pub wall_s: f64,
    /// CPU time of this process meanwhile (user + system), seconds.
    pub cpu_s: f64,
    /// Clients and keys it read.
    pub clients: usize,
    /// Keys in its index.
    pub keys: usize,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryLoadReport {
    /// Clients seeded (two keys each).
    pub clients: usize,
    /// Each open, in order.
    pub opens: Vec<Open>,
}

/// This process's CPU time so far (user + system, every thread).
fn cpu_now() -> f64 {
    // SAFETY: getrusage writes the struct it is given, which lives here.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// Seeds `clients` clients with two keys each and opens the registry
/// `opens` times.
pub fn run(clients: usize, opens: usize) -> anyhow::Result<RegistryLoadReport> {
    anyhow::ensure!(
        (2..=1_000_000).contains(&clients),
        "--clients must be 2..=1000000"
    );
    anyhow::ensure!(opens <= 20, "--opens must be at most 20");
    let pg = PostgresServer::start_with(false)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let url = pg.url();
        crate::registry_scale::seed(&url, clients, 2).await?;
        let config = crate::registry_scale::config("http://127.0.0.1:9", "memory://", &url, 0);
        let mut out = Vec::new();
        for _ in 0..opens {
            let db = tollgate_gateway::ledger::Store::open(&url).await?;
            // Settle what the connection's opening left running.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (t, cpu) = (Instant::now(), cpu_now());
            let registry = tollgate_gateway::registry::Registry::open(
                &config,
                db,
                &Store::memory(),
                OutagePolicy::Closed,
            )
            .await
            .context("opening the registry")?;
            let (wall_s, cpu_s) = (t.elapsed().as_secs_f64(), cpu_now() - cpu);
            let stats = registry.stats();
            out.push(Open {
                wall_s,
                cpu_s,
                clients: stats.clients,
                keys: stats.keys,
            });
        }
        Ok(RegistryLoadReport {
            clients,
            opens: out,
        })
    })
}

/// The report as text.
pub fn render(r: &RegistryLoadReport) -> String {
    let mut s = format!(
        "registry open, {} clients seeded (2 keys each)\n",
        r.clients
    );
    for (i, o) in r.opens.iter().enumerate() {
        s.push_str(&format!(
            "open {}: wall {:.3} s, CPU {:.3} s ({} clients, {} keys in the index)\n",
            i + 1,
            o.wall_s,
            o.cpu_s,
            o.clients,
            o.keys
        ));
    }
    s
}
