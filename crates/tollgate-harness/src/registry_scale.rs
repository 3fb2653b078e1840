//! The registry at scale (issue 16): a PostgreSQL and a Redis of the run's
//! own, the registry's tables seeded with `clients` clients and
//! `keys_per_client` keys each, two `tollgate serve` processes (A and B) on
//! them, and:
//!
//! - each instance's start (spawn to the first `/healthz` answer: the
//!   registry is loaded before the gateway listens) and its resident memory
//!   (`VmRSS`), against an instance of the same config on an empty
//!   database, which gives the memory per client;
//! - one client's requests on B, one at a time every `probe_every_ms`,
//!   alone and while the admin API on A takes `changes_per_sec` changes (a
//!   key issued, a client moved, a key revoked, a tier's limit changed, in
//!   turn), the two phases alternating [`ROUNDS`] times: p50, p99 and max
//!   of each, and each round's difference of p99s;
//! - how long B's changes held its index's write lock (the longest, and
//!   how many times), which is all a request waits for a change;
//! - B's registry after the changes (the dashboard's overview): its last
//!   change, how often it built its index whole, how many entries it
//!   replaced one at a time; and the last key issued on A answering 200 on B.
//!
//! Everything binds to 127.0.0.1; every loop is bounded in count and time;
//! what the run started is stopped when it ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tollgate_gateway::config::{Config, ModelConfig, ProviderConfig, TierConfig};
use tollgate_gateway::ledger::store::sql::Statement;
use tollgate_gateway::upstream_sim::{self, SimConfig};

use crate::postgres::PostgresServer;
use crate::procs::{free_port, RedisServer, RedisSpec, TempDir};

/// The admin token of the run's gateways.
const ADMIN: &str = "bench-admin";
/// The probe's client: on the `pro` tier, untouched by the changes.
const PROBE_CLIENT: usize = 0;
/// The probe alone and the probe during changes alternate this many times
/// each, `secs / ROUNDS` seconds a phase.
pub const ROUNDS: usize = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct RegistryScaleOptions {
    /// Clients in the database.
    pub clients: usize,
    /// Keys of each client.
    pub keys_per_client: usize,
    /// Admin changes per second on A during the second phase.
    pub changes_per_sec: u32,
    /// Seconds of each phase.
    pub secs: f64,
    /// Between two probe requests on B, ms.
    pub probe_every_ms: f64,
    /// The `tollgate` binary.
    pub tollgate: PathBuf,
    /// PostgreSQL with fsync on (a real deployment's default): each change's
    /// commit then waits for the disk.
    pub durable: bool,
}

/// Latency of the probe's requests in one phase, ms.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Latency {
    /// Requests answered 200.
    pub ok: usize,
    /// Requests answered otherwise.
    pub not_ok: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// B's registry after the changes, as its overview says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryState {
    /// The last change it applied.
    pub version: u64,
    /// Times it built its index whole.
    pub index_builds: u64,
    /// Entries it replaced one at a time.
    pub changes_applied: u64,
    /// Clients in its index.
    pub clients: u64,
    /// Keys in its index.
    pub keys: u64,
    /// The longest a change held its index's write lock (all a request
    /// can wait for a change), µs; `None` from a gateway that does not
    /// say (an earlier release).
    #[serde(default)]
    pub longest_write_hold_us: Option<u64>,
    /// Times a change took its index's write lock.
    #[serde(default)]
    pub write_holds: Option<u64>,
    /// Clients rebuilt in their own entry at a lookup after their tier or
    /// organisation changed (`None`: an earlier release, which rebuilt
    /// them under the index's write lock).
    #[serde(default)]
    pub clients_refreshed: Option<u64>,
}

