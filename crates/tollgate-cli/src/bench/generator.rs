//! The load generator in a process of its own (`tollgate bench-generator`,
//! started by `tollgate bench`), so that the bench measures the gateway and
//! not its own load: the generator and the simulated upstream run there, the
//! gateways under test in the parent, whose CPU time is then the gateways'
//! alone. Where the machine has a core to spare (three or more allowed), the
//! generator gets one of its own: it runs only there, the parent everywhere
//! else. With two cores (or one) nobody is pinned: the gateway, its store
//! and the generator share them, so latencies include the generator's
//! contention, while each process's CPU time per request (the gateway's and
//! the generator's, both reported) stays its own.
//!
//! The parent sends one job a line (JSON) on the child's stdin; the child
//! answers each with one line on its stdout.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tollgate_gateway::upstream_sim::{self, SimConfig};

use super::load::{self, Endpoint, Run, Settings, Tally};

/// One job for the generator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
enum Job {
    /// [`load::run`].
    Run {
        url: String,
        key: String,
        body: String,
        rate: u64,
        secs: f64,
    },
    /// [`load::burst`].
    Burst {
        url: String,
        key: String,
        body: String,
        n: usize,
    },
    /// [`load::settle`].
    Settle {
        url: String,
        key: String,
        body: String,
        limit_secs: f64,
    },
}

/// What the generator says when it is ready.
#[derive(Debug, Serialize, Deserialize)]
struct Ready {
    /// Base URL of the simulated upstream it started (none when `--upstream`).
    upstream: Option<String>,
    /// The core it is pinned to, if any.
    cpu: Option<usize>,
}

/// A run as it crosses the pipe.
#[derive(Debug, Serialize, Deserialize)]
struct RunWire {
    rate: u64,
    sent: u64,
    tally: Tally,
    p50_us: u64,
    p99_us: u64,
    achieved: f64,
    lag_us: u64,
    /// The generator process's CPU time over the run (absent: not measured).
    #[serde(default)]
    cpu_us: Option<u64>,
}

impl From<&Run> for RunWire {
    fn from(r: &Run) -> Self {
        RunWire {
            rate: r.rate,
            sent: r.sent,
            tally: r.tally,
            p50_us: r.p50.as_micros() as u64,
            p99_us: r.p99.as_micros() as u64,
            achieved: r.achieved,
            lag_us: r.lag.as_micros() as u64,
            cpu_us: r.generator_cpu.map(|d| d.as_micros() as u64),
        }
    }
}

impl From<RunWire> for Run {
    fn from(w: RunWire) -> Self {
        Run {
            rate: w.rate,
            sent: w.sent,
            tally: w.tally,
            p50: Duration::from_micros(w.p50_us),
            p99: Duration::from_micros(w.p99_us),
            achieved: w.achieved,
            lag: Duration::from_micros(w.lag_us),
            generator_cpu: w.cpu_us.map(Duration::from_micros),
        }
    }
}

/// The parent's handle on the generator process.
pub struct Generator {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Base URL of the simulated upstream it runs, if it runs one.
    pub upstream: Option<String>,
    /// The core it runs on alone, if it has one.
    pub cpu: Option<usize>,
}

