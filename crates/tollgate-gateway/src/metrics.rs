//! Prometheus text exposition, written by hand: counters, gauges and
//! histograms keyed by label sets. The request path records into it;
//! `GET /metrics` sets the gauges read at scrape time and renders it.
//!
//! Client ids appear as labels only when the operator turns them on
//! (`metrics.client_labels`): otherwise every `client` label is dropped
//! when recorded, which bounds the number of series and keeps the list of
//! clients and their spend off the metrics.

use std::collections::BTreeMap;
use std::fmt::Write;

use parking_lot::Mutex;

use crate::activity::Activity;

/// Every metric: name, type, help. Rendered in this order.
const METRICS: &[(&str, &str, &str)] = &[
    ("tollgate_requests_total", "counter", "Requests by client, tier, model and outcome."),
    ("tollgate_tokens_total", "counter", "Tokens settled, by client, model and direction (input/output)."),
    ("tollgate_spend_usd_total", "counter", "Spend in USD settled, by client and model."),
    ("tollgate_limiter_decisions_total", "counter", "Admission decisions by bucket (client, budget, model) and decision (granted, waited, refused)."),
    ("tollgate_upstream_responses_total", "counter", "Upstream responses by model and HTTP status (0 = no response)."),
    ("tollgate_store_errors_total", "counter", "Errors of the limit/spend store, by component."),
    ("tollgate_usage_missing_total", "counter", "Upstream answers without usage, charged by counting the tokens they carried, by model."),
    ("tollgate_usage_over_limit_total", "counter", "Upstream answers reporting more output than max_tokens x n allowed (charged at most that), by model."),
    ("tollgate_stream_malformed_lines_total", "counter", "Stream data: lines from the upstream that were not JSON (dropped), by model."),
    ("tollgate_queue_wait_seconds", "histogram", "Time requests waited in the queue before going upstream, by tier."),
    ("tollgate_upstream_latency_seconds", "histogram", "Time to the upstream's response headers, by model."),
    ("tollgate_queue_depth", "gauge", "Requests waiting for their slot now, by model and priority class."),
    ("tollgate_model_share_floor", "gauge", "Each tier's guaranteed floor of a provider model (share of its limits), by model and tier, when the tiers share the models."),
    ("tollgate_model_share", "gauge", "Each tier's lane of a provider model (floor plus its weighted part of the rest, share of the model's limits), by model and tier."),
    ("tollgate_model_share_queue_depth", "gauge", "Requests of a tier waiting for their slot in its lane of a provider model, by model and tier."),
    ("tollgate_model_share_in_use", "gauge", "Units in use in a tier's lane of a provider model (its own calls and what others borrowed), by model, tier and dimension."),
    ("tollgate_model_share_capacity", "gauge", "The most a tier's lane of a provider model holds, by model, tier and dimension."),
    ("tollgate_requests_in_flight", "gauge", "HTTP requests being served now (streams until their last byte)."),
    ("tollgate_connections_open", "gauge", "Client connections open now."),
    ("tollgate_connections_refused_total", "counter", "Client connections refused at the connection limit."),
    ("tollgate_connections_timed_out_total", "counter", "Client connections closed by the idle or header-read timeout."),
    ("tollgate_budget_usd", "gauge", "Budget in USD by tier and period (day, month), summed over the tier's clients with a budget; by client too where metrics.client_labels is on."),
    ("tollgate_budget_left_usd", "gauge", "Budget left in USD by tier and period (day, month), summed over the tier's clients with a budget; by client too where metrics.client_labels is on."),
    ("tollgate_store_up", "gauge", "Whether the limit and spend store answered a ping at this scrape (1) or not (0)."),
    ("tollgate_ledger_backlog", "gauge", "Ledger rows recorded and not yet in the database or the spool."),
    ("tollgate_ledger_spool_rows", "gauge", "Ledger rows waiting in the local spool for the database."),
    ("tollgate_ledger_up", "gauge", "Whether the ledger database took the last write (1) or not (0)."),
    ("tollgate_ledger_rows_written_total", "counter", "Ledger rows inserted into the database (replays included)."),
    ("tollgate_ledger_duplicates_total", "counter", "Ledger rows already in the database when written again (a replay after a crash), kept once."),
    ("tollgate_ledger_overflow_total", "counter", "Ledger rows that found the writer's queue full and went straight to the spool."),
    ("tollgate_ledger_spooled_total", "counter", "Ledger rows spooled because the database failed."),
    ("tollgate_ledger_replayed_total", "counter", "Ledger rows replayed from the spool into the database."),
    ("tollgate_ledger_write_errors_total", "counter", "Failed ledger database writes."),
    ("tollgate_ledger_lost_total", "counter", "Ledger rows neither the database nor the spool could take (logged as errors)."),
    ("tollgate_ledger_spool_corrupt_total", "counter", "Spool lines that could not be read back (cut off by a crash mid-write)."),
];