/// A run's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryScaleReport {
    /// Clients seeded.
    pub clients: usize,
    /// Keys seeded.
    pub keys: usize,
    /// Seconds the seeding took (not a target).
    pub seed_s: f64,
    /// Start of A, B, and of the empty instance, seconds.
    pub start_s: [f64; 3],
    /// CPU time each of them had used (user + system, all its threads,
    /// from `/proc/PID/stat`) when it first answered `/healthz`, seconds:
    /// what its start cost, which the machine's other load inflates far
    /// less than the wall time.
    #[serde(default)]
    pub start_cpu_s: [f64; 3],
    /// Resident memory of A, B and the empty instance after start, bytes.
    pub rss_bytes: [u64; 3],
    /// (RSS of A − RSS of the empty instance) ÷ clients.
    pub bytes_per_client: f64,
    /// The probe alone.
    pub quiet: Latency,
    /// The probe while the changes were applied.
    pub changing: Latency,
    /// Each round's p99 during the changes − its p99 alone, ms, in order
    /// of size ([`ROUNDS`] rounds).
    #[serde(default)]
    pub p99_delta_by_round: Vec<f64>,
    /// Changes answered 2xx by A.
    pub changes_ok: usize,
    /// Changes answered otherwise.
    pub changes_failed: usize,
    /// The failed changes' answers (HTTP status, or 0 for no answer) and
    /// how many of each.
    pub failures: BTreeMap<u16, usize>,
    /// Whether PostgreSQL ran with fsync on.
    pub durable: bool,
    /// Changes per second A took.
    pub changes_per_sec: f64,
    /// Admin answer time on A, p50 and p99, ms.
    pub change_ms: [f64; 2],
    /// B after the changes.
    pub b_registry: RegistryState,
    /// A's last change.
    pub a_version: u64,
    /// Whether the last key issued on A answered 200 on B.
    pub last_key_works_on_b: bool,
    /// The machine's load average (1 min) before and after.
    pub load: [f64; 2],
}

/// A gateway process, killed when dropped.
struct Instance {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    /// CPU time used so far (user + system), seconds.
    fn cpu_s(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // After the command's name, in parentheses (which may hold spaces):
        // state is field 3, utime 14 and stime 15.
        let rest = stat.rsplit_once(')').context("no command in stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
            + fields.get(12).context("no stime")?.parse::<u64>()?;
        // SAFETY: sysconf reads a constant of the system and takes no pointer.
        let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(ticks as f64 / per_s)
    }

    fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(kb * 1024)
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn tier(rpm: u64) -> TierConfig {
    TierConfig {
        rpm: Some(rpm),
        tpm: Some(1_000_000_000),
        burst: 1.0,
        priority: 0,
        max_wait_ms: 0,
        daily_budget_usd: None,
        monthly_budget_usd: None,
        floor: None,
        weight: None,
        lendable: None,
    }
}

pub(crate) fn config(upstream: &str, redis: &str, database: &str, port: u16) -> Config {
    let mut c = Config::default();
    c.server.listen = format!("127.0.0.1:{port}");
    c.store.url = redis.to_string();
    c.ledger.url = database.to_string();
    c.admin.token_sha256 = Some(tollgate_gateway::auth::hash_key(ADMIN));
    let model = ModelConfig {
        upstream_name: None,
        kind: Default::default(),
        rpm: Some(10_000_000),
        tpm: Some(10_000_000_000),
        input_tpm: None,
        output_tpm: None,
        burndown: 1.0,
        burst: 1.0,
        input_usd_per_mtok: 0.0,
        output_usd_per_mtok: 0.0,
        context_window: 128_000,
        default_max_tokens: 16,
        tokenizer: Some("approx".into()),
        fallbacks: Vec::new(),
        floors: Default::default(),
    };
    c.providers.insert(
        "sim".into(),
        ProviderConfig {
            base_url: upstream.to_string(),
            api_key_env: None,
            models: BTreeMap::from([("m".to_string(), model)]),
        },
    );
    c.tiers.insert("pro".into(), tier(1_000_000));
    c.tiers.insert("free".into(), tier(1_000));
    c
}

/// The seeded key `j` of client `i`.
fn key_of(i: usize, j: usize) -> String {
    format!("bench-key-{i}-{j}")
}

/// Seeds the registry's tables: clients `c-0` … (even ones on `pro`, odd
/// ones on `free`), keys `k-I-J` whose secrets are [`key_of`], all as change 1.
pub(crate) async fn seed(database: &str, clients: usize, keys: usize) -> anyhow::Result<()> {
    let db = tollgate_gateway::ledger::Store::open(database)
        .await
        .context("opening (and migrating) the database")?;
    db.query(Statement::new(
        "INSERT INTO registry_changes (version, kind, id, at_ms) VALUES (1, 'client', 'bench-seed', 0)",
        vec![],
    ))
    .await
    .context("seeding the registry's change list")?;
    // In parts, each well within the store's time limit per call.
    const PART: usize = 10_000;
    for lo in (0..clients).step_by(PART) {
        let hi = (lo + PART).min(clients) as i64;
        let lo = lo as i64;
        db.transaction(vec![
            Statement::new(
                "INSERT INTO registry_clients (id, tier, org, limits, disabled, created_at_ms, version) \
                 SELECT 'c-' || i, CASE WHEN i % 2 = 0 THEN 'pro' ELSE 'free' END, NULL, '{}', 0, 0, 1 \
                 FROM generate_series($1::BIGINT, $2::BIGINT - 1) AS i",
                vec![lo.into(), hi.into()],
            ),
            Statement::new(
                "INSERT INTO registry_keys (id, hash, client, shown, name, models, limits, expires_at_ms, \
                 revoked_at_ms, created_at_ms, version) \
                 SELECT 'k-' || i || '-' || j, encode(sha256(convert_to('bench-key-' || i || '-' || j, 'UTF8')), 'hex'), \
                 'c-' || i, 'tg-bench…' || j, NULL, NULL, '{}', NULL, NULL, 0, 1 \
                 FROM generate_series($1::BIGINT, $2::BIGINT - 1) AS i, generate_series(0, $3::BIGINT - 1) AS j",
                vec![lo.into(), hi.into(), (keys as i64).into()],
            ),
        ])
        .await
        .context("seeding the registry's tables")?;
    }
    Ok(())
}

/// Writes `config` into `dir` and starts `tollgate serve` on it; answers
/// the instance, the seconds from spawn to its first `/healthz` 200, and
/// the CPU seconds it had used by then.
async fn spawn(
    tollgate: &Path,
    dir: &Path,
    name: &str,
    config: &Config,
    http: &reqwest::Client,
) -> anyhow::Result<(Instance, f64, f64)> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(config)?)?;
    let log = dir.join(format!("{name}.log"));
    let started = Instant::now();
    let child = Command::new(tollgate)
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", tollgate.display()))?;
    let instance = Instance {
        child,
        url: format!("http://{}", config.server.listen),
        log,
    };
    loop {
        if let Ok(r) = http.get(format!("{}/healthz", instance.url)).send().await {
            if r.status().is_success() {
                let took = started.elapsed().as_secs_f64();
                let cpu = instance.cpu_s()?;
                return Ok((instance, took, cpu));
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "{name} did not start within 120 s: {}",
                std::fs::read_to_string(&instance.log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

fn latency(mut took: Vec<f64>, not_ok: usize) -> Latency {
    took.sort_by(f64::total_cmp);
    Latency {
        ok: took.len(),
        not_ok,
        p50: quantile(&took, 0.5),
        p99: quantile(&took, 0.99),
        max: took.last().copied().unwrap_or(f64::NAN),
    }
}

/// One request on `url` with `key` every `every`, for `secs`: the answer
/// times of the 200s (ms), and how many were not 200.
async fn probe(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    every: Duration,
    secs: f64,
) -> (Vec<f64>, usize) {
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "probe"}], "max_tokens": 8});
    let mut took = Vec::new();
    let mut not_ok = 0;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < end {
        tick.tick().await;
        let t = Instant::now();
        let r = http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                took.push(ms);
            }
            _ => not_ok += 1,
        }
    }
    (took, not_ok)
}

