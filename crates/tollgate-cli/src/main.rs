//! The `tollgate` command: `serve` the gateway, `hash-key` for the config,
//! `clients` and `keys` against a gateway's admin API.

mod admin_api;
mod bench;
mod registry;
mod report;
mod upstream;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// mimalloc instead of the system allocator: the request path allocates many
/// small short-lived buffers (HTTP, JSON, Redis commands), and glibc's malloc
/// took about 15% of the process's CPU at 5,000 requests/s (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's own (linked with [`ALLOCATOR`]): frees what it can of
    /// the memory it keeps, `force`: every thread's and the arenas' pages
    /// freed but kept.
    fn mi_collect(force: bool);
}

/// Hands back to the system the memory the allocator kept after start:
/// reading a registry of 100,000 clients and 200,000 keys frees a page of
/// rows and its parsed values per 5,000, and mimalloc keeps such pages for
/// later use unless told, which would count against the gateway's memory
/// per client (docs/BENCHMARKS.md, "The registry at scale").
fn release_start_memory() {
    // SAFETY: mi_collect takes no pointer and may be called from any
    // thread at any time.
    unsafe { mi_collect(true) }
}

const USAGE: &str = "tollgate: keep LLM API traffic inside its limits

usage:
  tollgate serve --config FILE     run the gateway with a config file
  tollgate serve --demo [--fault MODEL=MODE@RATE]... [--seed N]
                                   run a self-contained demo (memory store,
                                   simulated upstream, demo keys printed);
                                   --fault replaces the demo's failure modes
                                   (MODE: 5xx status, 429[:SECS], hang,
                                   slow:MS, close:EVENTS; --fault none: none)
  tollgate hash-key KEY            print the SHA-256 of an API key for the config
  tollgate report --config FILE [--from WHEN] [--to WHEN] [--group-by G]
                                   the usage ledger's requests, refusals,
                                   tokens, spend, waits and savings as a
                                   table; `tollgate report --help`
  tollgate bench [--rates 1000,5000] [--secs 5] [--store URL]
                 [--target NAME=URL] [--key KEY] [--search-p99-ms MS]
                                   latency the gateway (and other proxies)
                                   add over the upstream; `tollgate bench
                                   --help` for every option
  tollgate clients list|create|show|set-tier|disable|enable ...
  tollgate keys list|issue|show|rotate|revoke ...
                                   the registry's clients and keys through a
                                   gateway's admin API ($TOLLGATE_URL,
                                   $TOLLGATE_ADMIN_TOKEN); `tollgate clients
                                   help`, `tollgate keys help`
  tollgate upstream-sim [--port PORT] [--latency-ms MS] [--fault ...] [--seed N]
                                   run the simulated OpenAI-compatible
                                   upstream alone on 127.0.0.1
  tollgate help                    this text

logs: RUST_LOG=info (default) or e.g. RUST_LOG=tollgate=debug; TOLLGATE_LOG=json for JSON lines";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the chain of causes, never a backtrace: these are
            // errors for people, each saying what to do.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process (Linux), unless
