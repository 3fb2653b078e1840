//! The script cost run: what one call of `reserve.lua` and of `settle.lua`
//! costs Redis itself, read from `INFO commandstats` (`usec_per_call` of
//! `EVALSHA`), on a fresh redis-server and through the library's own store.
//!
//! Two workloads, each bounded by a count:
//!
//! - **grant**: a reservation granted at once, then settled below its
//!   estimate (a refund): the gateway's usual pair.
//! - **queued**: reservations that wait in two priority classes, then
//!   cancelled, the latest first.
//!
//! Reserves and settles run in alternating batches; the `EVALSHA` counters
//! are read around each batch, so each script gets its own figure although
//! Redis counts them under one command.

use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tollgate::store::{Backend, RedisOptions, RedisStore, ReserveCall, Reserved};
use tollgate::{Cost, Limits};

use crate::procs::{RedisServer, RedisSpec};
use crate::table::Table;

/// Reservations per batch between two readings of the counters.
const BATCH: usize = 200;

/// Settings of the script cost run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptCostOptions {
    /// Reserve + settle pairs per workload.
    pub pairs: usize,
}

impl Default for ScriptCostOptions {
    fn default() -> Self {
        ScriptCostOptions { pairs: 20_000 }
    }
}

/// Redis's own time per call of each script in one workload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScriptCost {
    /// `grant` or `queued`.
    pub workload: String,
    /// Calls of `reserve.lua`.
    pub reserves: u64,
    /// Microseconds of Redis time per `reserve.lua` call.
    pub reserve_usec: f64,
    /// Calls of `settle.lua`.
    pub settles: u64,
    /// Microseconds of Redis time per `settle.lua` call.
    pub settle_usec: f64,
    /// Wall time of the workload, seconds.
    pub secs: f64,
}

impl ScriptCost {
    /// The cost of one reserve + settle pair, µs.
    pub fn pair_usec(&self) -> f64 {
        self.reserve_usec + self.settle_usec
    }
}

/// The rows as a Markdown table.
pub fn table(rows: &[ScriptCost]) -> String {
    let mut t = Table::new(&[
        "workload",
        "reserves",
        "reserve µs/call",
        "settles",
        "settle µs/call",
        "pair µs",
    ]);
    for r in rows {
        t.row(&[
            r.workload.clone(),
            r.reserves.to_string(),
            format!("{:.2}", r.reserve_usec),
            r.settles.to_string(),
            format!("{:.2}", r.settle_usec),
            format!("{:.2}", r.pair_usec()),
        ]);
    }
    t.render()
}

/// Runs both workloads on a fresh redis-server.
pub fn run(opts: &ScriptCostOptions) -> anyhow::Result<Vec<ScriptCost>> {
    if opts.pairs == 0 || opts.pairs > 1_000_000 {
        bail!("--pairs must be 1..=1000000");
    }
    let redis = RedisServer::start(RedisSpec::default())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = RedisStore::connect(&redis.url(), RedisOptions::default())
            .await
            .context("connecting to the fresh redis-server")?;
        let mut rows = vec![
            grant(&store, opts.pairs).await?,
            queued(&store, opts.pairs).await?,
        ];
        for classes in [4, 16] {
            for case in [Lanes::Own, Lanes::Borrow, Lanes::AllFull] {
                rows.push(shared(&store, &redis.url(), classes, case, opts.pairs).await?);
            }
        }
        Ok(rows)
    })
}

/// Where a reservation of a shared bucket (`Builder::class_shares`) lands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lanes {
    /// Its class's own lane has room: one script call.
    Own,
    /// Its own lane is full, another lends: two calls (a refusal, a grant).
    Borrow,
    /// Every lane is full: refused.
    AllFull,
}

/// `try_acquire` on a limiter whose `classes` classes share its bucket,
/// then a settlement below the estimate; "reserve" is everything one
/// acquire costs Redis (every script call it makes), per acquire.
async fn shared(
    store: &RedisStore,
    url: &str,
    classes: usize,
    case: Lanes,
    pairs: usize,
) -> anyhow::Result<ScriptCost> {
    let key = format!("cost/shared-{classes}-{case:?}");
    let class = tollgate::PriorityClass {
        headroom: 1.0,
        max_wait: None,
    };
    // A window so long that a filled lane stays full for the run.
    let tpm = 1_000_000_000u64;
    let limiter = tollgate::RateLimiter::builder(&key)
        .url(url)
        .limits(Limits::new().rpm(1_000_000_000).tpm(tpm).window_secs(1e7))
        .priority_classes(vec![class; classes])
        .class_shares(vec![
            tollgate::ClassShare::new(0.5 / classes as f64, 1.0);
            classes
        ])
        .build()
        .await?;
    // Lanes filled for the whole run by calls never settled.
    let lane = tpm as f64 / classes as f64;
    let fill = match case {
        Lanes::Own => 0..0,
        Lanes::Borrow => 0..1,
        Lanes::AllFull => 0..classes,
    };
    for k in fill {
        let opts = tollgate::AcquireOptions::class(k as u8).max_wait(std::time::Duration::ZERO);
        let permit = limiter
            .acquire_with(Cost::tokens(lane as u64), opts)
            .await?;
        std::mem::forget(permit);
    }
    // The new limiter's first calls (its limits fingerprint) may find their
    // script not loaded yet: a NOSCRIPT counts as a failed call.
    let mut conn = store.connection().clone();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut conn)
        .await?;
    let started = Instant::now();
    let (mut reserve, mut settle) = (Tally::default(), Tally::default());
    let (mut acquires, mut settles) = (0, 0);
    let mut done = 0;
    while done < pairs {
        let n = BATCH.min(pairs - done);
        let at = evalsha(store).await?;
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            match limiter.try_acquire(Cost::tokens(1_000)).await {
                Ok(p) => held.push(p),
                Err(e) if case == Lanes::AllFull && e.retry_after().is_some() => {}
                Err(e) => bail!("{case:?}: {e}"),
            }
        }
        let mid = evalsha(store).await?;
        reserve.usec += mid.1 - at.1;
        acquires += n as u64;
        for p in held {
            limiter.settle(p, Cost::tokens(400)).await?;
        }
        let end = evalsha(store).await?;
        settle.add(mid, end);
        settles += end.0 - mid.0;
        done += n;
    }
    reserve.calls = acquires;
    let _ = settles;
    Ok(ScriptCost {
        workload: format!(
            "shared, {classes} classes: {}",
            match case {
                Lanes::Own => "own lane",
                Lanes::Borrow => "borrows",
                Lanes::AllFull => "all lanes full",
            }
        ),
        reserves: reserve.calls,
        reserve_usec: reserve.per_call(),
        settles: settle.calls,
        settle_usec: settle.per_call(),
        secs: started.elapsed().as_secs_f64(),
    })
}