/// The changes on A: `per_sec` a second for `secs`, each spawned on its
/// tick (at most 64 in flight), in turn a key issued, a client moved, a
/// key revoked, a tier's limit changed. Answers (answer times of the 2xx,
/// failures, the last key issued).
async fn changes(
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    per_sec: u32,
    secs: f64,
    round: usize,
) -> (Vec<f64>, BTreeMap<u16, usize>, Option<String>) {
    let total = (per_sec as f64 * secs) as usize;
    let every = Duration::from_secs_f64(1.0 / per_sec as f64);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    for n in round * total..(round + 1) * total {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let http = http.clone();
        // Clients 1.. (never the probe's), spread over the whole range.
        let client = 1 + (n * 7919) % (clients - 1);
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let req = match n % 4 {
                0 => http
                    .post(format!("{url}/admin/clients/c-{client}/keys"))
                    .json(&serde_json::json!({"name": "bench"})),
                1 => http
                    .put(format!("{url}/admin/clients/c-{client}/tier"))
                    .json(&serde_json::json!({"tier": if n % 8 == 1 { "pro" } else { "free" }})),
                2 => http.delete(format!("{url}/admin/keys/k-{client}-1")),
                _ => http
                    .patch(format!("{url}/admin/tiers/free"))
                    .json(&serde_json::json!({"rpm": 1_000 + n})),
            };
            let t = Instant::now();
            let r = req.bearer_auth(ADMIN).send().await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            match r {
                Ok(r) if r.status().is_success() => {
                    let key = if n % 4 == 0 {
                        r.json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["key"].as_str().map(str::to_string))
                    } else {
                        None
                    };
                    (Ok(ms), key)
                }
                Ok(r) => (Err(r.status().as_u16()), None),
                Err(_) => (Err(0), None),
            }
        }));
    }
    let mut took = Vec::new();
    let mut failed = BTreeMap::new();
    let mut last_key = None;
    for t in tasks {
        match t.await {
            Ok((Ok(ms), key)) => {
                took.push(ms);
                if key.is_some() {
                    last_key = key;
                }
            }
            Ok((Err(status), _)) => *failed.entry(status).or_insert(0) += 1,
            Err(_) => *failed.entry(0).or_insert(0) += 1,
        }
    }
    (took, failed, last_key)
}

