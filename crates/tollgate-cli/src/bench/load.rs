//! The open-loop load generator: requests leave on schedule whether or not
//! earlier ones have finished, so a slow target shows up as latency, timeouts
//! and shed requests instead of quietly lowering the offered rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// The request every run sends: a non-streamed chat of 16 output tokens
/// for `model` (`gpt-4o-mini` unless `--model` says otherwise; `auto` is
/// routed by the demo's routes).
pub fn body(model: &str) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}).to_string()
}

/// One endpoint under load: a chat completions URL and the key to send.
#[derive(Clone)]
pub struct Endpoint {
    /// Shown in the table (`direct`, `tollgate-memory`, `litellm`, ...).
    pub name: String,
    /// The full `.../chat/completions` URL.
    pub url: Arc<str>,
    /// Bearer key.
    pub key: Arc<str>,
    /// The JSON body of every request ([`body`]).
    pub body: Arc<str>,
}

/// How each run behaves (the per-request timeout is the client's).
#[derive(Clone, Copy)]
pub struct Settings {
    /// At most this many requests in flight; a request due while the cap is
    /// reached is not sent and counted as shed. Keeps a saturated target
    /// from exhausting the file descriptors of this process.
    pub max_in_flight: usize,
}

/// What happened to the requests of one run.
#[derive(Default, Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// 2xx with the whole body read.
    pub ok: u64,
    /// 429 answers.
    pub limited: u64,
    /// Other statuses and connection errors.
    pub failed: u64,
    /// No answer within the timeout.
    pub timed_out: u64,
    /// Not sent: the in-flight cap was reached.
    pub shed: u64,
}

impl Tally {
    /// Every request that did not succeed.
    pub fn not_ok(&self) -> u64 {
        self.limited + self.failed + self.timed_out + self.shed
    }
}

/// One run at one rate against one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Offered rate, requests/s.
    pub rate: u64,
    /// Requests due in the run.
    pub sent: u64,
    /// Outcomes.
    pub tally: Tally,
    /// Median latency of the successful requests.
    pub p50: Duration,
    /// 99th percentile latency of the successful requests.
    pub p99: Duration,
    /// Successful requests per second over the run (until the last answer).
    pub achieved: f64,
    /// How late the generator sent its last request: large values mean the
    /// generator, not the target, was the limit.
    pub lag: Duration,
    /// CPU time the generator's process (the load and, unless `--upstream`,
    /// the simulated upstream) used over the run, where it was measured.
    pub generator_cpu: Option<Duration>,
}

impl Run {
    /// Whether the target held the rate: at most 0.1% of requests not ok and
    /// the p99 within `max_p99`.
    pub fn holds(&self, max_p99: Duration) -> bool {
        self.tally.not_ok() * 1000 <= self.sent && self.p99 <= max_p99
    }
}

enum Outcome {
    Ok(Duration),
    Limited,
    Failed,
    TimedOut,
}

async fn one(client: &reqwest::Client, e: &Endpoint) -> Outcome {
    let t = Instant::now();
    let sent = client
        .post(&*e.url)
        .header("authorization", format!("Bearer {}", e.key))
        .header("content-type", "application/json")
        .body(e.body.to_string())
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(err) if err.is_timeout() => return Outcome::TimedOut,
        Err(_) => return Outcome::Failed,
    };
    let status = response.status();
    match response.bytes().await {
        Err(err) if err.is_timeout() => Outcome::TimedOut,
        Err(_) => Outcome::Failed,
        Ok(_) if status.is_success() => Outcome::Ok(t.elapsed()),
        Ok(_) if status.as_u16() == 429 => Outcome::Limited,
        Ok(_) => Outcome::Failed,
    }
}

/// Sends `rate` requests/s for `secs` seconds to `e` and waits for every
/// answer (each bounded by the timeout).
pub async fn run(client: &reqwest::Client, e: &Endpoint, rate: u64, secs: f64, s: Settings) -> Run {
    let total = (rate as f64 * secs).round() as u64;
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let slots = Arc::new(Semaphore::new(s.max_in_flight));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut tally = Tally::default();
    let mut lag = Duration::ZERO;
    for i in 0..total {
        let due = start + every.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        lag = Instant::now().saturating_duration_since(due);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tally.shed += 1;
            continue;
        };
        let (client, e) = (client.clone(), e.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = one(&client, &e).await;
            drop(slot);
            outcome
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(Outcome::Ok(d)) => lat.push(d),
            Ok(Outcome::Limited) => tally.limited += 1,
            Ok(Outcome::TimedOut) => tally.timed_out += 1,
            Ok(Outcome::Failed) | Err(_) => tally.failed += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    tally.ok = lat.len() as u64;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        rate,
        sent: total,
        tally,
        p50: pct(0.50),
        p99: pct(0.99),
        achieved: lat.len() as f64 / elapsed,
        lag,
        generator_cpu: None,
    }
}

/// Sends `n` requests at once with `e`'s key and counts the outcomes: shows
/// whether a per-key limit is enforced.
pub async fn burst(client: &reqwest::Client, e: &Endpoint, n: usize) -> Tally {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, e) = (client.clone(), e.clone());
            tokio::spawn(async move { one(&client, &e).await })
        })
        .collect();
    let mut tally = Tally::default();
    for t in tasks {
        match t.await {
            Ok(Outcome::Ok(_)) => tally.ok += 1,
            Ok(Outcome::Limited) => tally.limited += 1,
            Ok(Outcome::TimedOut) => tally.timed_out += 1,
            Ok(Outcome::Failed) | Err(_) => tally.failed += 1,
        }
    }
    tally
}

/// Waits until `e` answers one request within 200 ms again (a saturated
/// target may still be working through a backlog), for at most `limit`.
pub async fn settle(client: &reqwest::Client, e: &Endpoint, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        let t = Instant::now();
        let quick = matches!(
            tokio::time::timeout(Duration::from_secs(2), one(client, e)).await,
            Ok(Outcome::Ok(_) | Outcome::Limited)
        ) && t.elapsed() < Duration::from_millis(200);
        if quick {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
