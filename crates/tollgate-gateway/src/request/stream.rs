//! Streaming pass-through: server-sent events are forwarded as each one is
//! complete, read on the way by an [`EventScanner`].
//!
//! The relay owns the request's [`Admission`] and [`Tally`] and ends the
//! stream itself when the upstream does not: a stream that stops before its
//! end (no `[DONE]` and no `finish_reason`), breaks off, or stays silent past
//! the first-byte or between-chunks timeout ends with an error event in
//! OpenAI's shape. However it ends — the client leaving included (the body is
//! dropped) — what was used is settled once and the outcome counted once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::json;
use tokio::time::{Instant, Sleep};

use super::events::EventScanner;
use super::settle::Admission;
use super::tally::{Stage, Tally};
use super::usage::Charge;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::outcome::Outcome;

/// An upstream's body, as it comes.
pub(crate) type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The upstream finished (`[DONE]`, or a `finish_reason` and then EOF).
    Complete,
    /// The upstream's own error event was forwarded.
    UpstreamError,
    /// Ended or broke off before the answer was complete.
    Broken,
    /// No byte within the first-byte or between-chunks timeout, or past
    /// the total.
    Timeout,
    /// The client went away.
    ClientGone,
}

impl End {
    fn outcome(self) -> Outcome {
        match self {
            End::Complete => Outcome::Ok,
            End::UpstreamError => Outcome::UpstreamError,
            End::Broken => Outcome::StreamBroken,
            End::Timeout => Outcome::UpstreamTimeout,
            End::ClientGone => Outcome::ClientGone,
        }
    }

    /// The error event the client gets, if any.
    fn event(self, provider: &str, timeouts: &Timeouts) -> Option<Bytes> {
        let message = match self {
            End::Complete | End::UpstreamError | End::ClientGone => return None,
            End::Broken => format!(
                "The upstream provider {provider:?} ended the stream before the answer was complete; retry."
            ),
            End::Timeout => format!(
                "The upstream provider {provider:?} sent nothing for too long (first byte within {:?}, then a chunk at least every {:?}, all within {:?}); retry.",
                timeouts.first_byte, timeouts.idle, timeouts.total
            ),
        };
        let body = json!({"error": {
            "message": message,
            "type": "server_error",
            "param": null,
            "code": self.outcome().as_str(),
        }});
        Some(Bytes::from(format!("data: {body}\n\n")))
    }
}

/// The timeouts of a streamed answer.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the request going out to the first byte of the body.
    pub first_byte: Duration,
    /// Longest silence between two chunks.
    pub idle: Duration,
    /// The whole request.
    pub total: Duration,
}

/// What the relay needs to know of its request.
pub(crate) struct Relayed {
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// The model it went to.
    pub(crate) model: Arc<Model>,
    /// Its reservations.
    pub(crate) admission: Admission,
    /// Its entry in the request counter.
    pub(crate) tally: Tally,
    /// The most output it may be charged.
    pub(crate) cap: u64,
    /// Drop the usage chunk (the client did not ask for it).
    pub(crate) strip_usage: bool,
    /// When the request went upstream.
    pub(crate) sent: Instant,
    /// Its timeouts.
    pub(crate) timeouts: Timeouts,
}

/// The relay's body stream.
pub(crate) struct SseRelay {
    upstream: UpstreamBody,
    scanner: EventScanner,
    req: Option<Relayed>,
    deadline: Pin<Box<Sleep>>,
    total_end: Instant,
    idle: Duration,
    timeouts: Timeouts,
    provider: String,
}

impl SseRelay {
    /// Relays `upstream` for the request `req`.
    pub fn new(upstream: UpstreamBody, mut req: Relayed) -> Self {
        req.tally.stage(Stage::Streaming);
        let t = req.timeouts;
        let total_end = req.sent + t.total;
        let first = (req.sent + t.first_byte).min(total_end);
        SseRelay {
            upstream,
            scanner: EventScanner::new(req.model.tokenizer, req.strip_usage),
            provider: req.model.provider.clone(),
            deadline: Box::pin(tokio::time::sleep_until(first)),
            total_end,
            idle: t.idle,
            timeouts: t,
            req: Some(req),
        }
    }