async fn registry_of(http: &reqwest::Client, url: &str) -> anyhow::Result<RegistryState> {
    let v: serde_json::Value = http
        .get(format!("{url}/dashboard/api/overview"))
        .bearer_auth(ADMIN)
        .send()
        .await?
        .json()
        .await?;
    serde_json::from_value(v["registry"].clone()).context("the overview's registry")
}

/// Runs it.
pub fn run(opts: &RegistryScaleOptions) -> anyhow::Result<RegistryScaleReport> {
    anyhow::ensure!(
        (2..=1_000_000).contains(&opts.clients),
        "--clients must be 2..=1000000"
    );
    anyhow::ensure!(
        (1..=10).contains(&opts.keys_per_client),
        "--keys-per-client must be 1..=10"
    );
    anyhow::ensure!(
        (1..=1_000).contains(&opts.changes_per_sec),
        "--changes-per-sec must be 1..=1000"
    );
    anyhow::ensure!(
        opts.secs > 0.0 && opts.secs <= 120.0,
        "--secs must be in (0, 120]"
    );
    anyhow::ensure!(
        opts.probe_every_ms >= 1.0 && opts.probe_every_ms <= 1_000.0,
        "--probe-every-ms must be in [1, 1000]"
    );
    anyhow::ensure!(
        opts.tollgate.is_file(),
        "no tollgate binary at {} (cargo build --release -p tollgate-cli, or --tollgate PATH)",
        opts.tollgate.display()
    );
    let redis = RedisServer::start(RedisSpec::default())?;
    let pg = PostgresServer::start_with(opts.durable)?;
    let dir = TempDir::new("registry-scale")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async {
        let load_before = load_average();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()?;
        let sim = upstream_sim::start(
            SimConfig {
                latency: Duration::ZERO,
                chunk_interval: Duration::ZERO,
                completion_tokens: 4,
                ..Default::default()
            },
            0,
        )
        .await
        .context("the simulated upstream")?;
        let database = pg.url();
        let seeded = Instant::now();
        seed(&database, opts.clients, opts.keys_per_client).await?;
        let seed_s = seeded.elapsed().as_secs_f64();
        // The same config on an empty database, for the memory per client.
        tollgate_gateway::ledger::Store::open(&database)
            .await?
            .query(Statement::new("CREATE DATABASE empty", vec![]))
            .await
            .context("creating the empty database")?;
        let empty_db = format!(
            "{}/empty",
            database
                .rsplit_once('/')
                .map_or(database.as_str(), |(a, _)| a)
        );
        let redis_url = redis.url();
        let (empty, empty_start, empty_cpu) = spawn(
            &opts.tollgate,
            dir.path(),
            "empty",
            &config(&sim.base_url(), &redis_url, &empty_db, free_port()?),
            &http,
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let empty_rss = empty.rss()?;
        drop(empty);
        let (a, a_start, a_cpu) = spawn(
            &opts.tollgate,
            dir.path(),
            "a",
            &config(&sim.base_url(), &redis_url, &database, free_port()?),
            &http,
        )
        .await?;
        let (b, b_start, b_cpu) = spawn(
            &opts.tollgate,
            dir.path(),
            "b",
            &config(&sim.base_url(), &redis_url, &database, free_port()?),
            &http,
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (a_rss, b_rss) = (a.rss()?, b.rss()?);

        let key = key_of(PROBE_CLIENT, 0);
        let every = Duration::from_secs_f64(opts.probe_every_ms / 1000.0);
        // Warm: connections, the probe client's bucket.
        probe(&http, &b.url, &key, every, 1.0).await;
        // The probe alone and during changes in turn, ROUNDS times each, so
        // that what the machine's other load does over the run falls on
        // both alike.
        let round = opts.secs / ROUNDS as f64;
        let (mut alone, mut alone_not_ok) = (Vec::new(), 0);
        let (mut during, mut during_not_ok) = (Vec::new(), 0);
        let (mut took, mut changes_failed, mut last_key) = (Vec::new(), BTreeMap::new(), None);
        let mut changes_s = 0.0;
        let mut round_deltas = Vec::new();
        for n in 0..ROUNDS {
            let (q, q_not_ok) = probe(&http, &b.url, &key, every, round).await;
            let started = Instant::now();
            let ((c, c_not_ok), (t, failed, last)) = tokio::join!(
                probe(&http, &b.url, &key, every, round),
                changes(&http, &a.url, opts.clients, opts.changes_per_sec, round, n),
            );
            changes_s += started.elapsed().as_secs_f64();
            round_deltas.push(latency(c.clone(), 0).p99 - latency(q.clone(), 0).p99);
            alone.extend(q);
            alone_not_ok += q_not_ok;
            during.extend(c);
            during_not_ok += c_not_ok;
            took.extend(t);
            for (status, k) in failed {
                *changes_failed.entry(status).or_insert(0) += k;
            }
            last_key = last.or(last_key);
        }
        round_deltas.sort_by(f64::total_cmp);
        let quiet = latency(alone, alone_not_ok);
        let changing = latency(during, during_not_ok);
        // Every change reaches B within its sync interval and a read.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let a_version = registry_of(&http, &a.url).await?.version;
        let b_registry = registry_of(&http, &b.url).await?;
        let last_key_works_on_b = match &last_key {
            Some(k) => !probe(&http, &b.url, k, every, 0.05).await.0.is_empty(),
            None => false,
        };
        let mut sorted = took.clone();
        sorted.sort_by(f64::total_cmp);
        Ok(RegistryScaleReport {
            clients: opts.clients,
            keys: opts.clients * opts.keys_per_client,
            seed_s,
            start_s: [a_start, b_start, empty_start],
            start_cpu_s: [a_cpu, b_cpu, empty_cpu],
            rss_bytes: [a_rss, b_rss, empty_rss],
            bytes_per_client: (a_rss as f64 - empty_rss as f64) / opts.clients as f64,
            quiet,
            changing,
            p99_delta_by_round: round_deltas,
            changes_ok: took.len(),
            changes_failed: changes_failed.values().sum(),
            failures: changes_failed,
            durable: opts.durable,
            changes_per_sec: took.len() as f64 / changes_s,
            change_ms: [quantile(&sorted, 0.5), quantile(&sorted, 0.99)],
            b_registry,
            a_version,
            last_key_works_on_b,
            load: [load_before, load_average()],
        })
    })
}

/// The report as text.
pub fn render(r: &RegistryScaleReport) -> String {
    let mb = |b: u64| b as f64 / 1_048_576.0;
    let lat = |l: &Latency| {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} ok, {} not ok)",
            l.p50, l.p99, l.max, l.ok, l.not_ok
        )
    };
    format!(
        "registry at scale: {} clients, {} keys (seeded in {:.1} s)\n\
         start: A {:.3} s, B {:.3} s (empty database: {:.3} s); CPU by then: A {:.3} s, B {:.3} s, empty {:.3} s\n\
         memory: A {:.1} MB, B {:.1} MB, empty {:.1} MB → {:.0} bytes per client\n\
         probe on B alone:            {}\n\
         probe on B during changes:   {}\n\
         changes on A: {} ok, {} failed {:?}, {:.1}/s, answered p50 {:.1} ms, p99 {:.1} ms (PostgreSQL fsync {})\n\
         p99 during − p99 alone by round (ms, in order): {:.2?}\n\
         B after: change {} (A: {}), index built whole {}×, {} entries replaced one at a time, {} clients, {} keys, longest hold of its write lock {:?} µs ({:?} holds); last key issued on A works on B: {}\n\
         load average: {:.2} before, {:.2} after\n",
        r.clients,
        r.keys,
        r.seed_s,
        r.start_s[0],
        r.start_s[1],
        r.start_s[2],
        r.start_cpu_s[0],
        r.start_cpu_s[1],
        r.start_cpu_s[2],
        mb(r.rss_bytes[0]),
        mb(r.rss_bytes[1]),
        mb(r.rss_bytes[2]),
        r.bytes_per_client,
        lat(&r.quiet),
        lat(&r.changing),
        r.changes_ok,
        r.changes_failed,
        r.failures,
        r.changes_per_sec,
        r.change_ms[0],
        r.change_ms[1],
        if r.durable { "on" } else { "off" },
        r.p99_delta_by_round,
        r.b_registry.version,
        r.a_version,
        r.b_registry.index_builds,
        r.b_registry.changes_applied,
        r.b_registry.clients,
        r.b_registry.keys,
        r.b_registry.longest_write_hold_us,
        r.b_registry.write_holds,
        r.last_key_works_on_b,
        r.load[0],
        r.load[1],
    )
}
