//! What each client and each (model, tier) pair did on this instance:
//! requests, refusals and failures, counted whatever `metrics.client_labels`
//! says, so that the dashboard can show every client's refusal rate without
//! putting client ids on `/metrics`.
//!
//! [`Metrics`](crate::metrics::Metrics) feeds it from the series it records
//! (`tollgate_requests_total` and `tollgate_tokens_total`), so the counts are
//! the same requests the metrics count, and the request path needs no call of
//! its own. Counts live in memory and start at zero with the process.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use parking_lot::Mutex;

use crate::outcome::names as outcome;

/// Length of one slot of the recent window, in seconds: "recent" is the
/// slot now filling plus the one before it, so 60 to 120 s.
pub const RECENT_SLOT_SECS: u64 = 60;

/// Whether an outcome is a refusal by the gateway's own limits.
pub fn is_refusal(o: &str) -> bool {
    matches!(o, outcome::RATE_LIMITED | outcome::BUDGET_EXCEEDED)
}

/// Whether an outcome is a failure (the upstream's, the store's or the
/// gateway's), as opposed to an answer, a refusal or the client's own doing.
pub fn is_failure(o: &str) -> bool {
    matches!(
        o,
        outcome::STORE_UNAVAILABLE
            | outcome::UPSTREAM_ERROR
            | outcome::UPSTREAM_RATE_LIMITED
            | outcome::UPSTREAM_TIMEOUT
            | outcome::STREAM_BROKEN
            | outcome::UPSTREAM_BAD_BODY
            | outcome::INTERNAL
    )
}

/// Requests, refusals and failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Every request counted.
    pub requests: u64,
    /// Refused by a rate limit or a budget ([`is_refusal`]).
    pub refused: u64,
    /// Failed ([`is_failure`]).
    pub failed: u64,
}

impl Counts {
    fn add(&mut self, o: &str, n: u64) {
        self.requests += n;
        if is_refusal(o) {
            self.refused += n;
        } else if is_failure(o) {
            self.failed += n;
        }
    }

    fn plus(self, other: Counts) -> Counts {
        Counts {
            requests: self.requests + other.requests,
            refused: self.refused + other.refused,
            failed: self.failed + other.failed,
        }
    }

    /// Refused requests over all requests (0 when there were none).
    pub fn refusal_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.refused as f64 / self.requests as f64
        }
    }
}

/// One client's activity on this instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientActivity {
    /// Since the process started.
    pub total: Counts,
    /// In the recent window ([`RECENT_SLOT_SECS`]).
    pub recent: Counts,
    /// Tokens settled (input and output).
    pub tokens: u64,
}

#[derive(Debug, Default)]
struct ClientEntry {
    total: Counts,
    tokens: u64,
    slot: u64,
    this_slot: Counts,
    last_slot: Counts,
}

impl ClientEntry {
    /// Moves the window to `slot`.
    fn roll(&mut self, slot: u64) {
        if slot == self.slot {
            return;
        }
        self.last_slot = if slot == self.slot + 1 {
            self.this_slot
        } else {
            Counts::default()
        };
        self.this_slot = Counts::default();
        self.slot = slot;
    }

    fn view(&self, slot: u64) -> ClientActivity {
        let recent = if slot == self.slot {
            self.this_slot.plus(self.last_slot)
        } else if slot == self.slot + 1 {
            self.this_slot
        } else {
            Counts::default()
        };
        ClientActivity {
            total: self.total,
            recent,
            tokens: self.tokens,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    clients: HashMap<String, ClientEntry>,
    /// (model, tier) → counts.
    models: BTreeMap<(String, String), Counts>,
    /// model → tokens settled.
    model_tokens: BTreeMap<String, u64>,
}

/// Per-client and per-(model, tier) counts.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    inner: Mutex<Inner>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: Instant::now(),
            inner: Mutex::default(),
        }
    }
}

fn label<'a>(pairs: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

impl Activity {
    fn slot(&self) -> u64 {
        self.started.elapsed().as_secs() / RECENT_SLOT_SECS
    }

