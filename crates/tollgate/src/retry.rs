//! Retrying transient store errors: exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

use crate::Error;

/// How transient store errors are retried before the outage policy applies.
///
/// The delay before retry `n` (1-based) is
/// `min(max_delay, base_delay × exponential_base^(n-1))`, then spread by
/// `± jitter × delay` at random so that many clients do not retry in step.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first attempt (0 = no retry). Default 3.
    pub max_retries: u32,
    /// Delay before the first retry. Default 20 ms.
    pub base_delay: Duration,
    /// Largest delay between two attempts. Default 500 ms.
    pub max_delay: Duration,
    /// Growth factor of the delay, >= 1. Default 2.
    pub exponential_base: f64,
    /// Random spread in [0, 1] as a fraction of the delay. Default 0.2.
    pub jitter: f64,
    /// During an outage, how often one call tries the store again (the others
    /// apply the outage policy at once). Default 100 ms.
    pub probe_interval: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 3,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(500),
            exponential_base: 2.0,
            jitter: 0.2,
            probe_interval: Duration::from_millis(100),
        }
    }
}

impl RetryConfig {
    /// No retries at all.
    pub fn none() -> Self {
        RetryConfig {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, value: String, reason| {
            Err(Error::Config {
                field,
                value,
                reason,
            })
        };
        if self.max_retries > 100 {
            return bad(
                "retry.max_retries",
                self.max_retries.to_string(),
                "at most 100",
            );
        }
        if self.base_delay > self.max_delay {
            return bad(
                "retry.base_delay",
                format!("{:?}", self.base_delay),
                "must not exceed retry.max_delay",
            );
        }
        if !(self.exponential_base.is_finite() && self.exponential_base >= 1.0) {
            return bad(
                "retry.exponential_base",
                self.exponential_base.to_string(),
                "a finite number >= 1",
            );
        }
        if self.probe_interval.is_zero() || self.probe_interval > Duration::from_secs(60) {
            return bad(
                "retry.probe_interval",
                format!("{:?}", self.probe_interval),
                "between 1 ms and 60 s",
            );
        }
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            return bad(
                "retry.jitter",
                self.jitter.to_string(),
                "a number in [0, 1]",
            );
        }
        Ok(())
    }

    /// The delay before retry `attempt` (1-based), jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .exponential_base
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = (self.base_delay.as_secs_f64() * exp).min(self.max_delay.as_secs_f64());
        let spread = if self.jitter > 0.0 {
            rand::rng().random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64((base * (1.0 + spread)).max(0.0))
    }

    /// The longest all retries together can sleep: what a caller may wait in the
    /// worst case before the outage policy applies (store timeouts not included).
    pub fn worst_case_total(&self) -> Duration {
        (1..=self.max_retries)
            .map(|a| {
                let exp = self
                    .exponential_base
                    .powi(a.saturating_sub(1).min(64) as i32);
                let base = (self.base_delay.as_secs_f64() * exp).min(self.max_delay.as_secs_f64());
                Duration::from_secs_f64(base * (1.0 + self.jitter))
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap_within_jitter() {
        let r = RetryConfig::default();
        for _ in 0..100 {
            let d1 = r.delay(1).as_secs_f64();
            assert!((0.016..=0.024).contains(&d1), "{d1}");
            let d10 = r.delay(10).as_secs_f64();
            assert!((0.4..=0.6).contains(&d10), "{d10}");
        }
        let flat = RetryConfig { jitter: 0.0, ..r };
        assert_eq!(flat.delay(3), Duration::from_millis(80));
    }

    #[test]
    fn validation_names_the_field() {
        let e = RetryConfig {
            jitter: 1.5,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("retry.jitter"), "{e}");
        let e = RetryConfig {
            exponential_base: 0.5,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("retry.exponential_base"), "{e}");
        let e = RetryConfig {
            base_delay: Duration::from_secs(2),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("retry.base_delay"), "{e}");
    }
}