/// Names of the metrics, so that a typo cannot open a new series.
pub mod names {
    /// See [`super::METRICS`].
    pub const REQUESTS: &str = "tollgate_requests_total";
    /// Requests waiting for their slot.
    pub const QUEUE_DEPTH: &str = "tollgate_queue_depth";
    /// A tier's floor of a provider model.
    pub const MODEL_SHARE_FLOOR: &str = "tollgate_model_share_floor";
    /// A tier's lane share of a provider model.
    pub const MODEL_SHARE: &str = "tollgate_model_share";
    /// A tier's queue in its lane of a provider model.
    pub const MODEL_SHARE_QUEUE: &str = "tollgate_model_share_queue_depth";
    /// Units in use in a tier's lane.
    pub const MODEL_SHARE_IN_USE: &str = "tollgate_model_share_in_use";
    /// Capacity of a tier's lane.
    pub const MODEL_SHARE_CAPACITY: &str = "tollgate_model_share_capacity";
    /// HTTP requests being served.
    pub const IN_FLIGHT: &str = "tollgate_requests_in_flight";
    /// Client connections open.
    pub const CONNECTIONS_OPEN: &str = "tollgate_connections_open";
    /// Client connections refused.
    pub const CONNECTIONS_REFUSED: &str = "tollgate_connections_refused_total";
    /// Client connections timed out.
    pub const CONNECTIONS_TIMED_OUT: &str = "tollgate_connections_timed_out_total";
    /// Tokens settled.
    pub const TOKENS: &str = "tollgate_tokens_total";
    /// Time waited in the queue.
    pub const QUEUE_WAIT: &str = "tollgate_queue_wait_seconds";
    /// Store errors by component.
    pub const STORE_ERRORS: &str = "tollgate_store_errors_total";
    /// Budget.
    pub const BUDGET: &str = "tollgate_budget_usd";
    /// Budget left.
    pub const BUDGET_LEFT: &str = "tollgate_budget_left_usd";
    /// Store health.
    pub const STORE_UP: &str = "tollgate_store_up";
    /// Ledger rows not yet written.
    pub const LEDGER_BACKLOG: &str = "tollgate_ledger_backlog";
    /// Ledger rows in the spool.
    pub const LEDGER_SPOOL_ROWS: &str = "tollgate_ledger_spool_rows";
    /// Ledger database health.
    pub const LEDGER_UP: &str = "tollgate_ledger_up";
    /// Ledger rows inserted.
    pub const LEDGER_WRITTEN: &str = "tollgate_ledger_rows_written_total";
    /// Ledger rows written twice, kept once.
    pub const LEDGER_DUPLICATES: &str = "tollgate_ledger_duplicates_total";
    /// Ledger rows spooled at a full queue.
    pub const LEDGER_OVERFLOW: &str = "tollgate_ledger_overflow_total";
    /// Ledger rows spooled at a database failure.
    pub const LEDGER_SPOOLED: &str = "tollgate_ledger_spooled_total";
    /// Ledger rows replayed.
    pub const LEDGER_REPLAYED: &str = "tollgate_ledger_replayed_total";
    /// Failed ledger writes.
    pub const LEDGER_WRITE_ERRORS: &str = "tollgate_ledger_write_errors_total";
    /// Ledger rows lost.
    pub const LEDGER_LOST: &str = "tollgate_ledger_lost_total";
    /// Unreadable spool lines.
    pub const LEDGER_SPOOL_CORRUPT: &str = "tollgate_ledger_spool_corrupt_total";
}

const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    counters: BTreeMap<&'static str, BTreeMap<String, f64>>,
    gauges: BTreeMap<&'static str, BTreeMap<String, f64>>,
    histograms: BTreeMap<&'static str, BTreeMap<String, Histogram>>,
}

/// The gateway's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    client_labels: bool,
    activity: Activity,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    write_labels(&mut s, pairs);
    s
}

fn write_labels(s: &mut String, pairs: &[(&str, &str)]) {
    write_labels_but(s, pairs, None);
}

/// Writes the label set, leaving out the label named `skip`.
fn write_labels_but(s: &mut String, pairs: &[(&str, &str)], skip: Option<&str>) {
    let mut first = true;
    for (k, v) in pairs {
        if Some(*k) == skip {
            continue;
        }
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(k);
        s.push_str("=\"");
        // Label values seldom need escaping: copied whole unless they do
        // (char by char, this was a few thousand instructions a request).
        if v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
            for c in v.chars() {
                match c {
                    '\\' => s.push_str("\\\\"),
                    '"' => s.push_str("\\\""),
                    '\n' => s.push_str("\\n"),
                    c => s.push(c),
                }
            }
        } else {
            s.push_str(v);
        }
        s.push('"');
    }
}

