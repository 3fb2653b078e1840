//! Failure modes of the simulated upstream, per model and at a given rate,
//! drawn from a seed so that a test knows exactly which request fails.
//!
//! The `n`-th request (from 0) for a model draws `u = draw(seed, model, n)`
//! in `[0, 1)`; the model's rules are tried in order and the first whose
//! cumulative rate exceeds `u` applies. With the same seed, the same
//! requests fail, whatever else runs beside them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use parking_lot::Mutex;

/// One way the upstream fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answers this 5xx status with an OpenAI-shaped error body.
    ServerError {
        /// The status, 500 to 599.
        status: u16,
    },
    /// Answers 429 with `retry-after` in seconds, as a provider over its
    /// own limits does.
    RateLimited {
        /// What `retry-after` says.
        retry_after_secs: u64,
    },
    /// Takes the request and never answers (until the simulator stops).
    Hang,
    /// Answers normally, this much later.
    Slow {
        /// The added delay before the answer's first byte, in milliseconds.
        delay_ms: u64,
    },
    /// Starts the answer and closes the connection after this many
    /// events (streamed) or after half the body (not streamed).
    CloseMidStream {
        /// Events sent before the connection closes.
        after_events: u32,
    },
}

/// A failure mode and how often it happens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultRule {
    /// What happens.
    pub fault: Fault,
    /// The share of the model's requests it happens to, in `[0, 1]`.
    pub rate: f64,
}

/// Why a fault spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault {spec:?}: {reason} (write MODE@RATE with MODE one of 500..599, 429[:SECS], hang, slow:MS, close:EVENTS and RATE in [0, 1], e.g. 503@0.1)")]
pub struct FaultSpecError {
    spec: String,
    reason: String,
}

impl FromStr for FaultRule {
    type Err = FaultSpecError;

    /// `MODE@RATE` (`@RATE` left out: always): `503@0.1`, `429:2@0.05`,
    /// `hang@0.01`, `slow:3000@0.2`, `close:3@0.1`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let refuse = |reason: &str| FaultSpecError {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (mode, rate) = match spec.split_once('@') {
            Some((m, r)) => (
                m,
                r.trim()
                    .parse::<f64>()
                    .map_err(|_| refuse("the rate is not a number"))?,
            ),
            None => (spec, 1.0),
        };
        if !(0.0..=1.0).contains(&rate) {
            return Err(refuse("the rate is outside [0, 1]"));
        }
        let (name, arg) = match mode.trim().split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (mode.trim(), None),
        };
        let number = |default: Option<u64>| -> Result<u64, FaultSpecError> {
            match (arg, default) {
                (Some(a), _) => a
                    .trim()
                    .parse()
                    .map_err(|_| refuse("the mode's argument is not a whole number")),
                (None, Some(d)) => Ok(d),
                (None, None) => Err(refuse("the mode needs an argument")),
            }
        };
        let fault = match name {
            "429" => Fault::RateLimited {
                retry_after_secs: number(Some(1))?,
            },
            "hang" if arg.is_none() => Fault::Hang,
            "slow" => Fault::Slow {
                delay_ms: number(None)?,
            },
            "close" => Fault::CloseMidStream {
                after_events: u32::try_from(number(Some(1))?)
                    .map_err(|_| refuse("too many events"))?,
            },
            status if arg.is_none() => match status.parse::<u16>() {
                Ok(s @ 500..=599) => Fault::ServerError { status: s },
                _ => return Err(refuse("unknown mode")),
            },
            _ => return Err(refuse("unknown mode")),
        };
        Ok(FaultRule { fault, rate })
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fault {
            Fault::ServerError { status } => write!(f, "{status}")?,
            Fault::RateLimited { retry_after_secs } => write!(f, "429:{retry_after_secs}")?,
            Fault::Hang => write!(f, "hang")?,
            Fault::Slow { delay_ms } => write!(f, "slow:{delay_ms}")?,
            Fault::CloseMidStream { after_events } => write!(f, "close:{after_events}")?,
        }
        write!(f, "@{}", self.rate)
    }
}

/// The failure modes of every model, drawn from one seed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Feeds every draw; the same seed fails the same requests.
    pub seed: u64,
    /// Rules by the model name the upstream receives, tried in order.
    pub by_model: BTreeMap<String, Vec<FaultRule>>,
}

/// Why a set of faults was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    /// A spec did not parse.
    #[error(transparent)]
    Spec(#[from] FaultSpecError),
    /// `MODEL=SPEC` without the model.
    #[error("fault {0:?}: write MODEL=MODE@RATE, e.g. gpt-4o=503@0.1")]
    NoModel(String),
    /// The rates of one model add up past 1.
    #[error("the fault rates of {model} add up to {sum}, more than 1")]
    OverOne {
        /// The model.
        model: String,
        /// The sum.
        sum: f64,
    },
}

