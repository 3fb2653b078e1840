//! The speed run: tollgate and the Python `llmratelimiter` against the same
//! Redis in the same run — acquires per second and latency by concurrency,
//! latency as the window fills, and Redis's own ceiling for a comparable
//! `EVALSHA` (tollgate's reserve script) from `redis-benchmark`.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tollgate::{AcquireOptions, Cost, Limits, RateLimiter};

use crate::affinity;
use crate::procs::{require, RedisServer, RedisSpec};
use crate::quantile;
use crate::table::Table;

/// tollgate's reservation script, benchmarked as it is.
const RESERVE_LUA: &str = concat!(
    include_str!("../../tollgate/src/store/redis/state.lua"),
    include_str!("../../tollgate/src/store/redis/reserve.lua")
);

/// Settings of the speed run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpeedOptions {
    /// Concurrency levels.
    pub concurrency: Vec<usize>,
    /// Seconds per throughput measurement.
    pub secs: f64,
    /// Reservations live in the window before timing.
    pub fills: Vec<usize>,
    /// Timed acquires per fill level.
    pub samples: usize,
    /// Include the Python library.
    pub python: bool,
    /// Requests per redis-benchmark run.
    pub bench_requests: u64,
    /// Also run concurrency 1 with the caller and `redis-server` on one core
    /// (when 1 is among the concurrency levels).
    pub one_core: bool,
}

impl Default for SpeedOptions {
    fn default() -> Self {
        SpeedOptions {
            concurrency: vec![1, 16, 64, 256],
            secs: 3.0,
            fills: vec![0, 1_000, 10_000, 50_000],
            samples: 300,
            python: true,
            bench_requests: 200_000,
            one_core: true,
        }
    }
}

/// Throughput and latency of one limiter at one concurrency.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct Throughput {
    /// Acquires per second.
    pub per_sec: f64,
    /// Latency quantiles, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// 99.9th percentile, ms.
    pub p999: f64,
}

/// Latency of one acquire with `fill` reservations live.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct FillLatency {
    /// Reservations live.
    pub fill: usize,
    /// tollgate, reservations made in the window (limits not reached): p50, p99 ms.
    pub tollgate_window: (f64, f64),
    /// tollgate, reservations waiting in the queue (slots in the future): p50, p99 ms.
    pub tollgate_queued: (f64, f64),
    /// The Python library, records in its window: p50, p99 ms (None: not run).
    pub python: Option<(f64, f64)>,
}

/// Concurrency 1 with the caller and `redis-server` on the same core.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct OneCore {
    /// The core.
    pub cpu: usize,
    /// tollgate.
    pub tollgate: Throughput,
    /// The Python library (None: not run).
    pub python: Option<Throughput>,
    /// `redis-benchmark` with one client on that core, requests/s.
    pub redis_one_client: f64,
}

/// The whole speed report.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SpeedReport {
    /// Concurrency, tollgate, Python.
    pub throughput: Vec<(usize, Throughput, Option<Throughput>)>,
    /// Latency by fill.
    pub fills: Vec<FillLatency>,
    /// redis-benchmark EVALSHA of tollgate's reserve script, requests/s: one
    /// client; 50 clients without pipelining; 50 with 16 commands pipelined.
    pub redis_ceiling: (f64, f64, f64),
    /// Concurrency 1 again, caller and Redis on one core.
    pub one_core: Option<OneCore>,
    /// tollgate for Python (`python/`), by concurrency, beside the others.
    #[serde(default)]
    pub tollgate_python: Vec<(usize, Throughput)>,
    /// tollgate for Python by fill: p50, p99 ms (reservations in the window).
    #[serde(default)]
    pub tollgate_python_fills: Vec<(usize, (f64, f64))>,
}

