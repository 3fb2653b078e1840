//! A real gateway's `/metrics`, read as the Prometheus text format: the
#![allow(dead_code)]
//! samples with their labels, sums over label filters and histogram
//! quantiles computed the way Prometheus' `histogram_quantile` does, so
//! that tests can hold other views (the dashboard, the Grafana dashboard,
//! the alert rules) against what the gateway exports.

use std::collections::BTreeMap;

use reqwest::{Client, Method};
use tollgate_gateway::RunningGateway;

/// One sample: its metric name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scrape: every sample and every `# TYPE`d metric name.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

impl Scrape {
    /// Parses the text exposition.
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let mut it = t.split_whitespace();
                if let (Some(n), Some(k)) = (it.next(), it.next()) {
                    s.types.insert(n.to_string(), k.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            s.samples.push(Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("a number"),
            });
        }
        s
    }

    /// Scrapes a gateway's `/metrics` (with the admin token).
    pub async fn of(c: &Client, gw: &RunningGateway) -> Scrape {
        let r = crate::common::send(crate::common::admin(c, gw, Method::GET, "/metrics")).await;
        assert_eq!(r.status(), 200);
        Scrape::parse(&r.text().await.expect("metrics text"))
    }

    /// The sum of `name`'s samples whose labels include every `(k, v)` of
    /// `filter` (a `v` of the form `a|b` matches either).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                filter.iter().all(|(k, v)| {
                    s.labels
                        .get(*k)
                        .is_some_and(|got| v.split('|').any(|want| want == got))
                })
            })
            .map(|s| s.value)
            .sum()
    }

    /// The `q`-quantile of histogram `name` over the series matching
    /// `filter`, as `histogram_quantile(q, sum by (le) (...))` computes it;
    /// `None` without observations.
    pub fn quantile(&self, name: &str, filter: &[(&str, &str)], q: f64) -> Option<f64> {
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        let bucket = format!("{name}_bucket");
        for s in self.samples.iter().filter(|s| s.name == bucket) {
            if !filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            {
                continue;
            }
            let le: f64 = match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                l => l.parse().expect("le"),
            };
            buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
        }
        let mut bs: Vec<(f64, f64)> = buckets.into_values().collect();
        bs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = bs.last()?.1;
        if total == 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for (i, &(le, cum)) in bs.iter().enumerate() {
            if cum >= rank {
                if le.is_infinite() {
                    return Some(bs[i - 1].0);
                }
                let lower = if i == 0 { 0.0 } else { prev.0 };
                return Some(lower + (le - lower) * (rank - prev.1) / (cum - prev.1));
            }
            prev = (le, cum);
        }
        None
    }

    /// Every metric name a query may use: the `# TYPE`d names, with
    /// `_bucket`, `_sum` and `_count` for histograms.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (n, kind) in &self.types {
            out.push(n.clone());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.push(format!("{n}{suffix}"));
                }
            }
        }
        out
    }
}
