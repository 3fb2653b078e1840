//! Reservations in several limiters' buckets in one atomic step, all or
//! nothing, with a check of the caller's between them (a [`Gate`]): one
//! store call where there were several, for a caller that must hold all of
//! them or none (the gateway's client bucket, spend budget and provider
//! bucket).

use tollgate_core::{Cost, ReserveError};

use super::{AcquireOptions, Permit, RateLimiter};
use crate::store::together::Together;
use crate::store::{Gate, Store, StoreError};
use crate::{Error, Source};

/// One bucket's reservation in [`RateLimiter::reserve_together`].
#[derive(Debug, Clone, Copy)]
pub struct JointPart<'a> {
    /// The bucket.
    pub limiter: &'a RateLimiter,
    /// What the call costs.
    pub cost: Cost,
    /// Its class and longest wait, as for [`RateLimiter::reserve`].
    pub options: &'a AcquireOptions,
}

/// What [`RateLimiter::reserve_together`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Joint {
    /// Every part was granted: their permits in the parts' order (only the
    /// last may have to wait for its slot), and the Lua gate's reply.
    Granted {
        /// One per part.
        permits: Vec<Permit>,
        /// What the gate's `gate` returned (a Lua gate only).
        gate: Option<redis::Value>,
    },
    /// Part `part` refused (the error [`RateLimiter::reserve`] would have
    /// given); nothing is reserved, the gate's reservation neither.
    Refused {
        /// Its index.
        part: usize,
        /// Why.
        error: Error,
    },
    /// The gate refused; nothing is reserved.
    GateRefused {
        /// What the gate's `gate` returned (a Lua gate only).
        gate: Option<redis::Value>,
    },
    /// Not done in one step, and nothing reserved: reserve one bucket at a
    /// time. So it is when the buckets are on different stores or a Redis
    /// Cluster, a limiter shares its bucket between classes by floor and
    /// weight or is in an outage, a part before the last would have to wait
    /// (or could never fit), or the gate is of the other store's kind.
    Apart,
}

impl RateLimiter {
    /// Reserves every part in its bucket in one atomic step (one script
    /// call on a standalone Redis), all or nothing: the parts are asked in
    /// order, and the first that refuses leaves nothing reserved. `gate`,
    /// when given, is checked before part `gate.0` in the same step (a
    /// refusal of a later part undoes it). Every part but the last must be
    /// granted at once: one that would wait makes this [`Joint::Apart`].
    ///
    /// A part granted here is a permit like one of [`RateLimiter::reserve`]
    /// (settle or cancel it on its limiter). A store failure is answered as
    /// such, without retries or outage policy: the caller may then reserve
    /// one at a time, which applies them.
    pub async fn reserve_together(
        parts: &[JointPart<'_>],
        gate: Option<(usize, Gate<'_>)>,
    ) -> Result<Joint, StoreError> {
        let Some(first) = parts.first() else {
            return Ok(Joint::Apart);
        };
        let store = &first.limiter.inner().store;
        let apart = |p: &JointPart<'_>| {
            let inner = p.limiter.inner();
            inner.lanes.is_some() || inner.stats.in_outage() || !inner.store.same_as(store)
        };
        if parts.iter().any(apart) || gate.as_ref().is_some_and(|(at, _)| *at >= parts.len()) {
            return Ok(Joint::Apart);
        }
        let mut calls = Vec::with_capacity(parts.len());
        let mut waits = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let Ok(mut call) = p.limiter.reserve_call(p.cost, p.options, None) else {
                return Ok(Joint::Apart);
            };
            waits.push(call.max_wait);
            if i + 1 < parts.len() {
                call.max_wait = Some(0.0);
            }
            calls.push(call);
        }
        let outcome = match (store, gate) {
            (Store::Redis(r), None) => r.reserve_together(&calls, None).await,
            (Store::Redis(r), Some((at, Gate::Lua { script, keys, args }))) => {
                r.reserve_together(&calls, Some((at, script, &keys, &args)))
                    .await
            }
            (Store::Memory(m), None) => Some(Ok(m.reserve_together_now(&calls, None))),
            (Store::Memory(m), Some((at, Gate::Local { check, undo }))) => {
                Some(Ok(m.reserve_together_now(&calls, Some((at, check, undo)))))
            }
            _ => None,
        };
        let Some(outcome) = outcome else {
            return Ok(Joint::Apart);
        };
        Ok(match outcome? {
            Together::Granted(reserved, gate) => Joint::Granted {
                permits: parts
                    .iter()
                    .zip(reserved)
                    .map(|(p, r)| p.limiter.granted(r, p.options.class, Source::Store, None))
                    .collect(),
                gate,
            },
            Together::Refused(i, e) => {
                let e = match e {
                    // Asked not to wait: within its own longest wait it
                    // would have queued (or found its queue full).
                    ReserveError::WouldWait { retry_after, .. } if i + 1 < parts.len() => {
                        match waits[i] {
                            Some(max_wait) if retry_after > max_wait => ReserveError::WouldWait {
                                retry_after,
                                max_wait,
                            },
                            _ => return Ok(Joint::Apart),
                        }
                    }
                    ReserveError::TooLarge { .. } => return Ok(Joint::Apart),
                    e => e,
                };
                Joint::Refused {
                    part: i,
                    error: parts[i].limiter.refused(e),
                }
            }
            Together::Gated(gate) => Joint::GateRefused { gate },
        })
    }
}
