//! The exact token bucket the provider stand-in enforces, and the analysis of
//! what it admitted.
//!
//! Each dimension holds at most `capacity` units and refills continuously at
//! `rate = capacity / window` units per second (Anthropic's documented model,
//! with the capacity equal to one window's limit).

use serde::{Deserialize, Serialize};

/// One dimension of the stand-in's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dim {
    /// Most units the bucket holds.
    pub capacity: f64,
    /// Units refilled per second.
    pub rate: f64,
    level: f64,
}

impl Dim {
    /// A full bucket of `limit` per `window_secs`.
    pub fn new(limit: f64, window_secs: f64) -> Self {
        Dim {
            capacity: limit,
            rate: limit / window_secs,
            level: limit,
        }
    }

    /// Units held now (may be negative by at most `rate × tolerance`).
    pub fn level(&self) -> f64 {
        self.level
    }
}

/// A two-dimension bucket (requests, tokens), refilled on its own clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// The requests dimension.
    pub requests: Dim,
    /// The tokens dimension.
    pub tokens: Dim,
    /// How far ahead of its arrival a call may be and still be admitted, in
    /// seconds: the scheduling jitter allowance (0 = strict).
    pub tolerance: f64,
    last: f64,
}

/// The decision for one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Whether the call was admitted.
    pub admitted: bool,
    /// How long before the bucket would have held the call's cost (0 when it
    /// held it at arrival): how early the call came.
    pub early_by: f64,
}

impl Bucket {
    /// A full bucket, starting its clock at `now`.
    pub fn new(requests: u64, tokens: u64, window_secs: f64, tolerance: f64, now: f64) -> Self {
        Bucket {
            requests: Dim::new(requests as f64, window_secs),
            tokens: Dim::new(tokens as f64, window_secs),
            tolerance,
            last: now,
        }
    }

    fn refill(&mut self, now: f64) {
        let dt = (now - self.last).max(0.0);
        self.last = self.last.max(now);
        for d in [&mut self.requests, &mut self.tokens] {
            d.level = (d.level + dt * d.rate).min(d.capacity);
        }
    }

    /// Takes one request of `tokens` at `now` if both dimensions hold it
    /// (within the tolerance); nothing is taken otherwise.
    pub fn take(&mut self, now: f64, tokens: f64) -> Decision {
        self.refill(now);
        let short = |d: &Dim, c: f64| ((c - d.level) / d.rate).max(0.0);
        let early_by = short(&self.requests, 1.0).max(short(&self.tokens, tokens));
        let admitted = early_by <= self.tolerance;
        if admitted {
            self.requests.level -= 1.0;
            self.tokens.level -= tokens;
        }
        Decision { admitted, early_by }
    }

    /// Tokens held now (after refilling to `now`).
    pub fn tokens_at(&mut self, now: f64) -> f64 {
        self.refill(now);
        self.tokens.level
    }
}

/// One call as the stand-in saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    /// Arrival at the stand-in, Unix seconds.
    pub arrival: f64,
    /// When the caller asked its limiter for the call, Unix seconds (0 if unknown).
    pub asked: f64,
    /// Tokens the call used.
    pub tokens: u64,
    /// Whether the bucket admitted it (false: answered 429).
    pub admitted: bool,
    /// How early it came (see [`Decision::early_by`]), seconds.
    pub early_by: f64,
    /// Which client sent it (`tollgate`, `python`, a worker id ...).
    pub client: String,
    /// Tokens in the bucket after the decision.
    pub level_after: f64,
}

/// What the stand-in's records show about one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Analysis {
    /// Calls received.
    pub calls: u64,
    /// Calls answered 429.
    pub rejected: u64,
    /// Tokens admitted over the whole run.
    pub tokens_admitted: u64,
    /// Start and end of the steady part, Unix seconds.
    pub steady: (f64, f64),
    /// Tokens admitted in the steady part.
    pub steady_admitted: f64,
    /// Tokens the bucket allowed in the steady part (what it held at its start
    /// plus its refill over it).
    pub steady_allowed: f64,
    /// `steady_admitted / steady_allowed`.
    pub utilisation: f64,
    /// Largest sum of admitted tokens in any window-long interval (arrival
    /// times), over the whole run; a full bucket allows up to 2 × limit here.
    pub max_window_tokens: u64,
    /// The same over windows that start in the steady part; the bucket allows
    /// at most limit + what it held at the window's start.
    pub max_window_tokens_steady: u64,
    /// Pairs of calls where one asked more than `jitter` earlier yet arrived
    /// more than `jitter` later.
    pub fifo_inversions: u64,
    /// Ordered pairs compared for FIFO (asked more than `jitter` apart).
    pub fifo_pairs: u64,
    /// Largest `early_by` over all calls, seconds.
    pub max_early_by: f64,
}

