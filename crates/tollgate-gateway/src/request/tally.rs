//! Counting each request once in `tollgate_requests_total`, with the outcome
//! that ended it — also when nothing ends it on purpose: a request whose
//! client went away (its handler or its stream dropped) is counted
//! `client_gone` when its [`Tally`] is dropped unrecorded.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::registry::Client;

/// Where a request was when its client left (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Reading and checking the body, or being admitted.
    Admitting,
    /// Admitted, waiting for its slot.
    Queued,
    /// Sent upstream, waiting for its answer.
    Upstream,
    /// Streaming the answer.
    Streaming,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Admitting => "admitting",
            Stage::Queued => "queued",
            Stage::Upstream => "upstream",
            Stage::Streaming => "streaming",
        }
    }
}

/// One request's entry in `tollgate_requests_total`, written once.
pub(crate) struct Tally {
    inner: Option<Inner>,
}

struct Inner {
    metrics: Arc<Metrics>,
    client: Arc<Client>,
    model: String,
    stage: Stage,
}

impl Tally {
    /// A request of `client`, model not known yet.
    pub(crate) fn new(metrics: Arc<Metrics>, client: Arc<Client>) -> Tally {
        Tally {
            inner: Some(Inner {
                metrics,
                client,
                model: String::new(),
                stage: Stage::Admitting,
            }),
        }
    }

    /// The request is for `model`.
    pub fn model(&mut self, model: &str) {
        if let Some(i) = &mut self.inner {
            i.model = model.to_string();
        }
    }

    /// The request reached `stage`.
    pub fn stage(&mut self, stage: Stage) {
        if let Some(i) = &mut self.inner {
            i.stage = stage;
        }
    }

    /// The client's id (empty once recorded).
    pub fn client_id(&self) -> &str {
        self.inner.as_ref().map_or("", |i| i.client.id.as_str())
    }

    /// Moves the entry out (to a stream that records it when it ends);
    /// `self` then records nothing.
    pub fn take(&mut self) -> Tally {
        Tally {
            inner: self.inner.take(),
        }
    }

    /// Counts the request with `outcome` (once: later calls do nothing).
    pub fn record(&mut self, outcome: Outcome) {
        let Some(i) = self.inner.take() else { return };
        i.metrics.inc(
            "tollgate_requests_total",
            &[
                ("client", &i.client.id),
                ("tier", &i.client.tier.name),
                ("model", &i.model),
                ("outcome", outcome.as_str()),
            ],
        );
        let (client, model, stage) = (&i.client.id, &i.model, i.stage.name());
        let name = outcome.as_str();
        match outcome {
            Outcome::Ok => {}
            Outcome::ClientGone => {
                tracing::info!(client = %client, model = %model, stage, outcome = name, "client went away")
            }
            Outcome::UpstreamTimeout
            | Outcome::StreamBroken
            | Outcome::UpstreamBadBody
            | Outcome::UpstreamError
            | Outcome::UpstreamRateLimited => {
                tracing::warn!(client = %client, model = %model, stage, outcome = name, "request failed upstream")
            }
            _ => {
                tracing::debug!(client = %client, model = %model, stage, outcome = name, "request refused")
            }
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.record(Outcome::ClientGone);
    }
}
