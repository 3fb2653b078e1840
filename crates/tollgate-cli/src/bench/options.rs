//! The options of `tollgate bench`, parsed and checked in one place.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What `tollgate bench --help` prints.
pub const USAGE: &str = "usage: tollgate bench [options]

Open-loop load, at each rate in turn: straight to the simulated upstream
(\"direct\"), through tollgate with the memory store, through tollgate with
--store (if given), and through each --target. \"added\" = target − direct
at the same rate and percentile. The load comes from a process of its own
(with the simulated upstream), alone on a core where three or more are
allowed (on fewer, it shares them with the gateways); each row gives the
load process's CPU time per request (load and simulated upstream), this
process's (the gateway's) and, through a Redis --store, Redis's script
calls (INFO commandstats) and CPU time (INFO cpu) per request.

  --rates 1000,5000       offered rates, requests/s
  --secs 5                length of each run
  --store URL             also measure tollgate with this store (redis://...)
  --upstream URL          use this simulated upstream (http://ADDR/v1) instead
                          of one started beside the load generator
  --target NAME=URL       also measure this OpenAI-compatible base URL
                          (http://ADDR/v1); repeatable
  --key KEY               bearer key for the load (tg-demo-enterprise)
  --model NAME            the model (or route) every request names
                          (gpt-4o-mini; `auto` is routed by the demo's routes)
  --limited-key KEY       key of the limits check (tg-demo-free)
  --check-limits          first send 20 requests at once with --limited-key
                          to every gateway and count 200s and 429s
  --search-p99-ms MS      then find the highest rate each endpoint holds
                          (≤ 0.1% not ok and p99 ≤ MS)
  --search-from 250       first rate of the search (doubled until it fails,
  --search-to 16000       up to this, then bisected twice)
  --search-secs 2         length of each search run (at least 200 requests)
  --timeout-secs 5        a request unanswered for this long is timed out
  --max-in-flight 2000    requests due beyond this many in flight are shed
  --ledger-off            also measure each tollgate endpoint with the usage
                          ledger off (NAME-noledger), beside the same gateway
                          with its ledger in a temporary SQLite file
  --only NAME,NAME        measure only these endpoints (direct is always kept)
  --tsv FILE              append one line per run to FILE";

/// Parsed options.
pub struct Options {
    /// Offered rates, requests/s.
    pub rates: Vec<u64>,
    /// Length of each run, seconds.
    pub secs: f64,
    /// A second store for tollgate (the memory store is always measured).
    pub store: Option<String>,
    /// An external simulated upstream's base URL.
    pub upstream: Option<String>,
    /// External endpoints: (name, base URL).
    pub targets: Vec<(String, String)>,
    /// Key for the load.
    pub key: String,
    /// The model or route the requests name.
    pub model: String,
    /// Key for the limits check.
    pub limited_key: String,
    /// Whether to run the limits check.
    pub check_limits: bool,
    /// The p99 bound of the search, if searching.
    pub search_p99: Option<Duration>,
    /// First rate of the search.
    pub search_from: u64,
    /// Highest rate the search tries.
    pub search_to: u64,
    /// Length of each search run, seconds.
    pub search_secs: f64,
    /// Per-request timeout.
    pub timeout: Duration,
    /// In-flight cap.
    pub max_in_flight: usize,
    /// Endpoint names to keep (empty: all).
    pub only: Vec<String>,
    /// Also measure each tollgate endpoint with the ledger off.
    pub ledger_off: bool,
    /// Where to append machine-readable results.
    pub tsv: Option<PathBuf>,
}

fn numbers(v: &str, what: &str) -> Result<Vec<u64>> {
    v.split(',')
        .map(|r| {
            r.trim()
                .parse()
                .with_context(|| format!("{what} takes numbers such as 1000,5000"))
        })
        .collect()
}

/// Parses the arguments after `bench`; `Ok(None)` for `--help`.
pub fn parse(args: &[String]) -> Result<Option<Options>> {
    let mut o = Options {
        rates: vec![1000, 5000],
        secs: 5.0,
        store: None,
        upstream: None,
        targets: Vec::new(),
        key: "tg-demo-enterprise".into(),
        model: "gpt-4o-mini".into(),
        limited_key: "tg-demo-free".into(),
        check_limits: false,
        search_p99: None,
        search_from: 250,
        search_to: 16_000,
        search_secs: 2.0,
        timeout: Duration::from_secs(5),
        max_in_flight: 2000,
        only: Vec::new(),
        ledger_off: false,
        tsv: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--help" | "-h" => return Ok(None),
            "--check-limits" => {
                o.check_limits = true;
                continue;
            }
            "--ledger-off" => {
                o.ledger_off = true;
                continue;
            }
            _ => {}
        }
        let v = it
            .next()
            .with_context(|| format!("{a} needs a value\n\n{USAGE}"))?;
        let secs = |what: &str| -> Result<f64> {
            let s: f64 = v
                .parse()
                .with_context(|| format!("{what} takes a number of seconds"))?;
            if !(s > 0.0 && s <= 3600.0) {
                bail!("{what} must be in (0, 3600] seconds");
            }
            Ok(s)
        };
        match a.as_str() {
            "--rates" => o.rates = numbers(v, "--rates")?,
            "--secs" => o.secs = secs("--secs")?,
            "--store" => o.store = Some(v.clone()),
            "--upstream" => o.upstream = Some(v.trim_end_matches('/').to_string()),
            "--target" => {
                let (name, url) = v
                    .split_once('=')
                    .context("--target takes NAME=URL, e.g. litellm=http://127.0.0.1:4000/v1")?;
                o.targets
                    .push((name.to_string(), url.trim_end_matches('/').to_string()));
            }
            "--key" => o.key = v.clone(),
            "--model" => o.model = v.clone(),
            "--limited-key" => o.limited_key = v.clone(),
            "--search-p99-ms" => {
                let ms: f64 = v.parse().context("--search-p99-ms takes milliseconds")?;
                o.search_p99 = Some(Duration::from_secs_f64(ms / 1000.0));
            }
            "--search-from" => o.search_from = v.parse().context("--search-from takes a rate")?,
            "--search-to" => o.search_to = v.parse().context("--search-to takes a rate")?,
            "--search-secs" => o.search_secs = secs("--search-secs")?,
            "--timeout-secs" => o.timeout = Duration::from_secs_f64(secs("--timeout-secs")?),
            "--max-in-flight" => {
                o.max_in_flight = v.parse().context("--max-in-flight takes a number")?
            }
            "--only" => o.only = v.split(',').map(|s| s.trim().to_string()).collect(),
            "--tsv" => o.tsv = Some(v.into()),
            other => bail!("unknown option {other:?} for bench\n\n{USAGE}"),
        }
    }
    let bad_rate = |r: u64| r == 0 || r > 1_000_000;
    if o.rates.iter().any(|&r| bad_rate(r)) || bad_rate(o.search_from) || bad_rate(o.search_to) {
        bail!("rates must be between 1 and 1000000 requests/s");
    }
    if o.search_from > o.search_to {
        bail!("--search-from must not exceed --search-to");
    }
    if o.max_in_flight == 0 {
        bail!("--max-in-flight must be at least 1");
    }
    Ok(Some(o))
}