/// Analyses the records of one client over `[steady_from, steady_to]`.
///
/// `bucket_at_start` is a fresh bucket replayed over the records to learn
/// what it held at `steady_from`.
pub fn analyse(
    records: &[CallRecord],
    tokens_limit: u64,
    window_secs: f64,
    steady_from: f64,
    steady_to: f64,
    jitter: f64,
) -> Analysis {
    let mut recs: Vec<&CallRecord> = records.iter().collect();
    recs.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    let admitted: Vec<&CallRecord> = recs.iter().copied().filter(|r| r.admitted).collect();

    // What the bucket held at the start of the steady part: the level after the
    // last call before it, refilled to `steady_from`.
    let rate = tokens_limit as f64 / window_secs;
    let before = admitted.iter().rev().find(|r| r.arrival < steady_from);
    let level_at_start = match before {
        Some(r) => (r.level_after + (steady_from - r.arrival) * rate).min(tokens_limit as f64),
        None => tokens_limit as f64,
    };
    let steady_admitted: f64 = admitted
        .iter()
        .filter(|r| r.arrival >= steady_from && r.arrival <= steady_to)
        .map(|r| r.tokens as f64)
        .sum();
    let steady_allowed = level_at_start.max(0.0) + (steady_to - steady_from).max(0.0) * rate;

    let (max_all, max_steady) = max_windows(&admitted, window_secs, steady_from);
    let (fifo_inversions, fifo_pairs) = fifo(&recs, jitter);

    Analysis {
        calls: recs.len() as u64,
        rejected: recs.iter().filter(|r| !r.admitted).count() as u64,
        tokens_admitted: admitted.iter().map(|r| r.tokens).sum(),
        steady: (steady_from, steady_to),
        steady_admitted,
        steady_allowed,
        utilisation: if steady_allowed > 0.0 {
            steady_admitted / steady_allowed
        } else {
            0.0
        },
        max_window_tokens: max_all,
        max_window_tokens_steady: max_steady,
        fifo_inversions,
        fifo_pairs,
        max_early_by: recs.iter().map(|r| r.early_by).fold(0.0, f64::max),
    }
}

/// Largest admitted sum in any `[t, t + window)` with `t` at an arrival: over
/// all windows, and over those starting at or after `steady_from`.
fn max_windows(admitted: &[&CallRecord], window: f64, steady_from: f64) -> (u64, u64) {
    let (mut best, mut best_steady, mut sum, mut end) = (0u64, 0u64, 0u64, 0usize);
    for (start, r) in admitted.iter().enumerate() {
        while end < admitted.len() && admitted[end].arrival < r.arrival + window {
            sum += admitted[end].tokens;
            end += 1;
        }
        best = best.max(sum);
        if r.arrival >= steady_from {
            best_steady = best_steady.max(sum);
        }
        sum -= admitted[start].tokens;
    }
    (best, best_steady)
}

/// Counts FIFO inversions among calls that carry an `asked` time.
fn fifo(recs: &[&CallRecord], jitter: f64) -> (u64, u64) {
    let mut asked: Vec<&CallRecord> = recs.iter().copied().filter(|r| r.asked > 0.0).collect();
    asked.sort_by(|a, b| a.asked.total_cmp(&b.asked));
    let (mut inversions, mut pairs) = (0u64, 0u64);
    for (i, a) in asked.iter().enumerate() {
        for b in &asked[i + 1..] {
            if b.asked - a.asked <= jitter {
                continue;
            }
            pairs += 1;
            if a.arrival - b.arrival > jitter {
                inversions += 1;
            }
        }
    }
    (inversions, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_continuously_and_caps() {
        let mut b = Bucket::new(100, 1000, 10.0, 0.0, 0.0);
        assert!(b.take(0.0, 1000.0).admitted);
        let d = b.take(0.0, 100.0);
        assert!(!d.admitted);
        assert!((d.early_by - 1.0).abs() < 1e-9, "{d:?}");
        assert!(b.take(1.0, 100.0).admitted);
        assert!((b.tokens_at(100.0) - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn tolerance_admits_slightly_early_calls() {
        let mut b = Bucket::new(100, 1000, 10.0, 0.005, 0.0);
        assert!(b.take(0.0, 1000.0).admitted);
        assert!(b.take(0.996, 100.0).admitted);
        assert!(!b.take(0.996, 100.0).admitted);
    }

    #[test]
    fn analysis_measures_windows_and_fifo() {
        let rec = |arrival: f64, asked: f64, tokens| CallRecord {
            arrival,
            asked,
            tokens,
            admitted: true,
            early_by: 0.0,
            client: "t".into(),
            level_after: 0.0,
        };
        let recs = vec![
            rec(0.0, 0.0, 500),
            rec(5.0, 1.0, 500),
            rec(9.0, 2.0, 500),
            rec(12.0, 1.5, 10),
        ];
        let a = analyse(&recs, 1000, 10.0, 1.0, 11.0, 0.01);
        assert_eq!(a.max_window_tokens, 1500);
        assert_eq!(a.max_window_tokens_steady, 1010);
        assert_eq!(a.fifo_inversions, 1);
        assert_eq!(a.fifo_pairs, 3);
    }
}
