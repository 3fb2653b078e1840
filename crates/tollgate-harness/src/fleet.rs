//! Worker processes: the harness re-executes itself (`tollgate-harness worker`)
//! or runs the Python worker, one OS process per [`WorkerConfig`], and collects
//! their reports. Every process is killed if it outlives its deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::worker::{WorkerConfig, WorkerReport};

/// Which limiter the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClientKind {
    /// tollgate (this crate's `worker` subcommand).
    Tollgate,
    /// The Python `llmratelimiter`.
    Python,
}

impl ClientKind {
    /// `tollgate` or `llmratelimiter`.
    pub fn name(&self) -> &'static str {
        match self {
            ClientKind::Tollgate => "tollgate",
            ClientKind::Python => "llmratelimiter",
        }
    }
}

/// Running worker processes.
pub struct Fleet {
    children: Vec<(Child, PathBuf, PathBuf)>,
}

/// The harness binary to re-execute: `TOLLGATE_HARNESS_EXE` or this process.
pub fn harness_exe() -> anyhow::Result<PathBuf> {
    match std::env::var_os("TOLLGATE_HARNESS_EXE") {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe().context("finding the harness binary"),
    }
}

impl Fleet {
    /// Starts one process per configuration; files go to `dir`.
    pub fn spawn(kind: ClientKind, configs: &[WorkerConfig], dir: &Path) -> anyhow::Result<Self> {
        let mut children = Vec::new();
        for cfg in configs {
            let cfg_path = dir.join(format!("{}-worker-{}.json", kind.name(), cfg.id));
            let out = dir.join(format!("{}-report-{}.json", kind.name(), cfg.id));
            let err = dir.join(format!("{}-stderr-{}.log", kind.name(), cfg.id));
            std::fs::write(&cfg_path, serde_json::to_vec(cfg)?)?;
            let mut cmd = match kind {
                ClientKind::Tollgate => {
                    let mut c = Command::new(harness_exe()?);
                    c.arg("worker");
                    c
                }
                ClientKind::Python => {
                    let env = crate::python::ensure()?;
                    let mut c = Command::new(env.python);
                    c.arg(env.worker);
                    c
                }
            };
            let child = cmd
                .arg(&cfg_path)
                .arg(&out)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&err)?)
                .spawn()
                .with_context(|| format!("starting a {} worker", kind.name()))?;
            children.push((child, out, err));
        }
        Ok(Fleet { children })
    }

    /// Waits for every process, calling `progress` about once a second; kills
    /// them all at `deadline`.
    pub fn wait(
        mut self,
        deadline: Instant,
        mut progress: impl FnMut(),
    ) -> anyhow::Result<Vec<WorkerReport>> {
        let mut next = Instant::now() + Duration::from_secs(1);
        loop {
            let mut running = 0;
            for (c, _, err) in &mut self.children {
                match c.try_wait() {
                    Ok(None) => running += 1,
                    Ok(Some(status)) if !status.success() => {
                        let log = std::fs::read_to_string(&*err).unwrap_or_default();
                        let tail: String = log
                            .chars()
                            .rev()
                            .take(1500)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        bail!("a worker failed ({status}): {tail}");
                    }
                    _ => {}
                }
            }
            if running == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{running} worker(s) still running past the deadline: killed");
            }
            if Instant::now() >= next {
                progress();
                next += Duration::from_secs(1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut reports = Vec::new();
        for (_, out, _) in &self.children {
            let text = std::fs::read(out).with_context(|| format!("reading {}", out.display()))?;
            reports.push(serde_json::from_slice(&text).context("parsing a worker report")?);
        }
        Ok(reports)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (c, _, _) in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Runs the worker subcommand: reads the configuration, runs, writes the report.
pub fn worker_main(config: &Path, out: &Path) -> anyhow::Result<()> {
    let cfg: WorkerConfig = serde_json::from_slice(
        &std::fs::read(config).with_context(|| format!("reading {}", config.display()))?,
    )
    .context("parsing the worker configuration")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(crate::worker::run(cfg))?;
    std::fs::write(out, serde_json::to_vec(&report)?)?;
    Ok(())
}