impl SpeedReport {
    /// The report as Markdown tables.
    pub fn tables(&self) -> String {
        let mut t = Table::new(&[
            "concurrency",
            "tollgate acquires/s",
            "tollgate p50 / p99 / p99.9 (ms)",
            "llmratelimiter acquires/s",
            "llmratelimiter p50 / p99 / p99.9 (ms)",
            "ratio",
        ]);
        let lat = |t: &Throughput| format!("{:.3} / {:.3} / {:.3}", t.p50, t.p99, t.p999);
        let mut row = |label: String, tg: &Throughput, py: &Option<Throughput>| {
            t.row(&[
                label,
                format!("{:.0}", tg.per_sec),
                lat(tg),
                py.map_or("-".into(), |p| format!("{:.0}", p.per_sec)),
                py.as_ref().map_or("-".into(), lat),
                py.map_or("-".into(), |p| {
                    format!("{:.0}×", tg.per_sec / p.per_sec.max(1e-9))
                }),
            ]);
        };
        for (c, tg, py) in &self.throughput {
            row(c.to_string(), tg, py);
        }
        if let Some(o) = &self.one_core {
            row(
                format!("1, with Redis on core {}", o.cpu),
                &o.tollgate,
                &o.python,
            );
        }
        let mut f = Table::new(&[
            "live reservations",
            "tollgate, in window p50 / p99 (ms)",
            "tollgate, queued p50 / p99 (ms)",
            "llmratelimiter p50 / p99 (ms)",
            "p50 ratio",
        ]);
        for r in &self.fills {
            let pair = |p: (f64, f64)| format!("{:.3} / {:.3}", p.0, p.1);
            f.row(&[
                r.fill.to_string(),
                pair(r.tollgate_window),
                pair(r.tollgate_queued),
                r.python.map_or("-".into(), pair),
                r.python.map_or("-".into(), |p| {
                    format!("{:.0}×", p.0 / r.tollgate_window.0.max(1e-9))
                }),
            ]);
        }
        let one_core = self.one_core.map_or(String::new(), |o| {
            format!(
                "; 1 client on core {} with Redis {:.0}/s",
                o.cpu, o.redis_one_client
            )
        });
        format!(
            "{}\n{}\n{}redis-benchmark EVALSHA reserve.lua: 1 client {:.0}/s; 50 clients {:.0}/s unpipelined, {:.0}/s with -P 16{one_core}\n",
            t.render(),
            f.render(),
            self.python_tables(),
            self.redis_ceiling.0,
            self.redis_ceiling.1,
            self.redis_ceiling.2
        )
    }
}

impl SpeedReport {
    /// tollgate for Python beside the Rust library and llmratelimiter (empty
    /// when it was not run).
    fn python_tables(&self) -> String {
        if self.tollgate_python.is_empty() {
            return String::new();
        }
        let mut t = Table::new(&[
            "concurrency",
            "Rust library acquires/s",
            "tollgate for Python acquires/s",
            "its p50 / p99 / p99.9 (ms)",
            "llmratelimiter acquires/s",
            "Rust / Python",
            "Python / llmratelimiter",
        ]);
        for (c, py) in &self.tollgate_python {
            let row = self.throughput.iter().find(|r| r.0 == *c);
            let rust = row.map_or(0.0, |r| r.1.per_sec);
            let llm = row.and_then(|r| r.2).map(|p| p.per_sec);
            t.row(&[
                c.to_string(),
                format!("{rust:.0}"),
                format!("{:.0}", py.per_sec),
                format!("{:.3} / {:.3} / {:.3}", py.p50, py.p99, py.p999),
                llm.map_or("-".into(), |l| format!("{l:.0}")),
                format!("{:.2}×", rust / py.per_sec.max(1e-9)),
                llm.map_or("-".into(), |l| format!("{:.0}×", py.per_sec / l.max(1e-9))),
            ]);
        }
        let mut f = Table::new(&[
            "live reservations",
            "Rust library p50 / p99 (ms)",
            "tollgate for Python p50 / p99 (ms)",
            "llmratelimiter p50 / p99 (ms)",
        ]);
        let pair = |p: (f64, f64)| format!("{:.3} / {:.3}", p.0, p.1);
        for (n, py) in &self.tollgate_python_fills {
            let row = self.fills.iter().find(|r| r.fill == *n);
            f.row(&[
                n.to_string(),
                row.map_or("-".into(), |r| pair(r.tollgate_window)),
                pair(*py),
                row.and_then(|r| r.python).map_or("-".into(), pair),
            ]);
        }
        format!("{}\n{}\n", t.render(), f.render())
    }
}