/// `MIMALLOC_ALLOW_THP` says otherwise. On hosts where THP is `always`, each
/// first touch of fresh heap memory faults in and zeroes a whole 2 MiB page;
/// at 5,000 requests/s that stalled the runtime for 20–190 ms about once per
/// 5 s run (docs/BENCHMARKS.md, "Runtime stalls"). With 4 KiB pages the same
/// growth costs microseconds per fault.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a
        // flag on this process's memory map; it touches no Rust memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            // Old kernels lack it: the process runs as before.
            eprintln!(
                "note: could not turn transparent huge pages off: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn run() -> Result<()> {
    no_huge_pages();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("hash-key") => {
            let [_, key] = args.as_slice() else {
                bail!("usage: tollgate hash-key KEY");
            };
            if matches!(key.as_str(), "--help" | "-h") {
                println!("usage: tollgate hash-key KEY");
                return Ok(());
            }
            println!("{}", tollgate_gateway::auth::hash_key(key));
            Ok(())
        }
        Some("serve") => {
            init_logs();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve(&args[1..]))
        }
        Some("bench") => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(bench::run(&args[1..]))
        }
        Some("bench-generator") => {
            // The load generator `bench` starts in a process of its own.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(bench::generator::serve(&args[1..]))
        }
        Some("report") => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(report::run(&args[1..]))
        }
        Some(cmd @ ("clients" | "keys")) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            if cmd == "clients" {
                runtime.block_on(registry::clients(&args[1..]))
            } else {
                runtime.block_on(registry::keys(&args[1..]))
            }
        }
        Some("upstream-sim") => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(upstream::run(&args[1..], shutdown_signal()))
        }
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("TOLLGATE_LOG").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(args: &[String]) -> Result<()> {
    let mut config_path: Option<PathBuf> = None;
    let mut demo = false;
    let mut listen: Option<String> = None;
    let mut faults: Option<tollgate_gateway::upstream_sim::Faults> = None;
    let mut seed: Option<u64> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => {
                config_path = Some(it.next().context("--config needs a file path")?.into())
            }
            "--demo" => demo = true,
            "--fault" => {
                let spec = it
                    .next()
                    .context("--fault needs MODEL=MODE@RATE, e.g. gpt-4o=503@0.1")?;
                let f = faults.get_or_insert_with(Default::default);
                if spec != "none" {
                    f.add(spec)?;
                }
            }
            "--seed" => {
                seed = Some(
                    it.next()
                        .context("--seed needs a whole number")?
                        .parse()
                        .context("--seed takes a whole number")?,
                )
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--listen" => {
                listen = Some(
                    it.next()
                        .context("--listen needs an address such as 127.0.0.1:8080")?
                        .clone(),
                )
            }
            other => bail!("unknown option {other:?} for serve\n\n{USAGE}"),
        }
    }
    if !demo && (faults.is_some() || seed.is_some()) {
        bail!("--fault and --seed set the demo's simulated upstream: use them with --demo");
    }
    let mut _upstream = None;
    let config = match (demo, config_path) {
        (true, None) => {
            let mut sim_config = tollgate_gateway::demo::sim_config();
            if let Some(f) = faults.take() {
                sim_config.faults.by_model = f.by_model;
            }
            if let Some(seed) = seed {
                sim_config.faults.seed = seed;
            }
            let sim = tollgate_gateway::upstream_sim::start(sim_config, 0)
                .await
                .context("cannot start the simulated upstream on 127.0.0.1")?;
            let mut cfg = tollgate_gateway::demo::config(
                listen.as_deref().unwrap_or("127.0.0.1:8080"),
                &sim.base_url(),
            );
            // The demo's ledger: a temporary file, reported on at start.
            let ledger = std::env::temp_dir().join(format!(
                "tollgate-demo-ledger-{}.sqlite",
                std::process::id()
            ));
            cfg.ledger.url = ledger.display().to_string();
            tracing::info!(path = %ledger.display(), "demo ledger (SQLite, temporary)");
            _upstream = Some(sim);
            cfg
        }
        (false, Some(path)) => {
            let mut cfg = tollgate_gateway::Config::load(&path)?;
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            cfg
        }
        (true, Some(_)) => bail!("give either --demo or --config FILE, not both"),
        (false, None) => {
            bail!("tollgate serve needs --config FILE (see config/tollgate.example.toml) or --demo")
        }
    };
    let running = tollgate_gateway::start(config).await?;
    release_start_memory();
    if demo {
        let url = running.url();
        println!("{}", tollgate_gateway::demo::banner(&url));
        let issued = tollgate_gateway::demo::issue_key(&running.gateway)
            .await
            .context("the demo could not issue its key through the registry")?;
        println!("{}", tollgate_gateway::demo::issued_banner(&url, &issued));
    }
    running
        .serve_until(shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM (what container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing running requests");
}
