//! `tollgate bench`: the latency the gateway adds over calling the simulated
//! upstream directly, at fixed request rates (open loop: requests are sent on
//! schedule whether or not earlier ones have finished), side by side with any
//! other OpenAI-compatible proxy in front of the same upstream (`--target`,
//! e.g. LiteLLM's proxy in `scripts/bench/gateway-vs-litellm.sh`).
//!
//! Everything is on loopback. The load generator and the simulated upstream
//! (no artificial latency, unless `--upstream` names one) run in a process of
//! their own (see `generator`); tollgate runs in this process with the memory
//! store and, with `--store`, with that store too, so this process's CPU time
//! per request is the gateway's; the generator reports its own (the load and
//! the simulated upstream) beside it, so a reader sees what the bench itself
//! took from the cores it shares with the gateway. Overhead = endpoint percentile − direct
//! percentile at the same rate, the runs of one rate following each other.
//! With a Redis `--store`, each run through it also reports Redis's script
//! calls (`INFO commandstats`) and CPU time (`INFO cpu`) per request.

pub mod generator;
mod load;
mod options;

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};

use generator::Generator;
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
    let settings = Settings {
        max_in_flight: o.max_in_flight,
    };
    let mut gen = Generator::start(o.upstream.is_none(), settings, o.timeout).await?;
    let upstream = match (&o.upstream, &gen.upstream) {
        (Some(url), _) | (None, Some(url)) => url.clone(),
        (None, None) => anyhow::bail!("the load generator started no upstream"),
    };
    // Redis's own figures, for the runs through a Redis store.
    let mut redis = match o.store.as_deref().filter(|s| s.starts_with("redis")) {
        Some(url) => Some(
            redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("cannot connect to {url} for INFO commandstats"))?,
        ),
        None => None,
    };
    let mut gateways = Vec::new();
    let mut bases = vec![("direct".to_string(), upstream.clone())];
    let stores = std::iter::once("memory://".to_string()).chain(o.store.clone());
    // Each gateway's usage ledger: a SQLite file here (as by default beside
    // a configuration file), or off for the `-noledger` variants.
    let ledgers = LedgerDir::new()?;
    for store in stores {
        let base = format!("tollgate-{}", store.split(':').next().unwrap_or("store"));
        let mut variants = vec![(base.clone(), ledgers.file(&base))];
        if o.ledger_off {
            variants.push((format!("{base}-noledger"), "off".to_string()));
        }
        for (name, ledger) in variants {
            if !wanted(&o, &name) {
                continue;
            }
            let mut config = gateway_config(&upstream, &store);
            config.ledger.url = ledger;
            let gw = tollgate_gateway::start(config)
                .await
                .with_context(|| format!("cannot start tollgate with store {store}"))?;
            bases.push((name, format!("{}/v1", gw.url())));
            gateways.push(gw);
        }
    }
    bases.extend(o.targets.iter().filter(|(n, _)| wanted(&o, n)).cloned());
    let endpoints: Vec<Endpoint> = bases
        .iter()
        .map(|(name, base)| Endpoint {
            name: name.clone(),
            url: format!("{base}/chat/completions").into(),
            key: o.key.as_str().into(),
            body: load::body(&o.model).into(),
        })
        .collect();

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
    println!(
        "load generator: process {} with the simulated upstream, {}",
        gen.pid().unwrap_or(0),
        match gen.cpu {
            Some(cpu) => format!("alone on core {cpu} (the gateways on the others)"),
            None => "not pinned (no core to spare: fewer than three allowed)".to_string(),
        }
    );
    if o.check_limits {
        check_limits(&o, &mut gen, &endpoints[1..]).await?;
    }
    println!("\n{}", header());
    for &rate in &o.rates {
        let mut direct: Option<Run> = None;
        for e in &endpoints {
            // Warm the connection pools at a rate every endpoint can take,
            // then open WARM_CONNECTIONS of them.
            gen.run(e, rate.min(500), 0.5).await?;
            warm(&mut gen, e).await?;
            let through_redis = e.name == "tollgate-redis";
            let cpu = generator::cpu_time();
            let stats = match (&mut redis, through_redis) {
                (Some(conn), true) => Some(commandstats(conn).await?),
                _ => None,
            };
            let r = gen.run(e, rate, o.secs).await?;
            let cost = Cost {
                cpu: match (e.name.starts_with("tollgate"), cpu, generator::cpu_time()) {
                    (true, Some(a), Some(b)) => Some(b.saturating_sub(a)),
                    _ => None,
                },
                redis: match (&mut redis, stats) {
                    (Some(conn), Some(before)) => {
                        let after = commandstats(conn).await?;
                        Some((after.0 - before.0, after.1 - before.1))
                    }
                    _ => None,
                },
            };
            let d = *direct.get_or_insert(r);
            println!("{}", row(&e.name, &r, &d, &cost));
            record(&mut tsv, "rate", &e.name, &r, &d)?;
            gen.settle(e, SETTLE_LIMIT).await?;
        }
    }
    if let Some(max_p99) = o.search_p99 {
        println!(
            "\nhighest rate held (≤ 0.1% not ok, p99 ≤ {:.1} ms; {} s per step):",
            max_p99.as_secs_f64() * 1000.0,
            o.search_secs
        );
        for e in &endpoints {
            let (held, last) = search(&o, &mut gen, e, max_p99).await?;
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
async fn warm(gen: &mut Generator, e: &Endpoint) -> Result<()> {
    gen.burst(e, WARM_CONNECTIONS).await?;
    gen.settle(e, SETTLE_LIMIT).await
}

/// Redis's script calls and CPU microseconds so far.
async fn commandstats(conn: &mut redis::aio::MultiplexedConnection) -> Result<(u64, u64)> {
    let mut info = String::new();
    for section in ["commandstats", "cpu"] {
        let text: String = redis::cmd("INFO")
            .arg(section)
            .query_async(conn)
            .await
            .with_context(|| format!("INFO {section}"))?;
        info.push_str(&text);
    }
    Ok(generator::redis_totals(&info))
}

/// What one run cost: the gateway process's CPU time, and Redis's script calls
/// and CPU microseconds (for runs through the Redis store).
struct Cost {
    cpu: Option<Duration>,
    redis: Option<(u64, u64)>,
}

/// A temporary folder for the benchmarked gateways' ledgers, removed when
/// dropped.
struct LedgerDir(std::path::PathBuf);

impl LedgerDir {
    fn new() -> Result<LedgerDir> {
        let dir = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(LedgerDir(dir))
    }

    fn file(&self, name: &str) -> String {
        self.0.join(format!("{name}.sqlite")).display().to_string()
    }
}

impl Drop for LedgerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

async fn check_limits(o: &Options, gen: &mut Generator, gateways: &[Endpoint]) -> Result<()> {
    println!(
        "\nlimits check: {CHECK_REQUESTS} requests at once with key {} (rpm=10, tpm=20000 on every gateway)",
        o.limited_key
    );
    for e in gateways {
        let limited = Endpoint {
            key: o.limited_key.as_str().into(),
            ..e.clone()
        };
        let t = gen.burst(&limited, CHECK_REQUESTS).await?;
        println!(
            "  {:<16} {:>3} ok  {:>3} × 429  {:>3} other errors  {:>3} timed out",
            e.name, t.ok, t.limited, t.failed, t.timed_out
        );
    }
    Ok(())
}

/// Doubles the rate from `--search-from` while `e` holds it, then bisects
/// twice between the last rate held and the first one failed. Returns the
/// highest rate held and the lowest failed run.
async fn search(
    o: &Options,
    gen: &mut Generator,
    e: &Endpoint,
    max_p99: Duration,
) -> Result<(Option<u64>, Option<Run>)> {
    let mut held = None;
    let mut failed: Option<Run> = None;
    async fn try_rate(o: &Options, gen: &mut Generator, e: &Endpoint, rate: u64) -> Result<Run> {
        // At least 200 requests per step, so that a p99 is not just the
        // slowest of a handful.
        let secs = o.search_secs.max(SEARCH_MIN_REQUESTS / rate as f64);
        warm(gen, e).await?;
        let r = gen.run(e, rate, secs).await?;
        gen.settle(e, SETTLE_LIMIT).await?;
        Ok(r)
    }
    let mut rate = o.search_from;
    loop {
        let r = try_rate(o, gen, e, rate).await?;
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
        let r = try_rate(o, gen, e, mid).await?;
        if r.holds(max_p99) {
            held = Some(mid);
        } else {
            failed = Some(r);
        }
    }
    Ok((held, failed))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn header() -> String {
    format!(
        "{:>7}  {:<16} {:>9} {:>9}  {:>9} {:>9}  {:>7} {:>6} {:>6} {:>7} {:>6}  {:>9}  {:>11} {:>10} {:>11} {:>12}",
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
        "done/s",
        "load cpu µs",
        "gw cpu µs",
        "redis calls",
        "redis cpu µs"
    )
}

/// One run's line; the cost columns per successful request (`-` where not
/// measured).
fn row(name: &str, r: &Run, direct: &Run, cost: &Cost) -> String {
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
    let per = |total: f64| total / r.tally.ok.max(1) as f64;
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    s.push_str(&format!(
        "  {:>11} {:>10} {:>11} {:>12}",
        or_dash(
            r.generator_cpu
                .map(|c| format!("{:.1}", per(c.as_secs_f64() * 1e6)))
        ),
        or_dash(
            cost.cpu
                .map(|c| format!("{:.1}", per(c.as_secs_f64() * 1e6)))
        ),
        or_dash(
            cost.redis
                .map(|(calls, _)| format!("{:.2}", per(calls as f64)))
        ),
        or_dash(
            cost.redis
                .map(|(_, usec)| format!("{:.1}", per(usec as f64)))
        ),
    ));
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
