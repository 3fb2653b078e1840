//! `tollgate bench`: the latency the gateway adds over calling the simulated
//! upstream directly, at fixed request rates (open loop: requests are sent on
//! schedule whether or not earlier ones have finished), side by side with any
//! other OpenAI-compatible proxy in front of the same upstream (`--target`,
//! e.g. LiteLLM's proxy in `scripts/bench/gateway-vs-litellm.sh`).
//!
//! Everything is on loopback. The simulated upstream (no artificial latency)
//! runs in this process unless `--upstream` names one; tollgate runs in this
//! process with the memory store and, with `--store`, with that store too.
//! Overhead = endpoint percentile − direct percentile at the same rate, the
//! runs of one rate following each other.

mod load;
mod options;

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use tollgate_gateway::upstream_sim::{self, SimConfig, SimUpstream};

use load::{Endpoint, Run, Settings};
use options::Options;

/// Longest wait for a saturated endpoint to work through its backlog.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// Requests sent at once before each run, so that the connection pools on
/// the way (load generator → endpoint → upstream) hold this many open
/// connections, as the pools of clients in steady traffic do. Without it,
/// any hiccup of a few milliseconds at 5,000 req/s made the generator open
/// hundreds of connections at once (and the gateway as many to the
/// upstream); on this VM that connection storm stalled the process for
/// 60–190 ms (docs/BENCHMARKS.md, "Runtime stalls").
const WARM_CONNECTIONS: usize = 256;

/// Requests sent at once by the limits check (the demo free tier allows 10
/// per minute).
const CHECK_REQUESTS: usize = 20;

/// Fewest requests in one step of the highest-rate search.
const SEARCH_MIN_REQUESTS: f64 = 200.0;

/// Runs the benchmark and prints its tables.
pub async fn run(args: &[String]) -> Result<()> {
    let Some(o) = options::parse(args)? else {
        println!("{}", options::USAGE);
        return Ok(());
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Kept alive for the whole run.
    let mut _sim: Option<SimUpstream> = None;
    let upstream = match &o.upstream {
        Some(url) => url.clone(),
        None => {
            let sim = upstream_sim::start(
                SimConfig {
                    latency: Duration::ZERO,
                    chunk_interval: Duration::ZERO,
                    completion_tokens: 16,
                },
                0,
            )
            .await?;
            let url = sim.base_url();
            _sim = Some(sim);
            url
        }
    };
    let mut gateways = Vec::new();
    let mut bases = vec![("direct".to_string(), upstream.clone())];
    let stores = std::iter::once("memory://".to_string()).chain(o.store.clone());
    for store in stores {
        let name = format!("tollgate-{}", store.split(':').next().unwrap_or("store"));
        if !wanted(&o, &name) {
            continue;
        }
        let gw = tollgate_gateway::start(gateway_config(&upstream, &store))
            .await
            .with_context(|| format!("cannot start tollgate with store {store}"))?;
        bases.push((name, format!("{}/v1", gw.url())));
        gateways.push(gw);
    }
    bases.extend(o.targets.iter().filter(|(n, _)| wanted(&o, n)).cloned());
    let endpoints: Vec<Endpoint> = bases
        .iter()
        .map(|(name, base)| Endpoint {
            name: name.clone(),
            url: format!("{base}/chat/completions").into(),
            key: o.key.as_str().into(),
        })
        .collect();

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.max_in_flight)
        .timeout(o.timeout)
        .build()?;
    let settings = Settings {
        max_in_flight: o.max_in_flight,
    };
    let mut tsv = match &o.tsv {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {} for appending", p.display()))?,
        ),
        None => None,
    };

    println!(
        "upstream: {upstream}   endpoints: {}   run: {} s   request: non-streamed chat, 16 output tokens",
        endpoints.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", "),
        o.secs
    );
    if o.check_limits {
        check_limits(&o, &client, &endpoints[1..]).await;
    }
    println!("\n{}", header());
    for &rate in &o.rates {
        let mut direct: Option<Run> = None;
        for e in &endpoints {
            // Warm the connection pools at a rate every endpoint can take,
            // then open WARM_CONNECTIONS of them.
            load::run(&client, e, rate.min(500), 0.5, settings).await;
            warm(&client, e).await;
            let r = load::run(&client, e, rate, o.secs, settings).await;
            let d = *direct.get_or_insert(r);
            println!("{}", row(&e.name, &r, &d));
            record(&mut tsv, "rate", &e.name, &r, &d)?;
            load::settle(&client, e, SETTLE_LIMIT).await;
        }
    }
    if let Some(max_p99) = o.search_p99 {
        println!(
            "\nhighest rate held (≤ 0.1% not ok, p99 ≤ {:.1} ms; {} s per step):",
            max_p99.as_secs_f64() * 1000.0,
            o.search_secs
        );
        for e in &endpoints {
            let (held, last) = search(&o, &client, e, settings, max_p99).await;
            let held_text = match held {
                Some(r) => format!("{r:>6} req/s"),
                None => format!("below {}", o.search_from),
            };
            let failed = match last {
                Some(f) => format!(
                    "{} req/s failed: p99 {:.2} ms, {} not ok of {} ({} 429, {} timed out, {} shed)",
                    f.rate,
                    ms(f.p99),
                    f.tally.not_ok(),
                    f.sent,
                    f.tally.limited,
                    f.tally.timed_out,
                    f.tally.shed
                ),
                None => format!("held up to --search-to {}", o.search_to),
            };
            println!("  {:<16} {held_text:<13}  ({failed})", e.name);
            if let Some(f) = &mut tsv {
                writeln!(f, "search\t{}\t{}", e.name, held.unwrap_or(0))?;
            }
        }
    }
    Ok(())
}