    /// How a stream that stopped (`cut`: broken off, or timed out) ended:
    /// with the upstream's own error, complete (its last event or a
    /// `finish_reason` came: only `[DONE]` or the usage chunk is missing),
    /// or as `cut`.
    fn verdict(&self, cut: End) -> End {
        let s = &self.scanner;
        if s.errored {
            End::UpstreamError
        } else if s.done || s.finished {
            End::Complete
        } else {
            cut
        }
    }

    /// Ends the stream: settles, counts, logs; returns what to send last.
    fn end(&mut self, how: End) -> Option<Bytes> {
        let mut req = self.req.take()?;
        // Close the upstream connection now, not when the body is dropped.
        self.upstream = Box::pin(futures_util::stream::empty());
        let s = &self.scanner;
        // Counting is done only when it is needed: no usage came.
        let counted = if s.usage.is_some() { 0 } else { s.counted() };
        let charge = Charge::of(s.usage, counted, req.admission.estimate.input, req.cap);
        let model = &req.model;
        let client = req.tally.client_id().to_string();
        note_charge(&req.metrics, model, &client, &charge);
        if s.malformed > 0 {
            req.metrics.add(
                "tollgate_stream_malformed_lines_total",
                &[("model", &model.name)],
                s.malformed as f64,
            );
            tracing::warn!(model = %model.name, client = %client, lines = s.malformed, "upstream stream had data: lines that are not JSON; dropped");
        }
        req.admission.ended(how.outcome(), None);
        req.admission.settle_soon(charge.usage());
        req.tally.record(how.outcome());
        let tail = how.event(&self.provider, &self.timeouts);
        if how == End::Complete && !self.scanner.done {
            // It finished but did not say so: end it as OpenAI does.
            return Some(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        tail
    }
}

/// Counts a charge that was not the upstream's plain report: usage missing
/// (counted instead) or output beyond what the request allowed (capped).
pub(crate) fn note_charge(metrics: &Metrics, model: &Model, client: &str, c: &Charge) {
    if c.counted {
        metrics.inc("tollgate_usage_missing_total", &[("model", &model.name)]);
        tracing::info!(model = %model.name, client = %client, output = c.output, "upstream answer without usage; charged the tokens it carried");
    }
    if let Some(reported) = c.over_cap {
        metrics.inc("tollgate_usage_over_limit_total", &[("model", &model.name)]);
        tracing::warn!(model = %model.name, client = %client, reported, charged = c.output, "upstream output beyond max_tokens x n; charged at most that");
    }
}

impl Stream for SseRelay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.req.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    let next = (Instant::now() + this.idle).min(this.total_end);
                    this.deadline.as_mut().reset(next);
                    let out = this.scanner.push(&bytes);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out.freeze())));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let cut = if e.is_timeout() {
                        End::Timeout
                    } else {
                        End::Broken
                    };
                    let how = this.verdict(cut);
                    let outcome = how.outcome().as_str();
                    tracing::warn!(provider = %this.provider, outcome, error = %e, "upstream stream stopped before its end");
                    return Poll::Ready(this.end(how).map(Ok));
                }
                Poll::Ready(None) => {
                    let mut out = this.scanner.finish();
                    let how = this.verdict(End::Broken);
                    if let Some(tail) = this.end(how) {
                        out.extend_from_slice(&tail);
                    }
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(out.freeze())));
                }
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        let how = this.verdict(End::Timeout);
                        return Poll::Ready(this.end(how).map(Ok));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        self.end(End::ClientGone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn error_events_are_named_in_openai_shape() {
        let t = Timeouts {
            first_byte: Duration::from_secs(1),
            idle: Duration::from_secs(2),
            total: Duration::from_secs(3),
        };
        for how in [End::Broken, End::Timeout] {
            let e = how.event("p", &t).unwrap();
            let text = std::str::from_utf8(&e).unwrap();
            let v: Value = serde_json::from_str(text.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["error"]["code"], how.outcome().as_str());
            assert_eq!(v["error"]["type"], "server_error");
        }
        assert!(End::Complete.event("p", &t).is_none());
    }
}
