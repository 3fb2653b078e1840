//! Prometheus text exposition, written by hand: counters and histograms keyed
//! by label sets. The request path records into it; `GET /metrics` renders it.

use std::collections::BTreeMap;
use std::fmt::Write;

use parking_lot::Mutex;

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
];

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
    histograms: BTreeMap<&'static str, BTreeMap<String, Histogram>>,
}

/// The gateway's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    write_labels(&mut s, pairs);
    s
}

fn write_labels(s: &mut String, pairs: &[(&str, &str)]) {
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
}

thread_local! {
    /// Where the label set of the series being updated is written: after
    /// the first calls, recording a known series allocates nothing.
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs `f` with the label set of `pairs` written out.
fn with_key<T>(pairs: &[(&str, &str)], f: impl FnOnce(&str) -> T) -> T {
    KEY.with(|k| {
        let mut k = k.borrow_mut();
        k.clear();
        write_labels(&mut k, pairs);
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
    /// Adds `v` to a counter.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        with_key(pairs, |key| {
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
        with_key(pairs, |key| {
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

    /// The value of a counter (for tests and the admin API).
    pub fn counter(&self, name: &'static str, pairs: &[(&str, &str)]) -> f64 {
        let key = labels(pairs);
        self.inner
            .lock()
            .counters
            .get(name)
            .and_then(|m| m.get(&key))
            .copied()
            .unwrap_or(0.0)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let inner = self.inner.lock();
        let mut out = String::new();
        for (name, kind, help) in METRICS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            if let Some(series) = inner.counters.get(name) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
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
}