/// Opens `WARM_CONNECTIONS` connections to `e` (and through it to the
/// upstream), then waits until `e` answers quickly again.
async fn warm(client: &reqwest::Client, e: &Endpoint) {
    load::burst(client, e, WARM_CONNECTIONS).await;
    load::settle(client, e, SETTLE_LIMIT).await;
}

fn wanted(o: &Options, name: &str) -> bool {
    o.only.is_empty() || o.only.iter().any(|n| n == name)
}

/// The demo configuration in front of `upstream`: the load's key (the
/// enterprise tier) and every provider model get limits far above the
/// offered load, so the runs measure the work, not refusals. The free tier
/// keeps the demo's rpm=10 / tpm=20000 for the limits check.
fn gateway_config(upstream: &str, store: &str) -> tollgate_gateway::Config {
    let mut config = tollgate_gateway::demo::config("127.0.0.1:0", upstream);
    config.store.url = store.to_string();
    for (name, t) in config.tiers.iter_mut() {
        t.daily_budget_usd = None;
        t.monthly_budget_usd = None;
        if name != "free" {
            t.rpm = Some(100_000_000);
            t.tpm = Some(100_000_000_000);
            t.max_wait_ms = 0;
        }
    }
    for p in config.providers.values_mut() {
        for m in p.models.values_mut() {
            m.rpm = Some(100_000_000);
            m.tpm = Some(100_000_000_000);
        }
    }
    config
}

async fn check_limits(o: &Options, client: &reqwest::Client, gateways: &[Endpoint]) {
    println!(
        "\nlimits check: {CHECK_REQUESTS} requests at once with key {} (rpm=10, tpm=20000 on every gateway)",
        o.limited_key
    );
    for e in gateways {
        let limited = Endpoint {
            key: o.limited_key.as_str().into(),
            ..e.clone()
        };
        let t = load::burst(client, &limited, CHECK_REQUESTS).await;
        println!(
            "  {:<16} {:>3} ok  {:>3} × 429  {:>3} other errors  {:>3} timed out",
            e.name, t.ok, t.limited, t.failed, t.timed_out
        );
    }
}

/// Doubles the rate from `--search-from` while `e` holds it, then bisects
/// twice between the last rate held and the first one failed. Returns the
/// highest rate held and the lowest failed run.
async fn search(
    o: &Options,
    client: &reqwest::Client,
    e: &Endpoint,
    settings: Settings,
    max_p99: Duration,
) -> (Option<u64>, Option<Run>) {
    let mut held = None;
    let mut failed: Option<Run> = None;
    let try_rate = |rate: u64| async move {
        // At least 200 requests per step, so that a p99 is not just the
        // slowest of a handful.
        let secs = o.search_secs.max(SEARCH_MIN_REQUESTS / rate as f64);
        warm(client, e).await;
        let r = load::run(client, e, rate, secs, settings).await;
        load::settle(client, e, SETTLE_LIMIT).await;
        r
    };
    let mut rate = o.search_from;
    loop {
        let r = try_rate(rate).await;
        if !r.holds(max_p99) {
            failed = Some(r);
            break;
        }
        held = Some(rate);
        if rate >= o.search_to {
            break;
        }
        rate = (rate * 2).min(o.search_to);
    }
    for _ in 0..2 {
        let (Some(lo), Some(hi)) = (held, failed.map(|f| f.rate)) else {
            break;
        };
        let mid = (lo + hi) / 2;
        if mid <= lo {
            break;
        }
        let r = try_rate(mid).await;
        if r.holds(max_p99) {
            held = Some(mid);
        } else {
            failed = Some(r);
        }
    }
    (held, failed)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn header() -> String {
    format!(
        "{:>7}  {:<16} {:>9} {:>9}  {:>9} {:>9}  {:>7} {:>6} {:>6} {:>7} {:>6}  {:>9}",
        "rate/s",
        "endpoint",
        "p50 ms",
        "p99 ms",
        "added p50",
        "added p99",
        "ok",
        "429",
        "errors",
        "timeout",
        "shed",
        "done/s"
    )
}

fn row(name: &str, r: &Run, direct: &Run) -> String {
    let added = |x: Duration, d: Duration| {
        if name == "direct" {
            "-".to_string()
        } else {
            format!("{:.3}", ms(x) - ms(d))
        }
    };
    let mut s = format!(
        "{:>7}  {:<16} {:>9.3} {:>9.3}  {:>9} {:>9}  {:>7} {:>6} {:>6} {:>7} {:>6}  {:>9.0}",
        r.rate,
        name,
        ms(r.p50),
        ms(r.p99),
        added(r.p50, direct.p50),
        added(r.p99, direct.p99),
        r.tally.ok,
        r.tally.limited,
        r.tally.failed,
        r.tally.timed_out,
        r.tally.shed,
        r.achieved
    );
    if r.lag > Duration::from_millis(50) {
        s.push_str(&format!(
            "  (generator {:.0} ms behind schedule)",
            ms(r.lag)
        ));
    }
    s
}

fn record(
    tsv: &mut Option<std::fs::File>,
    phase: &str,
    name: &str,
    r: &Run,
    direct: &Run,
) -> Result<()> {
    let Some(f) = tsv else { return Ok(()) };
    writeln!(
        f,
        "{phase}\t{name}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{:.1}",
        r.rate,
        r.sent,
        r.tally.ok,
        r.tally.limited,
        r.tally.failed,
        r.tally.timed_out,
        r.tally.shed,
        ms(r.p50),
        ms(r.p99),
        ms(r.p50) - ms(direct.p50),
        ms(r.p99) - ms(direct.p99),
        r.achieved
    )?;
    Ok(())
}
