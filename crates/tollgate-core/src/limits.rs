//! Limits as a user writes them, and the validated [`Policy`] the arithmetic uses.

use crate::{Cost, CostError, Dimension, Dims, LimitsError, ReserveError, DIMENSIONS};

/// The default window: limits are per minute.
pub const DEFAULT_WINDOW_SECS: f64 = 60.0;

/// The largest burst factor [`Limits::validate`] accepts: a bucket may hold at
/// most a thousand windows' worth (about 17 hours of a per-minute limit).
/// Beyond that a burst no longer describes a provider's limit, and the
/// tolerance `burst × window` would lose the precision of the times it is
/// added to.
pub const MAX_BURST: f64 = 1000.0;

/// The limits of one key, as a user sets them.
///
/// A limit of `0` or `None` means "not limited". Build with the chained setters
/// and call [`Limits::validate`] to get a [`Policy`].
///
/// ```
/// use tollgate_core::Limits;
/// // AWS Bedrock: combined tokens with output counted five times.
/// let policy = Limits::new().requests(100).tokens(200_000).burndown(5.0).validate().unwrap();
/// assert_eq!(policy.limit(tollgate_core::Dimension::Tokens), Some(200_000));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Requests per window (RPM when the window is 60 s).
    pub requests: Option<u64>,
    /// Combined tokens per window (TPM).
    pub tokens: Option<u64>,
    /// Input tokens per window.
    pub input_tokens: Option<u64>,
    /// Output tokens per window.
    pub output_tokens: Option<u64>,
    /// Window length in seconds (default 60).
    pub window_secs: f64,
    /// Burst factor: the bucket holds `burst × limit` (default 1.0, at most
    /// [`MAX_BURST`]).
    pub burst: f64,
    /// Multiplier of output tokens in the combined dimension (default 1.0; AWS
    /// Bedrock 5.0). Needs a combined token limit (`tokens`) to act on.
    pub burndown: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests: None,
            tokens: None,
            input_tokens: None,
            output_tokens: None,
            window_secs: DEFAULT_WINDOW_SECS,
            burst: 1.0,
            burndown: 1.0,
        }
    }
}

impl Limits {
    /// No limits yet, a 60 s window, burst 1.0, burndown 1.0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests per window.
    pub fn requests(mut self, n: u64) -> Self {
        self.requests = Some(n);
        self
    }

    /// Combined tokens per window.
    pub fn tokens(mut self, n: u64) -> Self {
        self.tokens = Some(n);
        self
    }

    /// Input tokens per window.
    pub fn input_tokens(mut self, n: u64) -> Self {
        self.input_tokens = Some(n);
        self
    }

    /// Output tokens per window.
    pub fn output_tokens(mut self, n: u64) -> Self {
        self.output_tokens = Some(n);
        self
    }

    /// Alias of [`Limits::requests`]: requests per window (per minute by default).
    pub fn rpm(self, n: u64) -> Self {
        self.requests(n)
    }

    /// Alias of [`Limits::tokens`]: combined tokens per window.
    pub fn tpm(self, n: u64) -> Self {
        self.tokens(n)
    }

    /// Alias of [`Limits::input_tokens`].
    pub fn input_tpm(self, n: u64) -> Self {
        self.input_tokens(n)
    }

    /// Alias of [`Limits::output_tokens`].
    pub fn output_tpm(self, n: u64) -> Self {
        self.output_tokens(n)
    }

    /// Window length in seconds.
    pub fn window_secs(mut self, secs: f64) -> Self {
        self.window_secs = secs;
        self
    }

    /// Burst factor (bucket capacity = burst × limit), in (0, [`MAX_BURST`]].
    pub fn burst(mut self, burst: f64) -> Self {
        self.burst = burst;
        self
    }

    /// Output burndown multiplier for the combined token dimension; other than
    /// 1.0 it needs [`Limits::tokens`] (tpm) set.
    pub fn burndown(mut self, burndown: f64) -> Self {
        self.burndown = burndown;
        self
    }