impl Generator {
    /// Starts `tollgate bench-generator` (this same program), with a
    /// simulated upstream when `sim`, and pins it where a core is spare.
    pub async fn start(sim: bool, settings: Settings, timeout: Duration) -> Result<Generator> {
        let exe = std::env::current_exe().context("cannot find the tollgate program")?;
        let cpu = affinity::spare_core();
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("bench-generator")
            .args(["--max-in-flight", &settings.max_in_flight.to_string()])
            .args(["--timeout-secs", &timeout.as_secs_f64().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if sim {
            cmd.arg("--sim");
        }
        if let Some(cpu) = cpu {
            cmd.args(["--cpu", &cpu.to_string()]);
        }
        let mut child = cmd.spawn().context("cannot start the load generator")?;
        let stdin = child.stdin.take().context("generator stdin")?;
        let stdout = child.stdout.take().context("generator stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready: Ready = read(&mut lines).await?;
        if let Some(cpu) = ready.cpu {
            // The rest of the machine for this process (the gateways).
            affinity::keep_off(cpu)?;
        }
        Ok(Generator {
            child,
            stdin,
            lines,
            upstream: ready.upstream,
            cpu: ready.cpu,
        })
    }

    /// The process id of the generator.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn ask<T: for<'de> Deserialize<'de>>(&mut self, job: &Job) -> Result<T> {
        let mut line = serde_json::to_string(job)?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .context("the load generator went away")?;
        self.stdin.flush().await?;
        read(&mut self.lines).await
    }

    /// [`load::run`] in the generator.
    pub async fn run(&mut self, e: &Endpoint, rate: u64, secs: f64) -> Result<Run> {
        let job = Job::Run {
            url: e.url.to_string(),
            key: e.key.to_string(),
            body: e.body.to_string(),
            rate,
            secs,
        };
        Ok(self.ask::<RunWire>(&job).await?.into())
    }

    /// [`load::burst`] in the generator.
    pub async fn burst(&mut self, e: &Endpoint, n: usize) -> Result<Tally> {
        let job = Job::Burst {
            url: e.url.to_string(),
            key: e.key.to_string(),
            body: e.body.to_string(),
            n,
        };
        self.ask(&job).await
    }

    /// [`load::settle`] in the generator.
    pub async fn settle(&mut self, e: &Endpoint, limit: Duration) -> Result<()> {
        let job = Job::Settle {
            url: e.url.to_string(),
            key: e.key.to_string(),
            body: e.body.to_string(),
            limit_secs: limit.as_secs_f64(),
        };
        self.ask::<serde_json::Value>(&job).await.map(drop)
    }
}

async fn read<T: for<'de> Deserialize<'de>>(
    lines: &mut Lines<BufReader<ChildStdout>>,
) -> Result<T> {
    let line = lines
        .next_line()
        .await?
        .context("the load generator stopped (see its error above)")?;
    serde_json::from_str(&line).with_context(|| format!("bad line from the load generator: {line}"))
}

/// `tollgate bench-generator [--sim] [--cpu N] [--max-in-flight N]
/// [--timeout-secs S]`: the child's side.
pub async fn serve(args: &[String]) -> Result<()> {
    let (mut sim, mut cpu, mut max_in_flight, mut timeout) = (false, None, 2000, 5.0);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--sim" {
            sim = true;
            continue;
        }
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--cpu" => cpu = Some(v.parse::<usize>().context("--cpu takes a core number")?),
            "--max-in-flight" => max_in_flight = v.parse().context("--max-in-flight")?,
            "--timeout-secs" => timeout = v.parse().context("--timeout-secs")?,
            other => bail!("unknown option {other:?} for bench-generator"),
        }
    }
    if let Some(cpu) = cpu {
        affinity::only_on(cpu)?;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = match sim {
        true => Some(
            upstream_sim::start(
                SimConfig {
                    latency: Duration::ZERO,
                    chunk_interval: Duration::ZERO,
                    completion_tokens: 16,
                    ..Default::default()
                },
                0,
            )
            .await?,
        ),
        false => None,
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(max_in_flight)
        .timeout(Duration::from_secs_f64(timeout))
        .build()?;
    let settings = Settings { max_in_flight };
    let say = |line: String| -> Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        Ok(out.flush()?)
    };
    let ready = Ready {
        upstream: sim.as_ref().map(|s| s.base_url()),
        cpu,
    };
    say(serde_json::to_string(&ready)?)?;
    // Between jobs this thread waits for the next line; the simulated
    // upstream's tasks move to the other threads meanwhile.
    let next = || {
        tokio::task::block_in_place(|| {
            let mut line = String::new();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) => Ok(None),
                Ok(_) => Ok(Some(line)),
                Err(e) => Err(e),
            }
        })
    };
    while let Some(line) = next()? {
        let job: Job = serde_json::from_str(&line).with_context(|| format!("bad job {line}"))?;
        let endpoint = |url: String, key: String, body: String| Endpoint {
            name: String::new(),
            url: url.into(),
            key: key.into(),
            body: body.into(),
        };
        let answer = match job {
            Job::Run {
                url,
                key,
                body,
                rate,
                secs,
            } => {
                let before = cpu_time();
                let mut r =
                    load::run(&client, &endpoint(url, key, body), rate, secs, settings).await;
                r.generator_cpu = match (before, cpu_time()) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                    _ => None,
                };
                serde_json::to_string(&RunWire::from(&r))?
            }
            Job::Burst { url, key, body, n } => {
                serde_json::to_string(&load::burst(&client, &endpoint(url, key, body), n).await)?
            }
            Job::Settle {
                url,
                key,
                body,
                limit_secs,
            } => {
                let limit = Duration::from_secs_f64(limit_secs);
                load::settle(&client, &endpoint(url, key, body), limit).await;
                "{}".to_string()
            }
        };
        say(answer)?;
    }
    Ok(())
}