/// Runs everything against one Redis the harness starts.
pub fn run(opts: &SpeedOptions) -> anyhow::Result<SpeedReport> {
    require("redis-benchmark")?;
    let redis = RedisServer::start(RedisSpec::default())?;
    let url = redis.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let python = if opts.python {
        let env = crate::python::ensure()?;
        crate::python::ensure_tollgate(&env)?;
        Some(env)
    } else {
        None
    };
    let mut report = SpeedReport {
        redis_ceiling: redis_benchmark(&redis, opts.bench_requests)?,
        ..SpeedReport::default()
    };
    eprintln!(
        "redis-benchmark EVALSHA reserve.lua: 1 client {:.0}/s; 50 clients {:.0}/s, {:.0}/s pipelined",
        report.redis_ceiling.0, report.redis_ceiling.1, report.redis_ceiling.2
    );
    // One caller runs on one thread, as the Python library's one asyncio loop:
    // a single-thread runtime saves the hop between worker threads on every
    // call. More callers use both cores.
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for &c in &opts.concurrency {
        let on = if c == 1 { &single } else { &rt };
        let tg = on.block_on(tollgate_throughput(&url, c, opts.secs))?;
        eprintln!(
            "tollgate c={c}: {:.0}/s p50 {:.3} ms p99 {:.3} ms",
            tg.per_sec, tg.p50, tg.p99
        );
        let py = match &python {
            Some(env) => Some(python_throughput(
                env,
                &url,
                &format!("speed-c{c}"),
                c,
                opts.secs,
                None,
            )?),
            None => None,
        };
        report.throughput.push((c, tg, py));
        if let Some(env) = &python {
            let key = format!("speed-py-c{c}");
            let p = python_throughput_of(env, "tollgate", &url, &key, c, opts.secs, None)?;
            report.tollgate_python.push((c, p));
        }
        if c == 1 && opts.one_core {
            report.one_core = Some(one_core(&redis, python.as_ref(), opts)?);
        }
    }
    for &n in &opts.fills {
        let window = rt.block_on(tollgate_fill(&url, n, opts.samples, false))?;
        let queued = rt.block_on(tollgate_fill(&url, n, opts.samples, true))?;
        let py = match &python {
            Some(env) => {
                let v = run_python(
                    env,
                    None,
                    serde_json::json!({
                        "mode": "fill", "url": url, "key": format!("fill-{n}"), "fill": n,
                        "samples": opts.samples, "max_secs": 15, "window": 60,
                    }),
                )?;
                Some((
                    v["p50"].as_f64().unwrap_or(0.0),
                    v["p99"].as_f64().unwrap_or(0.0),
                ))
            }
            None => None,
        };
        if let Some(env) = &python {
            let v = run_python(
                env,
                None,
                serde_json::json!({
                    "mode": "fill", "url": url, "key": format!("fill-py-{n}"), "fill": n,
                    "samples": opts.samples, "max_secs": 15, "window": 60, "lib": "tollgate",
                }),
            )?;
            let p = (
                v["p50"].as_f64().unwrap_or(0.0),
                v["p99"].as_f64().unwrap_or(0.0),
            );
            eprintln!("fill {n}: tollgate for Python {p:?} (p50, p99 ms)");
            report.tollgate_python_fills.push((n, p));
        }
        eprintln!(
            "fill {n}: tollgate window {window:?} queued {queued:?} python {py:?} (p50, p99 ms)"
        );
        report.fills.push(FillLatency {
            fill: n,
            tollgate_window: window,
            tollgate_queued: queued,
            python: py,
        });
    }
    Ok(report)
}