    /// The limit of one dimension, `None` when it is not limited.
    #[inline]
    pub fn limit(&self, d: Dimension) -> Option<u64> {
        let v = match d {
            Dimension::Requests => self.requests,
            Dimension::Tokens => self.tokens,
            Dimension::InputTokens => self.input_tokens,
            Dimension::OutputTokens => self.output_tokens,
        };
        v.filter(|&n| n > 0)
    }

    /// The same limits scaled by `share` (each limit rounded up, at least 1):
    /// what one instance of several may use on its own during a store outage.
    pub fn scaled(&self, share: f64) -> Limits {
        let scale = |v: Option<u64>| {
            v.filter(|&n| n > 0)
                .map(|n| ((n as f64 * share).ceil() as u64).max(1))
        };
        Limits {
            requests: scale(self.requests),
            tokens: scale(self.tokens),
            input_tokens: scale(self.input_tokens),
            output_tokens: scale(self.output_tokens),
            ..self.clone()
        }
    }

    /// The limits in one line, e.g. `rpm=10 tpm=1000 window=60s burst=1
    /// burndown=1`: each limited dimension, then the window, burst and
    /// burndown. Two limits describe the same buckets exactly when their
    /// fingerprints are equal; stores keep it to spot limiters that disagree.
    ///
    /// ```
    /// use tollgate_core::Limits;
    /// let l = Limits::new().rpm(10).output_tpm(500);
    /// assert_eq!(l.fingerprint(), "rpm=10 output_tpm=500 window=60s burst=1 burndown=1");
    /// assert_eq!(l.fingerprint(), l.clone().tpm(0).fingerprint()); // 0 = not limited
    /// ```
    pub fn fingerprint(&self) -> String {
        let mut parts: Vec<String> = Dimension::ALL
            .iter()
            .filter_map(|&d| self.limit(d).map(|l| format!("{}={l}", d.short_name())))
            .collect();
        parts.push(format!("window={}s", self.window_secs));
        parts.push(format!("burst={}", self.burst));
        parts.push(format!("burndown={}", self.burndown));
        parts.join(" ")
    }

    /// Checks the limits and derives the per-dimension increments.
    pub fn validate(&self) -> Result<Policy, LimitsError> {
        if !(self.window_secs.is_finite() && self.window_secs > 0.0) {
            return Err(LimitsError::BadWindow(self.window_secs));
        }
        if !(self.burst.is_finite() && self.burst > 0.0 && self.burst <= MAX_BURST) {
            return Err(LimitsError::BadBurst(self.burst));
        }
        if !(self.burndown.is_finite() && self.burndown >= 0.0) {
            return Err(LimitsError::BadBurndown(self.burndown));
        }
        if self.burndown != 1.0 && self.limit(Dimension::Tokens).is_none() {
            return Err(LimitsError::BurndownWithoutTokens(self.burndown));
        }
        let mut increment = [0.0; DIMENSIONS];
        for d in Dimension::ALL {
            if let Some(l) = self.limit(d) {
                increment[d.index()] = self.window_secs / l as f64;
            }
        }
        if increment.iter().all(|&t| t == 0.0) {
            return Err(LimitsError::NoLimits);
        }
        Ok(Policy {
            limits: self.clone(),
            increment,
            tau: self.burst * self.window_secs,
            share: 1.0,
        })
    }
}

/// Validated limits in the form the arithmetic uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    limits: Limits,
    /// Seconds of TAT one unit costs, per dimension (`T = W / L`); 0 where unlimited.
    pub increment: Dims,
    /// The tolerance `τ = burst × window` in seconds: the TAT may lie at most
    /// this far ahead of a request's start.
    pub tau: f64,
    /// The part of the key's bucket this policy limits: 1.0, or a lane's
    /// share `a_k` (see [`Policy::lane`]).
    share: f64,
}

impl Policy {
    /// The limits this policy was built from.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The limit of one dimension, `None` when not limited.
    #[inline]
    pub fn limit(&self, d: Dimension) -> Option<u64> {
        self.limits.limit(d)
    }

    /// The part of the key's bucket this policy limits (1.0 unless it is a
    /// lane's, see [`Policy::lane`]).
    pub fn share(&self) -> f64 {
        self.share
    }