impl Faults {
    /// Adds `MODEL=MODE@RATE` (as `--fault` takes it), checking that the
    /// model's rates still add up to at most 1.
    pub fn add(&mut self, model_spec: &str) -> Result<(), FaultsError> {
        let (model, spec) = model_spec
            .split_once('=')
            .filter(|(m, _)| !m.trim().is_empty())
            .ok_or_else(|| FaultsError::NoModel(model_spec.to_string()))?;
        let rule: FaultRule = spec.parse()?;
        let rules = self.by_model.entry(model.trim().to_string()).or_default();
        let sum: f64 = rules.iter().map(|r| r.rate).sum::<f64>() + rule.rate;
        if sum > 1.0 + 1e-9 {
            return Err(FaultsError::OverOne {
                model: model.trim().to_string(),
                sum,
            });
        }
        rules.push(rule);
        Ok(())
    }

    /// What the `n`-th request (from 0) for `model` meets, if anything.
    pub fn pick(&self, model: &str, n: u64) -> Option<Fault> {
        let rules = self.by_model.get(model)?;
        let u = draw(self.seed, model, n);
        let mut edge = 0.0;
        for r in rules {
            edge += r.rate;
            if u < edge {
                return Some(r.fault);
            }
        }
        None
    }
}

/// A number in `[0, 1)` from (seed, model, n): FNV-1a of the model, mixed
/// with the seed and `n` by SplitMix64.
pub fn draw(seed: u64, model: &str, n: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in model.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ h ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// How many requests each model has had, so each draws its own `n`.
#[derive(Debug, Default)]
pub(super) struct Counters(Mutex<BTreeMap<String, u64>>);

impl Counters {
    /// The next request number for `model` (0 for its first).
    pub(super) fn next(&self, model: &str) -> u64 {
        let mut m = self.0.lock();
        let c = m.entry(model.to_string()).or_default();
        let n = *c;
        *c += 1;
        n
    }

    /// Requests seen for `model`.
    pub(super) fn get(&self, model: &str) -> u64 {
        self.0.lock().get(model).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_into_their_faults_and_print_back() {
        for (spec, fault, rate) in [
            ("503@0.1", Fault::ServerError { status: 503 }, 0.1),
            ("500", Fault::ServerError { status: 500 }, 1.0),
            (
                "429@0.5",
                Fault::RateLimited {
                    retry_after_secs: 1,
                },
                0.5,
            ),
            (
                "429:7@1",
                Fault::RateLimited {
                    retry_after_secs: 7,
                },
                1.0,
            ),
            ("hang@0.01", Fault::Hang, 0.01),
            ("slow:2500@0.2", Fault::Slow { delay_ms: 2500 }, 0.2),
            (
                "close:3@0.25",
                Fault::CloseMidStream { after_events: 3 },
                0.25,
            ),
        ] {
            let r: FaultRule = spec.parse().unwrap();
            assert_eq!(r, FaultRule { fault, rate }, "{spec}");
            assert_eq!(r.to_string().parse::<FaultRule>().unwrap(), r);
        }
    }

    #[test]
    fn bad_specs_are_refused_saying_what_to_write() {
        for spec in [
            "404", "503@1.5", "503@x", "slow", "hang:3", "teapot", "close:-1",
        ] {
            let e = spec.parse::<FaultRule>().unwrap_err().to_string();
            assert!(e.contains("MODE@RATE"), "{spec}: {e}");
        }
        let mut f = Faults::default();
        assert!(matches!(f.add("503@0.1"), Err(FaultsError::NoModel(_))));
        f.add("m=503@0.6").unwrap();
        assert!(matches!(
            f.add("m=429@0.5"),
            Err(FaultsError::OverOne { .. })
        ));
        assert_eq!(f.by_model["m"].len(), 1, "a refused rule is not kept");
    }

    #[test]
    fn rates_hold_over_many_draws_and_a_seed_repeats_them() {
        let mut f = Faults {
            seed: 42,
            ..Faults::default()
        };
        f.add("m=503@0.2").unwrap();
        f.add("m=429@0.1").unwrap();
        let picks: Vec<_> = (0..10_000).map(|n| f.pick("m", n)).collect();
        let count = |x: Fault| picks.iter().filter(|p| **p == Some(x)).count();
        let e5 = count(Fault::ServerError { status: 503 });
        let e4 = count(Fault::RateLimited {
            retry_after_secs: 1,
        });
        assert!((1_800..2_200).contains(&e5), "503s: {e5}");
        assert!((850..1_150).contains(&e4), "429s: {e4}");
        let again: Vec<_> = (0..10_000).map(|n| f.pick("m", n)).collect();
        assert_eq!(picks, again);
        let other = Faults {
            seed: 43,
            ..f.clone()
        };
        assert_ne!(
            picks,
            (0..10_000).map(|n| other.pick("m", n)).collect::<Vec<_>>()
        );
        assert_eq!(f.pick("another", 0), None);
    }

    #[test]
    fn rate_one_always_fails_and_rate_zero_never() {
        let mut f = Faults::default();
        f.add("a=hang@1").unwrap();
        f.add("b=hang@0").unwrap();
        assert!((0..1000).all(|n| f.pick("a", n) == Some(Fault::Hang)));
        assert!((0..1000).all(|n| f.pick("b", n).is_none()));
    }
}
