//! Where each settled request is recorded. Today: a structured log line
//! (target `tollgate::usage`, no prompt text, no keys). A durable per-request
//! ledger (next on the roadmap) implements [`Ledger`] too.

use std::time::Duration;

/// One settled request (borrowed: a sink that keeps it copies what it needs).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord<'a> {
    /// The request's id (UUIDv7), as answered in `x-request-id`; nil for a
    /// request settled without one.
    pub request_id: uuid::Uuid,
    /// Client id.
    pub client: &'a str,
    /// Tier at the time of the request.
    pub tier: &'a str,
    /// Model name.
    pub model: &'a str,
    /// Input tokens used.
    pub input_tokens: u64,
    /// Output tokens used.
    pub output_tokens: u64,
    /// Cost in USD.
    pub cost_usd: f64,
    /// Time spent waiting in the queue.
    pub waited: Duration,
}

/// A sink for usage records.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Records one request (must not block).
    fn record(&self, r: &UsageRecord<'_>);
}

/// Writes records as `tracing` events at debug level.
#[derive(Debug, Default)]
pub struct LogLedger;

impl Ledger for LogLedger {
    fn record(&self, r: &UsageRecord<'_>) {
        tracing::debug!(
            target: "tollgate::usage",
            request_id = %r.request_id,
            client = %r.client,
            tier = %r.tier,
            model = %r.model,
            input_tokens = r.input_tokens,
            output_tokens = r.output_tokens,
            cost_usd = r.cost_usd,
            waited_ms = r.waited.as_millis() as u64,
            "settled"
        );
    }
}