    /// The policy of a lane holding `share` (in (0, 1]) of this bucket: rate
    /// and capacity scaled by it (each unit costs `T / share` seconds), the
    /// tolerance `τ` unchanged. See [`Shares`](crate::Shares).
    ///
    /// ```
    /// use tollgate_core::{Dimension, Limits};
    /// let p = Limits::new().tpm(10_000).validate().unwrap();
    /// let lane = p.lane(0.25);
    /// assert_eq!(lane.capacity(Dimension::Tokens), 2_500.0);
    /// assert_eq!(lane.limit(Dimension::Tokens), Some(10_000)); // the key's limit
    /// ```
    pub fn lane(&self, share: f64) -> Policy {
        Policy {
            limits: self.limits.clone(),
            increment: self
                .increment
                .map(|t| if t > 0.0 { t / share } else { 0.0 }),
            tau: self.tau,
            share: self.share * share,
        }
    }

    /// Whether a dimension is limited.
    pub fn is_limited(&self, d: Dimension) -> bool {
        self.increment[d.index()] > 0.0
    }

    /// The most a dimension's bucket holds (`burst × limit`), in units.
    #[inline]
    pub fn capacity(&self, d: Dimension) -> f64 {
        self.limit(d)
            .map(|l| l as f64 * self.limits.burst * self.share)
            .unwrap_or(f64::INFINITY)
    }

    /// The error for a request that can never fit: the first limited
    /// dimension whose bucket cannot hold `cost`, if any.
    pub fn too_large(&self, cost: &Dims) -> Option<ReserveError> {
        Dimension::ALL
            .into_iter()
            .find(|&d| self.is_limited(d) && cost[d.index()] > self.capacity(d))
            .map(|d| self.too_large_in(d, cost[d.index()]))
    }

    /// The error for a request needing `needed` units of `d`, more than its
    /// bucket holds.
    pub(crate) fn too_large_in(&self, d: Dimension, needed: f64) -> ReserveError {
        ReserveError::TooLarge {
            dimension: d,
            needed,
            capacity: self.capacity(d),
            limit: self.limit(d).unwrap_or(0),
            burst: self.limits.burst,
        }
    }

    /// The cost of a request in units of each dimension, unchecked.
    ///
    /// `Cost::Tokens(n)` charges `n` to the combined and the input dimensions
    /// and nothing to the output one; `Cost::Split` charges
    /// `input + burndown × output` to the combined one. Callers that take costs
    /// from users want [`Policy::checked_units`], which refuses a
    /// `Cost::Tokens` an output limit would not see.
    pub fn units(&self, cost: Cost) -> Dims {
        let (combined, input, output) = match cost {
            Cost::Tokens(n) => (n as f64, n as f64, 0.0),
            Cost::Split { input, output } => (
                input as f64 + self.limits.burndown * output as f64,
                input as f64,
                output as f64,
            ),
        };
        [1.0, combined, input, output]
    }