/// `EVALSHA` calls and microseconds so far.
async fn evalsha(store: &RedisStore) -> anyhow::Result<(u64, u64)> {
    let mut conn = store.connection().clone();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let Some(line) = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
    else {
        return Ok((0, 0));
    };
    let field = |name: &str| -> anyhow::Result<u64> {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name} in {line}"))?
            .parse::<u64>()
            .with_context(|| format!("bad {name} in {line}"))
    };
    if field("failed_calls")? > 0 {
        bail!("a script call failed: {line}");
    }
    Ok((field("calls")?, field("usec")?))
}

/// Counters of one script over the batches.
#[derive(Default)]
struct Tally {
    calls: u64,
    usec: u64,
}

impl Tally {
    fn add(&mut self, before: (u64, u64), after: (u64, u64)) {
        self.calls += after.0 - before.0;
        self.usec += after.1 - before.1;
    }

    fn per_call(&self) -> f64 {
        self.usec as f64 / self.calls.max(1) as f64
    }
}

/// Reserves granted at once, each settled with fewer tokens than estimated.
async fn grant(store: &RedisStore, pairs: usize) -> anyhow::Result<ScriptCost> {
    let policy = Limits::new()
        .rpm(1_000_000_000)
        .tpm(1_000_000_000_000)
        .validate()?;
    let started = Instant::now();
    let (mut reserve, mut settle) = (Tally::default(), Tally::default());
    let mut done = 0;
    while done < pairs {
        let n = BATCH.min(pairs - done);
        let call = ReserveCall {
            key: "cost/grant",
            policy: &policy,
            class: 0,
            headroom: 1.0,
            cost: policy.units(Cost::split(1_000, 500)),
            max_wait: None,
            max_queue: None,
            lease: None,
        };
        let at = evalsha(store).await?;
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            held.push(granted(store.reserve(&call).await?)?);
        }
        let mid = evalsha(store).await?;
        reserve.add(at, mid);
        let mut actual = policy.units(Cost::split(1_000, 100));
        actual[0] = call.cost[0];
        for r in &held {
            store.settle(&call.settlement(r, actual)).await?;
        }
        settle.add(mid, evalsha(store).await?);
        done += n;
    }
    Ok(ScriptCost {
        workload: "grant".into(),
        reserves: reserve.calls,
        reserve_usec: reserve.per_call(),
        settles: settle.calls,
        settle_usec: settle.per_call(),
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Reservations that queue (two classes), cancelled the latest first.
async fn queued(store: &RedisStore, pairs: usize) -> anyhow::Result<ScriptCost> {
    let policy = Limits::new()
        .requests(50)
        .tokens(50_000)
        .window_secs(1.0)
        .validate()?;
    let headrooms = [1.0, 0.5];
    let started = Instant::now();
    let (mut reserve, mut settle) = (Tally::default(), Tally::default());
    let mut done = 0;
    let mut waited = 0;
    while done < pairs {
        let n = BATCH.min(pairs - done);
        let at = evalsha(store).await?;
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let class = (i % 2) as u8;
            let call = ReserveCall {
                key: "cost/queued",
                policy: &policy,
                class,
                headroom: headrooms[class as usize],
                cost: policy.units(Cost::split(300, 200)),
                max_wait: None,
                max_queue: None,
                lease: None,
            };
            let r = granted(store.reserve(&call).await?)?;
            if r.slot > r.now {
                waited += 1;
            }
            held.push((call, r));
        }
        let mid = evalsha(store).await?;
        reserve.add(at, mid);
        // The latest first, as callers that give up at the back of a queue:
        // each cancellation returns its whole cost, so the bucket is where it
        // was before the batch and every batch queues alike.
        for (call, r) in held.iter().rev() {
            store.settle(&call.settlement(r, [0.0; 4])).await?;
        }
        settle.add(mid, evalsha(store).await?);
        done += n;
    }
    if waited < pairs / 2 {
        bail!("only {waited} of {pairs} reservations queued: the workload measures the wrong path");
    }
    Ok(ScriptCost {
        workload: "queued".into(),
        reserves: reserve.calls,
        reserve_usec: reserve.per_call(),
        settles: settle.calls,
        settle_usec: settle.per_call(),
        secs: started.elapsed().as_secs_f64(),
    })
}

fn granted<E: std::fmt::Display>(r: Result<Reserved, E>) -> anyhow::Result<Reserved> {
    r.map_err(|e| anyhow::anyhow!("the script cost run was refused: {e}"))
}