/// Concurrency 1 with `redis-server`, the caller and `redis-benchmark` on
/// the process's last allowed core; Redis gets every core back afterwards.
fn one_core(
    redis: &RedisServer,
    python: Option<&crate::python::PythonEnv>,
    opts: &SpeedOptions,
) -> anyhow::Result<OneCore> {
    require("taskset")?;
    let all = affinity::allowed()?;
    let cpu = *all.last().context("no core")?;
    let pid = redis.pid().context("redis-server is not running")?;
    affinity::set(pid, &[cpu])?;
    let result = (|| {
        let url = redis.url();
        let secs = opts.secs;
        let tollgate = std::thread::spawn(move || -> anyhow::Result<Throughput> {
            affinity::set(0, &[cpu])?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(tollgate_throughput(&url, 1, secs))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the one-core caller panicked"))??;
        eprintln!(
            "tollgate c=1 on core {cpu} with Redis: {:.0}/s p50 {:.3} ms p99 {:.3} ms",
            tollgate.per_sec, tollgate.p50, tollgate.p99
        );
        let python = python
            .map(|env| python_throughput(env, &redis.url(), "speed-c1-core", 1, secs, Some(cpu)))
            .transpose()?;
        let sha = load_reserve(redis)?;
        let redis_one_client = evalsha_bench(redis, &sha, 1, 1, opts.bench_requests, Some(cpu))?;
        Ok(OneCore {
            cpu,
            tollgate,
            python,
            redis_one_client,
        })
    })();
    affinity::set(pid, &all)?;
    result
}

fn python_throughput(
    env: &crate::python::PythonEnv,
    url: &str,
    key: &str,
    c: usize,
    secs: f64,
    cpu: Option<usize>,
) -> anyhow::Result<Throughput> {
    python_throughput_of(env, "llmratelimiter", url, key, c, secs, cpu)
}

/// [`python_throughput`] of `lib`: `llmratelimiter`, or `tollgate` (for
/// Python), which takes the same calls.
fn python_throughput_of(
    env: &crate::python::PythonEnv,
    lib: &str,
    url: &str,
    key: &str,
    c: usize,
    secs: f64,
    cpu: Option<usize>,
) -> anyhow::Result<Throughput> {
    let v = run_python(
        env,
        cpu,
        serde_json::json!({
            "mode": "throughput", "url": url, "key": key,
            "concurrency": c, "secs": secs, "window": 1, "lib": lib,
        }),
    )?;
    let count = v["count"].as_f64().unwrap_or(0.0);
    let secs = v["secs"].as_f64().unwrap_or(1.0);
    let p = Throughput {
        per_sec: count / secs,
        p50: v["p50"].as_f64().unwrap_or(0.0),
        p99: v["p99"].as_f64().unwrap_or(0.0),
        p999: v["p999"].as_f64().unwrap_or(0.0),
    };
    let placed = cpu.map_or(String::new(), |cpu| format!(" on core {cpu} with Redis"));
    eprintln!(
        "{lib} (Python) c={c}{placed}: {:.0}/s p50 {:.3} ms p99 {:.3} ms",
        p.per_sec, p.p50, p.p99
    );
    Ok(p)
}

/// `program`, to run on core `cpu` if given (through `taskset`, so that it
/// starts there).
fn command_on(program: &std::ffi::OsStr, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs the Python speed script, on core `cpu` if given.
fn run_python(
    env: &crate::python::PythonEnv,
    cpu: Option<usize>,
    cfg: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let out = command_on(env.python.as_os_str(), cpu)
        .arg(&env.speed)
        .arg(cfg.to_string())
        .output()
        .context("running the Python speed script")?;
    if !out.status.success() {
        bail!(
            "python speed.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing the Python speed output")
}

fn unlimited() -> Limits {
    Limits::new()
        .requests(1_000_000_000)
        .tokens(1_000_000_000_000)
}

async fn tollgate_throughput(url: &str, c: usize, secs: f64) -> anyhow::Result<Throughput> {
    let limiter = RateLimiter::new(url, &format!("speed-c{c}"), unlimited()).await?;
    let _ = limiter.acquire(Cost::tokens(1)).await?;
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..c {
        let limiter = limiter.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < stop {
                let t = Instant::now();
                if limiter.acquire(Cost::tokens(1)).await.is_err() {
                    return Err(anyhow::anyhow!("acquire failed during the speed run"));
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(Throughput {
        per_sec: lat.len() as f64 / elapsed,
        p50: quantile(&lat, 0.5),
        p99: quantile(&lat, 0.99),
        p999: quantile(&lat, 0.999),
    })
}

/// Fills a fresh key with `n` reservations, then times `samples` sequential
/// reservations: with `queued`, every reservation waits in the queue (slots
/// in the future, the queue holds them all); otherwise they are admitted at
/// once and only drain from the window.
async fn tollgate_fill(
    url: &str,
    n: usize,
    samples: usize,
    queued: bool,
) -> anyhow::Result<(f64, f64)> {
    let key = format!("fill-{}-{n}", if queued { "q" } else { "w" });
    let limits = if queued {
        // One request per second: reservation k waits k seconds.
        Limits::new().requests(60)
    } else {
        unlimited()
    };
    let limiter = Arc::new(RateLimiter::new(url, &key, limits).await?);
    let options = AcquireOptions::default();
    let per_task = n.div_ceil(64);
    let filling = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let limiter = limiter.clone();
        let options = options.clone();
        let count = per_task.min(n.saturating_sub(t * per_task));
        tasks.spawn(async move {
            for _ in 0..count {
                let _queued = limiter.reserve(Cost::request_only(), &options).await?;
            }
            Ok::<_, tollgate::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    if queued {
        let depth = limiter.status().await?.queue_depth;
        let least = least_queued(n as u64, filling.elapsed().as_secs_f64());
        if depth < least {
            bail!("expected at least {least} of {n} reservations queued, found {depth}");
        }
    }
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let _queued = limiter.reserve(Cost::request_only(), &options).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    Ok((quantile(&lat, 0.5), quantile(&lat, 0.99)))
}

/// The fewest of `n` reservations of the queued fill (one request a second,
/// 60 at once) still queued `secs` after the fill began: the first 60 (and
/// one more at the start) fit the bucket at once, and one reservation's slot
/// comes each second, leaving the queue; a fill of 50,000 takes seconds.
fn least_queued(n: u64, secs: f64) -> u64 {
    n.saturating_sub(61 + secs.ceil() as u64)
}

/// Loads tollgate's reserve script and runs `redis-benchmark` on it.
/// `redis-benchmark` of `reserve.lua` by SHA: one client, then 50 clients
/// unpipelined and with 16 commands pipelined (acquires/s each).
fn redis_benchmark(redis: &RedisServer, requests: u64) -> anyhow::Result<(f64, f64, f64)> {
    let sha = load_reserve(redis)?;
    let one = evalsha_bench(redis, &sha, 1, 1, requests, None)?;
    let plain = evalsha_bench(redis, &sha, 50, 1, requests, None)?;
    let pipelined = evalsha_bench(redis, &sha, 50, 16, requests, None)?;
    // The script must have succeeded, or the figure would measure errors.
    let n = redis.cli(&["HGET", "tollgate:{rb}:s", "s"])?;
    if n.trim().is_empty() {
        bail!("redis-benchmark's EVALSHA did not write a reservation (script arguments wrong?)");
    }
    Ok((one, plain, pipelined))
}

/// The arguments of the benchmarked reservation. `reserve.lua` takes its
/// numbers as one argument of binary doubles, which a command line cannot
/// carry (zero bytes), so the benchmarked script makes them itself, ahead of
/// the real script's text: tolerance 60 s, no max wait, no queue cap, idle
/// 60 s, class 0, no deadline, tau 60 s, no lease; requests and tokens: a
/// charge of 1e-9 s (T = 1e-9 s, cost 1), no TAT known; no epoch seen. It
/// costs the packing of 14 doubles more than the library's calls (~0.3 µs).
const BENCH_ARGS: &str = "local ARGV = {'\\0\\0' .. struct.pack('<dddddddddddddd', 60, -1, -1, 60000, 0, -1, 60, -1, 0, 0.000000001, -1, 1, 0.000000001, -1)}\n";

/// Loads `reserve.lua` with its benchmark arguments and returns its SHA.
fn load_reserve(redis: &RedisServer) -> anyhow::Result<String> {
    let script = format!("{BENCH_ARGS}{RESERVE_LUA}");
    Ok(redis.cli(&["SCRIPT", "LOAD", &script])?.trim().to_string())
}

/// `redis-benchmark` of `EVALSHA reserve.lua` (acquires/s), on core `cpu`
/// if given.
fn evalsha_bench(
    redis: &RedisServer,
    sha: &str,
    clients: usize,
    pipeline: usize,
    requests: u64,
    cpu: Option<usize>,
) -> anyhow::Result<f64> {
    let out = command_on("redis-benchmark".as_ref(), cpu)
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-n",
            &requests.to_string(),
            "-P",
            &pipeline.to_string(),
            "--csv",
        ])
        .args(["EVALSHA", sha, "2"])
        .args(["tollgate:{rb}:s", "tollgate:epoch"])
        // The arguments are in the script itself (see `BENCH_ARGS`).
        .output()
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    line.split(',')
        .nth(1)
        .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        .with_context(|| format!("parsing redis-benchmark output: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run that stopped at the 50,000 fill: its fill took a few seconds,
    /// in which that many slots came and left the queue.
    #[test]
    fn a_queued_fill_that_takes_seconds_still_counts() {
        assert!(49_937 >= least_queued(50_000, 2.6));
        assert_eq!(least_queued(50_000, 0.2), 50_000 - 62);
        // A queue that lost more than time explains is still an error.
        assert!(49_000 < least_queued(50_000, 2.6));
        assert_eq!(least_queued(10, 1.0), 0);
    }
}
