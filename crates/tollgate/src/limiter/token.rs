//! A permit written as a short string, so that another task or process can
//! settle it (`Permit::into_token`, `RateLimiter::settle_token`).
//!
//! The form is `tg1:<key hash>:<id>:<class>:<source>:<slot>:<reserved at>`
//! (source `s`, `s<lane>` for a reservation in a lane of a shared bucket,
//! `l` or `o`)
//! followed by `:<dimension>,<cost>,<end>,<refunded at>,<gap>` for each
//! dimension the reservation charged. Numbers are written in Rust's shortest
//! form that reads back to the same `f64`, so a token settles exactly as the
//! permit would have.

use std::sync::Arc;
use std::time::Duration;

use tollgate_core::{Mark, DIMENSIONS};

use super::Permit;
use crate::Source;

const VERSION: &str = "tg1";

/// How long after its reservation a token may still be settled. The store
/// remembers a settled token this long, so that it is applied at most once.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Why a string is not a token of this limiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The string is not a tollgate permit token.
    #[error("not a permit token ({0}); pass the string Permit::into_token returned")]
    Malformed(&'static str),
    /// The token was taken on another key.
    #[error("the token was taken on another key than {limiter:?}; settle it on the limiter that granted it")]
    OtherKey {
        /// The key of the limiter asked to settle it.
        limiter: String,
    },
    /// The token was settled (or cancelled) already.
    #[error("permit token {id} of {key:?} was settled already; a permit is settled at most once")]
    AlreadySettled {
        /// The limiter's key.
        key: String,
        /// The reservation's id.
        id: u64,
    },
    /// The token is older than [`TOKEN_LIFETIME`].
    #[error("permit token {id} of {key:?} expired: tokens are settled within {} s of their reservation", TOKEN_LIFETIME.as_secs())]
    Expired {
        /// The limiter's key.
        key: String,
        /// The reservation's id.
        id: u64,
    },
}

/// A 64-bit FNV-1a hash of the key: enough to tell a token of another key.
pub(crate) fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn encode(p: &Permit) -> String {
    let source = match (p.source, p.lane) {
        (Source::Store, Some(lane)) => format!("s{lane}"),
        (Source::Store, None) => "s".into(),
        (Source::Local, _) => "l".into(),
        (Source::Open, _) => "o".into(),
    };
    let mut out = format!(
        "{VERSION}:{:x}:{}:{}:{source}:{}:{}",
        key_hash(&p.key),
        p.id,
        p.class,
        p.slot,
        p.reserved_at
    );
    let m = &p.mark;
    for i in (0..DIMENSIONS).filter(|&i| m.cost[i] != 0.0) {
        out.push_str(&format!(
            ":{i},{},{},{},{}",
            m.cost[i], m.end[i], m.refunded_at[i], m.gap[i]
        ));
    }
    out
}

/// Reads a token back into the permit it was made from (with `waited` and
/// `queue_position` zero: settlement does not need them).
pub(crate) fn decode(token: &str, key: &Arc<str>) -> Result<Permit, TokenError> {
    let mut parts = token.split(':');
    if parts.next() != Some(VERSION) {
        return Err(TokenError::Malformed("it does not start with tg1:"));
    }
    let mut field = |what: &'static str| parts.next().ok_or(TokenError::Malformed(what));
    let hash = u64::from_str_radix(field("no key hash")?, 16)
        .map_err(|_| TokenError::Malformed("bad key hash"))?;
    let id = number(field("no id")?)?;
    let class = number(field("no class")?)?;
    let (source, lane) = match field("no source")? {
        "s" => (Source::Store, None),
        "l" => (Source::Local, None),
        "o" => (Source::Open, None),
        s => match s.strip_prefix('s').map(str::parse::<u8>) {
            Some(Ok(lane)) => (Source::Store, Some(lane)),
            _ => return Err(TokenError::Malformed("bad source")),
        },
    };
    let slot = number(field("no slot")?)?;
    let reserved_at = number(field("no reservation time")?)?;
    let mut mark = Mark::default();
    for dim in parts {
        let v: Vec<&str> = dim.split(',').collect();
        let [i, cost, end, refunded_at, gap] = v[..] else {
            return Err(TokenError::Malformed("bad dimension"));
        };
        let i: usize = number(i)?;
        if i >= DIMENSIONS {
            return Err(TokenError::Malformed("bad dimension"));
        }
        mark.cost[i] = number(cost)?;
        mark.end[i] = number(end)?;
        mark.refunded_at[i] = number(refunded_at)?;
        mark.gap[i] = number(gap)?;
    }
    if hash != key_hash(key) {
        return Err(TokenError::OtherKey {
            limiter: key.to_string(),
        });
    }
    Ok(Permit {
        key: key.clone(),
        id,
        slot,
        waited: Duration::ZERO,
        queue_position: 0,
        source,
        class,
        lane,
        mark,
        reserved_at,
    })
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, TokenError> {
    s.parse().map_err(|_| TokenError::Malformed("bad number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(key: &str) -> Permit {
        Permit {
            key: key.into(),
            id: 1_764_582_000_123_457,
            slot: 1_764_582_000.25,
            waited: Duration::from_millis(250),
            queue_position: 3,
            source: Source::Store,
            class: 2,
            lane: None,
            mark: Mark {
                cost: [1.0, 1234.0, 0.0, 0.0],
                end: [1_764_582_000.4, 1_764_582_007.404, 0.0, 0.0],
                refunded_at: [0.0, 0.1 + 0.2, 0.0, 0.0],
                gap: [0.0, 1e-7, 0.0, 0.0],
                before: [0.0; DIMENSIONS],
                class_refunds_at: [0.0; DIMENSIONS],
            },
            reserved_at: 1_764_582_000.0,
        }
    }

    #[test]
    fn a_token_reads_back_bit_for_bit() {
        let p = permit("openai/gpt-4o");
        let token = encode(&p);
        assert!(token.len() < 200, "{token}");
        let back = decode(&token, &Arc::from("openai/gpt-4o")).unwrap();
        assert_eq!(back.id, p.id);
        assert_eq!(back.class, 2);
        assert_eq!(back.slot.to_bits(), p.slot.to_bits());
        assert_eq!(back.reserved_at.to_bits(), p.reserved_at.to_bits());
        for i in 0..DIMENSIONS {
            assert_eq!(back.mark.cost[i].to_bits(), p.mark.cost[i].to_bits());
            assert_eq!(back.mark.end[i].to_bits(), p.mark.end[i].to_bits());
            assert_eq!(
                back.mark.refunded_at[i].to_bits(),
                p.mark.refunded_at[i].to_bits()
            );
            assert_eq!(back.mark.gap[i].to_bits(), p.mark.gap[i].to_bits());
        }
    }

    #[test]
    fn a_token_of_another_key_or_garbage_is_refused() {
        let token = encode(&permit("a"));
        assert!(matches!(
            decode(&token, &Arc::from("b")),
            Err(TokenError::OtherKey { .. })
        ));
        for bad in [
            "",
            "tg2:1",
            "tg1:zz",
            "tg1:1:2",
            &token.replace(":s:", ":x:"),
        ] {
            assert!(
                matches!(decode(bad, &Arc::from("a")), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