    /// [`Policy::units`], refusing `Cost::Tokens(n)` (`n > 0`) when an output
    /// token limit is set: it would charge that limit nothing. The input limit
    /// needs no check, as `Cost::Tokens` charges it everything.
    ///
    /// ```
    /// use tollgate_core::{Cost, CostError, Limits};
    /// let policy = Limits::new().output_tpm(100).validate().unwrap();
    /// assert!(matches!(policy.checked_units(Cost::tokens(10_000)), Err(CostError::Unsplit { .. })));
    /// assert_eq!(policy.checked_units(Cost::split(0, 40)).unwrap()[3], 40.0);
    /// assert!(policy.checked_units(Cost::request_only()).is_ok());
    /// ```
    pub fn checked_units(&self, cost: Cost) -> Result<Dims, CostError> {
        let output = Dimension::OutputTokens;
        match (cost, self.limit(output)) {
            (Cost::Tokens(tokens), Some(limit)) if tokens > 0 => Err(CostError::Unsplit {
                tokens,
                dimension: output,
                limit,
            }),
            _ => Ok(self.units(cost)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_fields_by_name() {
        assert_eq!(Limits::new().validate(), Err(LimitsError::NoLimits));
        assert_eq!(
            Limits::new().requests(0).tokens(0).validate(),
            Err(LimitsError::NoLimits)
        );
        assert!(matches!(
            Limits::new().tokens(1).window_secs(0.0).validate(),
            Err(LimitsError::BadWindow(_))
        ));
        assert!(matches!(
            Limits::new().tokens(1).burst(f64::NAN).validate(),
            Err(LimitsError::BadBurst(_))
        ));
        assert!(matches!(
            Limits::new().tokens(1).burst(-1.0).validate(),
            Err(LimitsError::BadBurst(_))
        ));
        assert!(matches!(
            Limits::new().tokens(1).burndown(-0.5).validate(),
            Err(LimitsError::BadBurndown(_))
        ));
        let msg = Limits::new()
            .tokens(1)
            .burst(-1.0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("burst") && msg.contains("-1"), "{msg}");
    }

    #[test]
    fn absurd_bursts_are_refused_with_the_bound() {
        for burst in [1e12, MAX_BURST * 1.01, f64::INFINITY] {
            let err = Limits::new().rpm(10).burst(burst).validate().unwrap_err();
            assert_eq!(err, LimitsError::BadBurst(burst));
            assert!(err.to_string().contains("at most 1000"), "{err}");
        }
        assert!(Limits::new().rpm(10).burst(MAX_BURST).validate().is_ok());
    }

    #[test]
    fn burndown_without_a_tokens_limit_is_refused() {
        let err = Limits::new()
            .rpm(10)
            .output_tpm(100)
            .burndown(5.0)
            .validate()
            .unwrap_err();
        assert_eq!(err, LimitsError::BurndownWithoutTokens(5.0));
        assert!(err.to_string().contains("set tpm"), "{err}");
        // The default burndown needs nothing; with tpm any burndown is fine.
        assert!(Limits::new().rpm(10).validate().is_ok());
        assert!(Limits::new().tpm(10).burndown(5.0).validate().is_ok());
    }

    #[test]
    fn combined_tokens_are_refused_where_an_output_limit_would_miss_them() {
        let p = Limits::new().tpm(1000).output_tpm(100).validate().unwrap();
        let err = p.checked_units(Cost::tokens(10_000)).unwrap_err();
        assert_eq!(
            err,
            CostError::Unsplit {
                tokens: 10_000,
                dimension: Dimension::OutputTokens,
                limit: 100
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("Cost::split(input, output)") && msg.contains("output_tpm=100"),
            "{msg}"
        );
        assert_eq!(
            p.checked_units(Cost::split(5, 7)),
            Ok(p.units(Cost::split(5, 7)))
        );
        assert_eq!(
            p.checked_units(Cost::request_only()),
            Ok([1.0, 0.0, 0.0, 0.0])
        );
        // Input limits are charged the whole count: nothing slips past them.
        let input = Limits::new().input_tpm(100).validate().unwrap();
        assert_eq!(
            input.checked_units(Cost::tokens(70)),
            Ok([1.0, 70.0, 70.0, 0.0])
        );
    }

    #[test]
    fn fingerprints_tell_limits_apart() {
        let a = Limits::new().rpm(10).tpm(1000);
        assert_eq!(
            a.fingerprint(),
            "rpm=10 tpm=1000 window=60s burst=1 burndown=1"
        );
        for other in [
            a.clone().rpm(11),
            a.clone().input_tpm(5),
            a.clone().window_secs(30.0),
            a.clone().burst(1.5),
            a.clone().burndown(5.0),
        ] {
            assert_ne!(a.fingerprint(), other.fingerprint(), "{other:?}");
        }
        assert_eq!(a.fingerprint(), a.clone().output_tpm(0).fingerprint());
    }

    #[test]
    fn burndown_weights_output_in_combined_only() {
        let p = Limits::new().tokens(1000).burndown(5.0).validate().unwrap();
        assert_eq!(p.units(Cost::split(100, 10)), [1.0, 150.0, 100.0, 10.0]);
        assert_eq!(p.units(Cost::tokens(70)), [1.0, 70.0, 70.0, 0.0]);
        assert_eq!(p.increment, [0.0, 0.06, 0.0, 0.0]);
        assert_eq!(p.tau, 60.0);
    }
}