thread_local! {
    /// Where the label set of the series being updated is written: after
    /// the first calls, recording a known series allocates nothing.
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs `f` with the label set of `pairs` written out, without the `client`
/// label unless `client_labels`.
fn with_key<T>(pairs: &[(&str, &str)], client_labels: bool, f: impl FnOnce(&str) -> T) -> T {
    KEY.with(|k| {
        let mut k = k.borrow_mut();
        k.clear();
        write_labels_but(&mut k, pairs, (!client_labels).then_some("client"));
        f(&k)
    })
}

/// The entry of `key` in `series`, created (the only allocation) if new.
fn entry<'a, V: Default>(series: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
    if !series.contains_key(key) {
        series.insert(key.to_string(), V::default());
    }
    series.get_mut(key).expect("just inserted")
}

impl Metrics {
    /// Metrics with client ids as labels or not (`metrics.client_labels`).
    pub fn new(client_labels: bool) -> Self {
        Metrics {
            inner: Mutex::default(),
            client_labels,
            activity: Activity::default(),
        }
    }

    /// Whether client ids are labels.
    pub fn client_labels(&self) -> bool {
        self.client_labels
    }

    /// Adds `v` (may be negative) to a gauge.
    pub fn gauge_add(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        with_key(pairs, self.client_labels, |key| {
            let mut inner = self.inner.lock();
            *entry(inner.gauges.entry(name).or_default(), key) += v;
        })
    }

    /// Sets a gauge.
    pub fn gauge_set(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        with_key(pairs, self.client_labels, |key| {
            let mut inner = self.inner.lock();
            *entry(inner.gauges.entry(name).or_default(), key) = v;
        })
    }

    /// Replaces every series of a gauge (for gauges read at scrape time,
    /// so series that are gone disappear).
    pub fn gauge_replace(&self, name: &'static str, series: &[(Vec<(&str, &str)>, f64)]) {
        let mut fresh = BTreeMap::new();
        for (pairs, v) in series {
            with_key(pairs, self.client_labels, |key| {
                *fresh.entry(key.to_string()).or_insert(0.0) += v;
            });
        }
        self.inner.lock().gauges.insert(name, fresh);
    }

    /// The value of a gauge (for tests).
    pub fn gauge(&self, name: &'static str, pairs: &[(&str, &str)]) -> f64 {
        let key = labels(pairs);
        self.inner
            .lock()
            .gauges
            .get(name)
            .and_then(|m| m.get(&key))
            .copied()
            .unwrap_or(0.0)
    }

    /// Per-client and per-(model, tier) counts, kept whatever
    /// `client_labels` says (for the dashboard).
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Adds `v` to a counter.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        match name {
            names::REQUESTS => self.activity.requests(pairs, v as u64),
            names::TOKENS => self.activity.tokens(pairs, v as u64),
            _ => {}
        }
        with_key(pairs, self.client_labels, |key| {
            let mut inner = self.inner.lock();
            *entry(inner.counters.entry(name).or_default(), key) += v;
        })
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, pairs, 1.0);
    }

    /// Records an observation in a histogram.
    pub fn observe(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        with_key(pairs, self.client_labels, |key| {
            let mut inner = self.inner.lock();
            let h = entry(inner.histograms.entry(name).or_default(), key);
            if h.counts.is_empty() {
                h.counts = vec![0; BUCKETS.len()];
            }
            if let Some(i) = BUCKETS.iter().position(|b| v <= *b) {
                h.counts[i] += 1;
            }
            h.sum += v;
            h.count += 1;
        })
    }

    /// The value of a counter (for tests and the admin API), `pairs` as
    /// recorded (a `client` label is dropped unless client labels are on).
    pub fn counter(&self, name: &'static str, pairs: &[(&str, &str)]) -> f64 {
        let key = with_key(pairs, self.client_labels, str::to_string);
        self.inner
            .lock()
            .counters
            .get(name)
            .and_then(|m| m.get(&key))
            .copied()
            .unwrap_or(0.0)
    }

    /// The `q`-quantile (0..=1) of a histogram's series with exactly the
    /// labels `pairs` (as rendered: no `client` label unless client labels
    /// are on), interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does; `None` when it has no observations. An
    /// answer in the last, open bucket is that bucket's lower bound.
    pub fn quantile(&self, name: &'static str, pairs: &[(&str, &str)], q: f64) -> Option<f64> {
        let key = with_key(pairs, self.client_labels, str::to_string);
        let inner = self.inner.lock();
        let h = inner.histograms.get(name)?.get(&key)?;
        quantile(&h.counts, h.count, q)
    }

    /// The number of observations in a histogram's series (see
    /// [`Metrics::quantile`] for `pairs`).
    pub fn observations(&self, name: &'static str, pairs: &[(&str, &str)]) -> u64 {
        let key = with_key(pairs, self.client_labels, str::to_string);
        let inner = self.inner.lock();
        inner
            .histograms
            .get(name)
            .and_then(|m| m.get(&key))
            .map_or(0, |h| h.count)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let inner = self.inner.lock();
        let mut out = String::new();
        for (name, kind, help) in METRICS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for series in [inner.counters.get(name), inner.gauges.get(name)]
                .into_iter()
                .flatten()
            {
                for (l, v) in series {
                    let _ = writeln!(out, "{name}{{{l}}} {v}");
                }
            }
            if let Some(series) = inner.histograms.get(name) {
                for (l, h) in series {
                    let sep = if l.is_empty() { "" } else { "," };
                    let mut cumulative = 0;
                    for (b, c) in BUCKETS.iter().zip(&h.counts) {
                        cumulative += c;
                        let _ = writeln!(out, "{name}_bucket{{{l}{sep}le=\"{b}\"}} {cumulative}");
                    }
                    let _ = writeln!(out, "{name}_bucket{{{l}{sep}le=\"+Inf\"}} {}", h.count);
                    let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
                    let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
                }
            }
        }
        out
    }
}

