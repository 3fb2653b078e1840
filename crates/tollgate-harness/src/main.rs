//! `tollgate-harness`: accuracy, fault, cluster and speed runs for tollgate,
//! side by side with the Python `llmratelimiter`. Every run binds to loopback,
//! stops by itself and kills what it started.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use tollgate_harness::accuracy::{self, AccuracyOptions, Mode, StoreKind};
use tollgate_harness::cluster::{self, ClusterOptions};
use tollgate_harness::faults::{self, Fault, FaultOptions};
use tollgate_harness::fleet::{worker_main, ClientKind};
use tollgate_harness::script_cost::{self, ScriptCostOptions};
use tollgate_harness::speed::{self, SpeedOptions};
use tollgate_harness::standin::{Standin, StandinConfig};

#[derive(Parser)]
#[command(
    name = "tollgate-harness",
    about = "Prove tollgate under load, faults and side by side with llmratelimiter"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreArg {
    Redis,
    Tls,
    Memory,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Exact,
    Double,
    Both,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Seconds of load per run.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// Concurrent tasks per process.
    #[arg(long, default_value_t = 16)]
    tasks: usize,
    /// Window of the limits, seconds.
    #[arg(long, default_value_t = 10.0)]
    window: f64,
    /// Tokens per window.
    #[arg(long, default_value_t = 400_000)]
    tokens: u64,
    /// Requests per window.
    #[arg(long, default_value_t = 1_000)]
    requests: u64,
    /// Stand-in's scheduling jitter allowance, ms (0 = strict).
    #[arg(long, default_value_t = 5.0)]
    tolerance_ms: f64,
    /// Simulated call latency at the stand-in, `min,max` ms.
    #[arg(long, default_value = "20,200")]
    latency_ms: String,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl LoadArgs {
    fn options(&self) -> anyhow::Result<AccuracyOptions> {
        anyhow::ensure!(
            self.duration > 0.0 && self.duration <= 3600.0,
            "--duration must be in (0, 3600] seconds"
        );
        anyhow::ensure!(
            self.processes >= 1 && self.processes <= 32,
            "--processes must be 1..=32"
        );
        anyhow::ensure!(
            self.tasks >= 1 && self.tasks <= 1024,
            "--tasks must be 1..=1024"
        );
        Ok(AccuracyOptions {
            duration: self.duration,
            processes: self.processes,
            tasks: self.tasks,
            window_secs: self.window,
            tokens: self.tokens,
            requests: self.requests,
            tolerance_ms: self.tolerance_ms,
            latency_ms: parse_range(&self.latency_ms)?,
            ..AccuracyOptions::default()
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Tiers sharing one provider model through two gateway instances on
    /// Redis: a free-tier flood, steady professional and bursty enterprise
    /// traffic against the token-bucket stand-in (docs/FAIRNESS.md). Fails
    /// when a target is missed.
    Fairness {
        /// Seconds of each phase.
        #[arg(long, default_value_t = 30.0)]
        phase_secs: f64,
        /// Phases: free alone, free + professional, then enterprise on
        /// and off in turn.
        #[arg(long, default_value_t = 7)]
        phases: usize,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The usage ledger's writer: rows/s into SQLite and PostgreSQL (a
    /// server of its own), batched and one row per transaction.
    LedgerWriter {
        /// Rows per batched run.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Rows per one-row-per-transaction run.
        #[arg(long, default_value_t = 2_000)]
        single_rows: usize,
        /// Runs of each (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the provider stand-in alone (for manual tests) for a while.
    Standin {
        /// Port on 127.0.0.1 (0: any free one).
        #[arg(long, default_value_t = 8700)]
        port: u16,
        /// Tokens per window.
        #[arg(long, default_value_t = 400_000)]
        tokens: u64,
        /// Requests per window.
        #[arg(long, default_value_t = 1_000)]
        requests: u64,
        /// Window, seconds.
        #[arg(long, default_value_t = 10.0)]
        window: f64,
        /// Jitter allowance, ms.
        #[arg(long, default_value_t = 5.0)]
        tolerance_ms: f64,
        /// Simulated latency, `min,max` ms.
        #[arg(long, default_value = "20,200")]
        latency_ms: String,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// Print the records as JSON on stdout at the end.
        #[arg(long)]
        json: bool,
    },
    /// Accuracy across processes: 429s, utilisation, largest window, FIFO.
    Accuracy {
        #[command(flatten)]
        load: LoadArgs,
        /// The store tollgate shares.
        #[arg(long, value_enum, default_value_t = StoreArg::Redis)]
        store: StoreArg,
        /// Estimates exact, doubled (and settled), or both runs.
        #[arg(long, value_enum, default_value_t = ModeArg::Both)]
        mode: ModeArg,
        /// Also run the Python llmratelimiter under the same load.
        #[arg(long)]
        python: bool,
        /// Only the Python library.
        #[arg(long)]
        python_only: bool,
        /// Also run the Python library with its combined tpm in the double mode.
        #[arg(long)]
        python_combined: bool,
    },
    /// Faults under load: kill/restart, SCRIPT FLUSH, CLIENT KILL, pause; per outage policy.
    Faults {
        /// Outage policies, comma-separated: open, closed, local:<share>.
        #[arg(long, default_value = "open,closed,local:0.5")]
        policies: String,
        /// Faults, comma-separated: kill, flush, clients, pause.
        #[arg(long, default_value = "kill,flush,clients,pause")]
        faults: String,
        /// Seconds of load before the fault.
        #[arg(long, default_value_t = 3.0)]
        before: f64,
        /// Seconds Redis stays down or paused.
        #[arg(long, default_value_t = 3.0)]
        outage: f64,
        /// Seconds of load after Redis is back.
        #[arg(long, default_value_t = 4.0)]
        after: f64,
        /// Worker processes.
        #[arg(long, default_value_t = 2)]
        processes: usize,
        /// Tasks per process.
        #[arg(long, default_value_t = 8)]
        tasks: usize,
        /// Also run the Python library through kill and pause.
        #[arg(long)]
        python: bool,
        /// Print the rows as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Speed side by side: acquires/s and latency by concurrency and by fill,
    /// and Redis's own ceiling from redis-benchmark.
    Speed {
        /// Concurrency levels, comma-separated.
        #[arg(long, default_value = "1,16,64,256")]
        concurrency: String,
        /// Seconds per throughput measurement.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Live reservations before timing, comma-separated.
        #[arg(long, default_value = "0,1000,10000,50000")]
        fills: String,
        /// Timed acquires per fill level.
        #[arg(long, default_value_t = 300)]
        samples: usize,
        /// Leave out the Python library.
        #[arg(long)]
        no_python: bool,
        /// Leave out the second concurrency-1 run, with the caller and
        /// redis-server on one core.
        #[arg(long)]
        no_one_core: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Redis's own time per call of reserve.lua and settle.lua (INFO
    /// commandstats) on a fresh redis-server: granted reservations settled
    /// with a refund, and queued reservations cancelled.
    Scripts {
        /// Reserve + settle pairs per workload.
        #[arg(long, default_value_t = 20_000)]
        pairs: usize,
        /// Print the rows as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The accuracy run on a 3-master Redis Cluster, one master killed mid-run.
    Cluster {
        #[command(flatten)]
        load: LoadArgs,
        /// Limiter keys (at least 3, one per master).
        #[arg(long, default_value_t = 3)]
        keys: usize,
        /// Do not kill a master.
        #[arg(long)]
        no_kill: bool,
        /// Outage policy: open, closed, local:<share>.
        #[arg(long, default_value = "local:0.25")]
        policy: String,
    },
    /// The registry at scale: clients and keys seeded in PostgreSQL, two
    /// gateway processes on it and Redis; start time, memory per client,
    /// and another client's latency on B while A takes admin changes.
    RegistryScale {
        /// Clients seeded.
        #[arg(long, default_value_t = 100_000)]
        clients: usize,
        /// Keys of each client.
        #[arg(long, default_value_t = 2)]
        keys_per_client: usize,
        /// Admin changes per second on A.
        #[arg(long, default_value_t = 100)]
        changes_per_sec: u32,
        /// Seconds of each phase (alone, then with the changes).
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
        /// Between two of the probe's requests on B, ms.
        #[arg(long, default_value_t = 5.0)]
        probe_every_ms: f64,
        /// The tollgate binary (default: beside this one).
        #[arg(long)]
        tollgate: Option<PathBuf>,
        /// PostgreSQL with fsync off (each change's commit no longer waits
        /// for the disk).
        #[arg(long)]
        no_fsync: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// What opening the registry costs in this process (wall and CPU
    /// time), on a PostgreSQL of its own seeded with clients and 2 keys
    /// each; under callgrind, `--opens 1` less `--opens 0` is one open's
    /// instructions.
    RegistryLoad {
        /// Clients seeded.
        #[arg(long, default_value_t = 100_000)]
        clients: usize,
        /// Times the registry is opened.
        #[arg(long, default_value_t = 3)]
        opens: usize,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Internal: one worker process (started by the harness).
    #[command(hide = true)]
    Worker {
        /// The configuration (JSON).
        config: PathBuf,
        /// Where to write the report (JSON).
        out: PathBuf,
    },
}

fn parse_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s
        .split_once(',')
        .with_context(|| format!("{s:?}: expected min,max"))?;
    Ok((a.trim().parse()?, b.trim().parse()?))
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Worker { config, out } => worker_main(&config, &out),
        Command::LedgerWriter {
            rows,
            single_rows,
            runs,
            json,
        } => {
            let opts = tollgate_harness::ledger_writer::WriterBenchOptions {
                rows,
                single_rows,
                runs: runs.max(1),
            };
            let result = tollgate_harness::ledger_writer::run(&opts)?;
            print_report(json, &result, |r| tollgate_harness::ledger_writer::table(r))
        }
        Command::Fairness {
            phase_secs,
            phases,
            json,
        } => {
            let opts = tollgate_harness::fairness::FairnessOptions { phase_secs, phases };
            let report = tollgate_harness::fairness::run(&opts)?;
            print_report(json, &report, tollgate_harness::fairness::render)?;
            anyhow::ensure!(
                report.missed.is_empty(),
                "targets missed: {:?}",
                report.missed
            );
            Ok(())
        }
        Command::RegistryScale {
            clients,
            keys_per_client,
            changes_per_sec,
            secs,
            probe_every_ms,
            tollgate,
            no_fsync,
            json,
        } => {
            let tollgate = match tollgate {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("tollgate"),
            };
            let opts = tollgate_harness::registry_scale::RegistryScaleOptions {
                clients,
                keys_per_client,
                changes_per_sec,
                secs,
                probe_every_ms,
                tollgate,
                durable: !no_fsync,
            };
            let report = tollgate_harness::registry_scale::run(&opts)?;
            print_report(json, &report, tollgate_harness::registry_scale::render)
        }
        Command::RegistryLoad {
            clients,
            opens,
            json,
        } => {
            let report = tollgate_harness::registry_load::run(clients, opens)?;
            print_report(json, &report, tollgate_harness::registry_load::render)
        }
        Command::Scripts { pairs, json } => {
            let rows = script_cost::run(&ScriptCostOptions { pairs })?;
            print_report(json, &rows, |r| script_cost::table(r))
        }
        Command::Cluster {
            load,
            keys,
            no_kill,
            policy,
        } => {
            anyhow::ensure!((3..=64).contains(&keys), "--keys must be 3..=64");
            let opts = ClusterOptions {
                load: load.options()?,
                keys,
                kill_at: (!no_kill).then_some(0.5),
                policy,
            };
            let rows = cluster::run(&opts)?;
            print_report(load.json, &rows, |r| cluster::table(r))
        }
        Command::Speed {
            concurrency,
            secs,
            fills,
            samples,
            no_python,
            no_one_core,
            json,
        } => {
            let list = |s: &str| -> anyhow::Result<Vec<usize>> {
                s.split(',')
                    .map(|v| Ok(v.trim().parse::<usize>()?))
                    .collect()
            };
            let opts = SpeedOptions {
                concurrency: list(&concurrency)?,
                secs,
                fills: list(&fills)?,
                samples,
                python: !no_python,
                one_core: !no_one_core,
                ..SpeedOptions::default()
            };
            anyhow::ensure!(
                opts.concurrency.iter().all(|&c| (1..=4096).contains(&c)),
                "--concurrency values must be 1..=4096"
            );
            anyhow::ensure!(
                opts.fills.iter().all(|&f| f <= 1_000_000),
                "--fills values must be at most 1000000"
            );
            anyhow::ensure!(secs > 0.0 && secs <= 120.0, "--secs must be in (0, 120]");
            anyhow::ensure!(
                (1..=100_000).contains(&samples),
                "--samples must be 1..=100000"
            );
            let report = speed::run(&opts)?;
            print_report(json, &report, |r| r.tables())
        }
        Command::Faults {
            policies,
            faults,
            before,
            outage,
            after,
            processes,
            tasks,
            python,
            json,
        } => {
            for (name, v) in [
                ("--before", before),
                ("--outage", outage),
                ("--after", after),
            ] {
                anyhow::ensure!(v > 0.0 && v <= 600.0, "{name} must be in (0, 600] seconds");
            }
            anyhow::ensure!(
                (1..=16).contains(&processes) && (1..=256).contains(&tasks),
                "--processes 1..=16, --tasks 1..=256"
            );
            let opts = FaultOptions {
                policies: policies.split(',').map(|s| s.trim().to_string()).collect(),
                faults: faults
                    .split(',')
                    .map(|s| Fault::parse(s.trim()))
                    .collect::<anyhow::Result<_>>()?,
                before,
                outage,
                after,
                processes,
                tasks,
                python,
                ..FaultOptions::default()
            };
            let rows = faults::run(&opts)?;
            print_report(json, &rows, |r| faults::table(r))
        }
        Command::Standin {
            port,
            tokens,
            requests,
            window,
            tolerance_ms,
            latency_ms,
            duration,
            json,
        } => {
            anyhow::ensure!(
                duration > 0.0 && duration <= 86_400.0,
                "--duration must be in (0, 86400]"
            );
            let standin = Standin::start(
                StandinConfig {
                    requests,
                    tokens,
                    window_secs: window,
                    tolerance: tolerance_ms / 1000.0,
                    latency_ms: parse_range(&latency_ms)?,
                },
                port,
            )?;
            eprintln!("stand-in on http://{} for {duration} s", standin.addr());
            let end = std::time::Instant::now() + Duration::from_secs_f64(duration);
            while std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_secs(1));
                let (calls, rejected, admitted) = standin.counts();
                eprintln!("calls={calls} 429s={rejected} tokens admitted={admitted}");
            }
            if json {
                println!("{}", serde_json::to_string(&standin.records())?);
            }
            Ok(())
        }
        Command::Accuracy {
            load,
            store,
            mode,
            python,
            python_only,
            python_combined,
        } => {
            let mut opts = load.options()?;
            opts.store = match store {
                StoreArg::Redis => StoreKind::Redis,
                StoreArg::Tls => StoreKind::Tls,
                StoreArg::Memory => StoreKind::Memory,
            };
            opts.modes = match mode {
                ModeArg::Exact => vec![Mode::Exact],
                ModeArg::Double => vec![Mode::Double],
                ModeArg::Both => vec![Mode::Exact, Mode::Double],
            };
            opts.clients = match (python, python_only) {
                (_, true) => vec![ClientKind::Python],
                (true, false) => vec![ClientKind::Tollgate, ClientKind::Python],
                _ => vec![ClientKind::Tollgate],
            };
            opts.python_combined = python_combined;
            let report = accuracy::run(&opts)?;
            print_report(load.json, &report, |r| r.table())
        }
    }
}

/// Prints a report as pretty JSON with `json`, else as its tables.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    tables: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{}", tables(report));
    }
    Ok(())
}