    /// Counts `n` requests of `tollgate_requests_total` with these labels
    /// (`client`, `tier`, `model`, `outcome`). Requests without a client
    /// (an unknown key) count for no client.
    pub fn requests(&self, pairs: &[(&str, &str)], n: u64) {
        let Some(o) = label(pairs, "outcome") else {
            return;
        };
        let client = label(pairs, "client").filter(|c| !c.is_empty());
        let tier = label(pairs, "tier").unwrap_or_default();
        let model = label(pairs, "model").unwrap_or_default();
        let slot = self.slot();
        let mut inner = self.inner.lock();
        if let Some(client) = client {
            if !inner.clients.contains_key(client) {
                inner
                    .clients
                    .insert(client.to_string(), ClientEntry::default());
            }
            let e = inner.clients.get_mut(client).expect("just inserted");
            e.roll(slot);
            e.total.add(o, n);
            e.this_slot.add(o, n);
        }
        if !model.is_empty() && !tier.is_empty() {
            let key = (model.to_string(), tier.to_string());
            inner.models.entry(key).or_default().add(o, n);
        }
    }

    /// Counts `n` tokens of `tollgate_tokens_total` with these labels
    /// (`client`, `model`).
    pub fn tokens(&self, pairs: &[(&str, &str)], n: u64) {
        let mut inner = self.inner.lock();
        if let Some(model) = label(pairs, "model") {
            *inner.model_tokens.entry(model.to_string()).or_default() += n;
        }
        if let Some(client) = label(pairs, "client").filter(|c| !c.is_empty()) {
            if let Some(e) = inner.clients.get_mut(client) {
                e.tokens += n;
            } else {
                let e = ClientEntry {
                    tokens: n,
                    slot: self.slot(),
                    ..ClientEntry::default()
                };
                inner.clients.insert(client.to_string(), e);
            }
        }
    }

    /// One client's activity (all zero for a client not seen yet).
    pub fn client(&self, id: &str) -> ClientActivity {
        let slot = self.slot();
        self.inner
            .lock()
            .clients
            .get(id)
            .map(|e| e.view(slot))
            .unwrap_or_default()
    }

    /// The activity of each client in `ids`, in their order.
    pub fn clients<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<ClientActivity> {
        let slot = self.slot();
        let inner = self.inner.lock();
        ids.into_iter()
            .map(|id| {
                inner
                    .clients
                    .get(id)
                    .map(|e| e.view(slot))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Counts by (model, tier).
    pub fn models(&self) -> BTreeMap<(String, String), Counts> {
        self.inner.lock().models.clone()
    }

    /// Tokens settled by model.
    pub fn model_tokens(&self) -> BTreeMap<String, u64> {
        self.inner.lock().model_tokens.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(client: &'a str, outcome: &'a str) -> [(&'static str, &'a str); 4] {
        [
            ("client", client),
            ("tier", "pro"),
            ("model", "m"),
            ("outcome", outcome),
        ]
    }

    #[test]
    fn counts_refusals_and_failures_per_client_and_model() {
        let a = Activity::default();
        a.requests(&req("acme", "ok"), 3);
        a.requests(&req("acme", "rate_limited"), 1);
        a.requests(&req("acme", "budget_exceeded"), 1);
        a.requests(&req("acme", "upstream_timeout"), 1);
        a.requests(&req("other", "ok"), 1);
        a.requests(&req("", "unauthorized"), 5);
        a.tokens(&[("client", "acme"), ("model", "m")], 40);
        let acme = a.client("acme");
        assert_eq!(
            acme.total,
            Counts {
                requests: 6,
                refused: 2,
                failed: 1
            }
        );
        assert_eq!(acme.recent, acme.total);
        assert_eq!(acme.tokens, 40);
        assert!((acme.total.refusal_rate() - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(a.client("nobody"), ClientActivity::default());
        let m = a.models()[&("m".to_string(), "pro".to_string())];
        assert_eq!(m.requests, 12, "the unauthenticated ones have no tier");
        assert_eq!(a.model_tokens()["m"], 40);
    }

    #[test]
    fn the_recent_window_keeps_two_slots() {
        let mut e = ClientEntry::default();
        e.this_slot.add("ok", 2);
        e.roll(1);
        e.this_slot.add("rate_limited", 1);
        assert_eq!(e.view(1).recent.requests, 3);
        assert_eq!(e.view(2).recent.requests, 1, "slot 0 has left the window");
        assert_eq!(e.view(3).recent.requests, 0);
        e.roll(5);
        assert_eq!(e.view(5).recent, Counts::default());
    }
}