/// The `q`-quantile of a histogram with per-bucket `counts` (of
/// [`BUCKETS`], not cumulative) and `total` observations, as Prometheus'
/// `histogram_quantile` computes it.
fn quantile(counts: &[u64], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, (&upper, &c)) in BUCKETS.iter().zip(counts).enumerate() {
        if c > 0 && (below + c) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            return Some(lower + (upper - lower) * (rank - below as f64) / c as f64);
        }
        below += c;
    }
    BUCKETS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new(true);
        m.inc(
            "tollgate_requests_total",
            &[("client", "a\"b"), ("outcome", "ok")],
        );
        m.observe("tollgate_queue_wait_seconds", &[("tier", "free")], 0.003);
        let text = m.render();
        assert!(
            text.contains("tollgate_requests_total{client=\"a\\\"b\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_queue_wait_seconds_bucket{tier=\"free\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_queue_wait_seconds_count{tier=\"free\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let m = Metrics::new(false);
        let tier = [("tier", "pro")];
        assert_eq!(m.quantile(names::QUEUE_WAIT, &tier, 0.5), None);
        // Four in (0.001, 0.005], four in (0.01, 0.025].
        for v in [0.002, 0.003, 0.004, 0.005, 0.02, 0.02, 0.02, 0.02] {
            m.observe(names::QUEUE_WAIT, &tier, v);
        }
        assert_eq!(m.observations(names::QUEUE_WAIT, &tier), 8);
        let p50 = m.quantile(names::QUEUE_WAIT, &tier, 0.5).unwrap();
        assert!((p50 - 0.005).abs() < 1e-12, "{p50}");
        let p75 = m.quantile(names::QUEUE_WAIT, &tier, 0.75).unwrap();
        assert!((p75 - 0.0175).abs() < 1e-12, "{p75}");
        m.observe(names::QUEUE_WAIT, &[("tier", "slow")], 1000.0);
        assert_eq!(
            m.quantile(names::QUEUE_WAIT, &[("tier", "slow")], 0.99),
            Some(60.0)
        );
    }

    #[test]
    fn client_labels_are_dropped_unless_turned_on() {
        let m = Metrics::new(false);
        let pairs = [("client", "acme"), ("outcome", "ok")];
        m.inc("tollgate_requests_total", &pairs);
        m.inc(
            "tollgate_requests_total",
            &[("client", "other"), ("outcome", "ok")],
        );
        let text = m.render();
        assert!(
            text.contains("tollgate_requests_total{outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(!text.contains("acme"), "{text}");
        assert_eq!(m.counter("tollgate_requests_total", &pairs), 2.0);
        m.gauge_add(names::QUEUE_DEPTH, &[("model", "m"), ("class", "0")], 2.0);
        m.gauge_add(names::QUEUE_DEPTH, &[("model", "m"), ("class", "0")], -1.0);
        assert!(m
            .render()
            .contains("tollgate_queue_depth{model=\"m\",class=\"0\"} 1"));
    }
}
