//! `tollgate bench`: the latency the gateway adds over calling the simulated
//! upstream directly, at fixed request rates (open loop: requests are sent on
//! schedule whether or not earlier ones have finished).
//!
//! Both paths run in this process on loopback: the simulated upstream (no
//! artificial latency), the gateway in front of it (memory store, or Redis
//! with `--store`), and the load generator. Overhead = gateway percentile −
//! direct percentile at the same rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tollgate_gateway::upstream_sim::{self, SimConfig};

struct Options {
    rates: Vec<u64>,
    secs: f64,
    store: String,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        rates: vec![1000, 5000],
        secs: 5.0,
        store: "memory://".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--rates" => {
                o.rates = v
                    .split(',')
                    .map(|r| {
                        r.trim()
                            .parse()
                            .context("--rates takes numbers such as 1000,5000")
                    })
                    .collect::<Result<_>>()?
            }
            "--secs" => o.secs = v.parse().context("--secs takes a number of seconds")?,
            "--store" => o.store = v.clone(),
            other => {
                bail!("unknown option {other:?} for bench (--rates 1000,5000 --secs 5 --store URL)")
            }
        }
    }
    if o.rates.iter().any(|&r| r == 0 || r > 1_000_000) || !(o.secs > 0.0 && o.secs <= 3600.0) {
        bail!("--rates must be between 1 and 1000000 requests/s and --secs in (0, 3600]");
    }
    Ok(o)
}

/// Runs the benchmark and prints a table.
pub async fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let sim = upstream_sim::start(
        SimConfig {
            latency: Duration::ZERO,
            chunk_interval: Duration::ZERO,
            completion_tokens: 16,
        },
        0,
    )
    .await?;
    let mut config = tollgate_gateway::demo::config("127.0.0.1:0", &sim.base_url());
    config.store.url = o.store.clone();
    for t in config.tiers.values_mut() {
        // Limits far above the offered load: measure the work, not refusals.
        t.rpm = Some(100_000_000);
        t.tpm = Some(100_000_000_000);
        t.max_wait_ms = 0;
        t.daily_budget_usd = None;
        t.monthly_budget_usd = None;
    }
    for p in config.providers.values_mut() {
        for m in p.models.values_mut() {
            m.rpm = Some(100_000_000);
            m.tpm = Some(100_000_000_000);
        }
    }
    let gw = tollgate_gateway::start(config).await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()?;
    let body = r#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}"#;
    let direct = format!("{}/chat/completions", sim.base_url());
    let through = format!("{}/v1/chat/completions", gw.url());
    println!(
        "store: {}   duration per run: {} s   request: non-streamed chat, 16 output tokens",
        o.store, o.secs
    );
    println!(
        "{:>7}  {:>10} {:>10}  {:>10} {:>10}  {:>10} {:>10}  {:>7}",
        "rate/s", "direct p50", "p99", "gateway p50", "p99", "added p50", "p99", "errors"
    );
    for &rate in &o.rates {
        // Warm up the connection pools of both paths.
        load(&client, &direct, body, rate, 0.5).await;
        load(&client, &through, body, rate, 0.5).await;
        let d = load(&client, &direct, body, rate, o.secs).await;
        let g = load(&client, &through, body, rate, o.secs).await;
        let ms = |x: Duration| x.as_secs_f64() * 1000.0;
        println!(
            "{rate:>7}  {:>8.3}ms {:>8.3}ms  {:>9.3}ms {:>8.3}ms  {:>8.3}ms {:>8.3}ms  {:>7}",
            ms(d.p50),
            ms(d.p99),
            ms(g.p50),
            ms(g.p99),
            ms(g.p50) - ms(d.p50),
            ms(g.p99) - ms(d.p99),
            d.errors + g.errors
        );
        if g.achieved < rate as f64 * 0.95 {
            println!(
                "         (gateway completed only {:.0} req/s: saturated)",
                g.achieved
            );
        }
    }
    Ok(())
}

struct Run {
    p50: Duration,
    p99: Duration,
    errors: u64,
    achieved: f64,
}

async fn load(
    client: &reqwest::Client,
    url: &str,
    body: &'static str,
    rate: u64,
    secs: f64,
) -> Run {
    let total = (rate as f64 * secs) as usize;
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let url: Arc<str> = Arc::from(url);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + every * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = match client
                .post(&*url)
                .header("authorization", "Bearer tg-demo-enterprise")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (t.elapsed(), ok)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        if let Ok((d, ok)) = t.await {
            if ok {
                lat.push(d);
            } else {
                errors += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
        achieved: lat.len() as f64 / elapsed,
    }
}
