//! `tollgate upstream-sim`: the simulated OpenAI-compatible upstream as a
//! process of its own, so that something outside this binary (LiteLLM's
//! proxy in `scripts/bench/gateway-vs-litellm.sh`) can be put in front of it.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tollgate_gateway::upstream_sim::{self, SimConfig};

/// What `tollgate upstream-sim` accepts.
pub const USAGE: &str = "usage: tollgate upstream-sim [--port PORT] [--latency-ms MS] [--completion-tokens N] [--fault MODEL=MODE@RATE]... [--seed N]

  --fault gpt-4o=503@0.1   a share of a model's requests fails: MODE is a 5xx status,
                           429[:RETRY_AFTER_SECS], hang, slow:MS or close:EVENTS
  --seed N                 which requests fail (the same seed fails the same ones)";

/// Starts the simulated upstream on `127.0.0.1:PORT` and runs it until
/// `shutdown` completes. With `--latency-ms 0` (the default) it answers at
/// once, as in `tollgate bench`.
pub async fn run(args: &[String], shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let mut port = 0u16;
    let mut config = SimConfig {
        latency: Duration::ZERO,
        chunk_interval: Duration::ZERO,
        completion_tokens: 16,
        ..Default::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if matches!(a.as_str(), "--help" | "-h") {
            println!("{USAGE}");
            return Ok(());
        }
        let v = it
            .next()
            .with_context(|| format!("{a} needs a value\n{USAGE}"))?;
        match a.as_str() {
            "--port" => port = v.parse().context("--port takes a port number (0: any)")?,
            "--latency-ms" => {
                let ms: u64 = v.parse().context("--latency-ms takes milliseconds")?;
                config.latency = Duration::from_millis(ms);
            }
            "--fault" => config.faults.add(v)?,
            "--seed" => config.faults.seed = v.parse().context("--seed takes a whole number")?,
            "--completion-tokens" => {
                config.completion_tokens = v
                    .parse()
                    .context("--completion-tokens takes a number of tokens")?
            }
            other => bail!("unknown option {other:?} for upstream-sim\n{USAGE}"),
        }
    }
    let sim = upstream_sim::start(config, port)
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    // One line on stdout that scripts wait for and parse.
    println!("simulated upstream on {}", sim.base_url());
    shutdown.await;
    Ok(())
}