/// Which cores the processes run on (Linux; elsewhere nobody is pinned).
mod affinity {
    use anyhow::Result;

    /// A core for the generator alone: the last allowed one, when at least
    /// three are allowed (two stay for the gateway and its store).
    pub fn spare_core() -> Option<usize> {
        let cores = allowed().ok()?;
        (cores.len() >= 3).then(|| *cores.last().expect("three or more"))
    }

    #[cfg(target_os = "linux")]
    fn allowed() -> Result<Vec<usize>> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the call writes at
        // most its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            // SAFETY: below CPU_SETSIZE, the size of the set.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect())
    }

    #[cfg(not(target_os = "linux"))]
    fn allowed() -> Result<Vec<usize>> {
        Ok(Vec::new())
    }

    /// Sets every thread of this process to run on the cores `keep` accepts.
    #[cfg(target_os = "linux")]
    fn set_all(keep: impl Fn(usize) -> bool) -> Result<()> {
        let cores: Vec<usize> = allowed()?.into_iter().filter(|&c| keep(c)).collect();
        // SAFETY: as above; CPU_SET gets indices below CPU_SETSIZE.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for c in cores {
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        for task in std::fs::read_dir("/proc/self/task")? {
            let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
            // SAFETY: `set` is initialised and its size is passed with it.
            let rc = unsafe {
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn set_all(_keep: impl Fn(usize) -> bool) -> Result<()> {
        Ok(())
    }

    /// This process (every thread) on `cpu` only.
    pub fn only_on(cpu: usize) -> Result<()> {
        set_all(|c| c == cpu)
    }

    /// This process (every thread) anywhere but `cpu`.
    pub fn keep_off(cpu: usize) -> Result<()> {
        set_all(|c| c != cpu)
    }
}

/// CPU time this process has used so far (user + system).
pub fn cpu_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getrusage writes one rusage into the zeroed struct.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
            return None;
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Some(tv(u.ru_utime) + tv(u.ru_stime))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Script calls Redis has run so far (`EVALSHA` and `EVAL`, from `INFO
/// commandstats`) and the CPU time its process has used, in microseconds
/// (`used_cpu_user` + `used_cpu_sys` of `INFO cpu`): `info` holds both
/// sections. Commands a script runs are counted in commandstats too, and
/// inside the script's own time, so the process's CPU is the honest total.
pub fn redis_totals(info: &str) -> (u64, u64) {
    let (mut calls, mut cpu) = (0, 0.0);
    for line in info.lines().map(str::trim) {
        if let Some(rest) = line
            .strip_prefix("cmdstat_evalsha:")
            .or_else(|| line.strip_prefix("cmdstat_eval:"))
        {
            let n = rest.split(',').find_map(|f| f.strip_prefix("calls="));
            calls += n.and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        } else if let Some(v) = line
            .strip_prefix("used_cpu_user:")
            .or_else(|| line.strip_prefix("used_cpu_sys:"))
        {
            cpu += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    (calls, (cpu * 1e6).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commandstats() {
        let info = "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:2.500001\r\nused_cpu_sys_children:9.0\r\n# Commandstats\r\ncmdstat_evalsha:calls=300,usec=5100,usec_per_call=17.00,rejected_calls=0,failed_calls=0\r\ncmdstat_hset:calls=290,usec=100,usec_per_call=0.34,rejected_calls=0,failed_calls=0\r\ncmdstat_eval:calls=2,usec=1,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(redis_totals(info), (302, 3_750_001));
        assert_eq!(redis_totals(""), (0, 0));
    }
}
