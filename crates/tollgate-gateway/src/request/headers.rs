//! OpenAI's rate-limit headers, for the client's own tier bucket (or, on a
//! 429, for the bucket that refused).
//!
//! `limit` is the bucket's limit per minute, as the tier (or the provider
//! model) sets it, and `remaining` never exceeds it: a bucket with a burst
//! factor above 1 holds more than one minute's limit, and that extra room
//! shows apart, in `x-tollgate-burst-{requests,tokens}` (the most the bucket
//! holds, `burst × limit`), so that clients written for OpenAI's headers
//! never see more remaining than their limit.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use tollgate::{Dimension, DimensionStatus};

/// Which bucket a 429's rate-limit headers describe: `client` (the client's
/// tier bucket), `model` (the provider model's shared bucket),
/// `organisation` or `key` (their own buckets).
pub const BUCKET_HEADER: HeaderName = HeaderName::from_static("x-tollgate-ratelimit-bucket");

/// Which level's budget refused a request (`organisation`, `client` or
/// `key`), on a budget's 429.
pub const BUDGET_LEVEL_HEADER: HeaderName = HeaderName::from_static("x-tollgate-budget-level");

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` from a bucket's
/// dimensions (a [`tollgate::Status`]'s, or a permit's state at its grant).
pub fn ratelimit_headers(dimensions: &[DimensionStatus]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    write_ratelimit_headers(&mut h, dimensions);
    h
}

/// [`ratelimit_headers`] written straight into `h` (an answer's own
/// headers): no map of their own to make and then copy over.
pub fn write_ratelimit_headers(h: &mut HeaderMap, dimensions: &[DimensionStatus]) {
    const NAMES: [(Dimension, [&str; 4]); 2] = [
        (
            Dimension::Requests,
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
                "x-tollgate-burst-requests",
            ],
        ),
        (
            Dimension::Tokens,
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
                "x-tollgate-burst-tokens",
            ],
        ),
    ];
    for (dim, [limit, remaining, reset, burst]) in NAMES {
        let Some(d) = dimensions.iter().find(|d| d.dimension == dim) else {
            continue;
        };
        let remaining_units = (d.available.floor().max(0.0) as u64).min(d.limit);
        h.insert(HeaderName::from_static(limit), HeaderValue::from(d.limit));
        let capacity = d.capacity.floor().max(0.0) as u64;
        if capacity > d.limit {
            h.insert(HeaderName::from_static(burst), HeaderValue::from(capacity));
        }
        h.insert(
            HeaderName::from_static(remaining),
            HeaderValue::from(remaining_units),
        );
        if let Ok(v) = HeaderValue::try_from(format_reset(d.full_in)) {
            h.insert(HeaderName::from_static(reset), v);
        }
    }
}

/// A duration as OpenAI writes it: `20ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mins = ms / 60_000;
    let rest = (ms % 60_000) as f64 / 1000.0;
    let secs = format!("{rest:.3}");
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// How long an upstream 429 asks us to wait: `retry-after-ms`, `retry-after`
/// (seconds), or the later of OpenAI's `x-ratelimit-reset-*`; 1 s if none,
/// at most 60 s.
pub fn upstream_backoff(h: &reqwest::header::HeaderMap) -> Duration {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    let d = if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        Some(ms / 1000.0)
    } else if let Some(s) = get("retry-after").and_then(|v| v.parse::<f64>().ok()) {
        Some(s)
    } else {
        ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
            .iter()
            .filter_map(|k| get(k).and_then(parse_reset))
            .reduce(f64::max)
    };
    let d = d
        .filter(|d| d.is_finite() && *d > 0.0)
        .unwrap_or(1.0)
        .min(60.0);
    Duration::from_secs_f64(d)
}

/// Parses `20ms`, `1.5s`, `6m0s`, `1h2m3s` into seconds.
fn parse_reset(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        total += match c {
            'h' => v * 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                v / 1000.0
            }
            'm' => v * 60.0,
            's' => v,
            _ => return None,
        };
    }
    num.is_empty().then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_like_openai() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
        assert_eq!(parse_reset("6m0s"), Some(360.0));
        assert_eq!(parse_reset("20ms"), Some(0.02));
        assert_eq!(parse_reset("1.5s"), Some(1.5));
        assert_eq!(parse_reset("x"), None);
    }
}
