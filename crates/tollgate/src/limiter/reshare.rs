//! Changing the classes' shares of a bucket on a live limiter: the new
//! lanes, and the one change of each lane's line in the store that keeps
//! the lanes together within the bucket (`tollgate_core::reshare`).

use std::sync::Arc;

use tollgate_core::{reshare_extra, ClassShare, Shares, DIMENSIONS};

use crate::store::{Backend, ReshareCall};
use crate::{Error, RateLimiter};

use super::lanes::Lanes;
use super::rate_limiter::RetryFailure;

/// A change of shares the store has yet to be told of: each lane's share
/// before it. The first operation on the new lanes tells the store, once
/// per process (the store makes it once in all).
#[derive(Debug)]
pub(crate) struct Pending {
    from: Vec<f64>,
    done: tokio::sync::OnceCell<()>,
}

impl RateLimiter {
    /// Changes the floors, weights and lendable parts of the classes that
    /// share this limiter's bucket ([`Builder::class_shares`](crate::Builder::class_shares)),
    /// one [`ClassShare`] per class as there: the calls reserved from now on
    /// use the new lanes. Every limiter of the key should be given the same
    /// shares (an application changing them live tells each of its
    /// processes).
    ///
    /// The lanes together never start more than the bucket holds across a
    /// change: before the first call on the new lanes, each lane's state in
    /// the store is moved (`tollgate_core::reshare`), once however many
    /// limiters make the same change, so that the lanes' rooms together
    /// (what they may start at once) stay what the bucket has free. A lane
    /// that shrinks keeps the part of its capacity it had in use; the room
    /// it gives up goes to the lanes that grow, which keep the room they
    /// had and get the rest of their new capacity as their lines drain at
    /// their new rates. What a shrinking lane's queue still starts at its
    /// old pace is charged to the lanes that grow, ahead. So a class whose
    /// lane grew gets its new share within one tolerance (`burst × window`)
    /// of the change, or once the queue of a lane that shrank has gone.
    ///
    /// Refused, and nothing changed, for a limiter built without
    /// `class_shares`, for another number of shares than of classes, and
    /// for shares [`Shares::new`] refuses.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::Error> {
    /// use tollgate::{ClassShare, Limits, PriorityClass, RateLimiter};
    ///
    /// let class = PriorityClass { headroom: 1.0, max_wait: None };
    /// let limiter = RateLimiter::builder("doc/reshare")
    ///     .limits(Limits::new().tpm(100_000))
    ///     .priority_classes(vec![class.clone(), class])
    ///     .class_shares(vec![ClassShare::new(0.5, 1.0), ClassShare::new(0.0, 1.0)])
    ///     .build()
    ///     .await?;
    /// limiter.set_class_shares(vec![ClassShare::new(0.2, 1.0), ClassShare::new(0.0, 3.0)])?;
    /// let status = limiter.status().await?;
    /// assert!((status.classes[1].share - 0.6).abs() < 1e-9);
    /// # Ok(()) }
    /// ```
    pub fn set_class_shares(&self, shares: Vec<ClassShare>) -> Result<(), Error> {
        let inner = self.inner();
        let Some(live) = &inner.lanes else {
            return Err(Error::Config {
                field: "class_shares",
                value: format!("{} shares", shares.len()),
                reason: "a limiter built with Builder::class_shares (its classes share the bucket)",
            });
        };
        let mut now = live.0.write();
        if shares.len() != now.lanes.len() {
            return Err(Error::Config {
                field: "class_shares",
                value: format!("{} shares for {} classes", shares.len(), now.lanes.len()),
                reason: "one share per priority class, in the same order",
            });
        }
        let shares = Shares::new(shares).map_err(|source| Error::Shares {
            key: inner.key.to_string(),
            source,
        })?;
        // The store's lanes are in the shares of the last change it was
        // told of.
        let from = match &now.pending {
            Some(p) if p.done.get().is_none() => p.from.clone(),
            _ => (0..now.lanes.len()).map(|k| now.shares.share(k)).collect(),
        };
        let mut lanes = Lanes::new(&inner.key, &inner.policy, shares);
        if (0..from.len()).any(|k| lanes.shares.share(k) != from[k]) {
            lanes.pending = Some(Pending {
                from,
                done: tokio::sync::OnceCell::new(),
            });
        }
        *now = Arc::new(lanes);
        Ok(())
    }

    /// Tells the store of the change of shares that made `lanes`, if it
    /// has not been yet: the lanes that shrink first (so that at no moment
    /// do the lanes' rates add up to more than the bucket's), then those
    /// that grow, each charged its part of what the others owe (what their
    /// queues start too fast, less the room they gave up).
    pub(super) async fn reshare_lanes(&self, lanes: &Lanes) -> Result<(), RetryFailure> {
        let Some(pending) = &lanes.pending else {
            return Ok(());
        };
        let inner = self.inner();
        let from = &pending.from;
        let to: Vec<f64> = (0..lanes.lanes.len())
            .map(|k| lanes.shares.share(k))
            .collect();
        let shrinking = (0..to.len()).filter(|&k| to[k] < from[k]);
        let growing = (0..to.len()).filter(|&k| to[k] > from[k]);
        let tell = || async {
            let mut owed = [0.0; DIMENSIONS];
            for k in shrinking {
                let call = ReshareCall::new(
                    &lanes.lanes[k].key,
                    &inner.policy,
                    from[k],
                    to[k],
                    [0.0; DIMENSIONS],
                );
                let r = self.with_retry(|| inner.store.reshare(&call)).await?;
                for (o, r) in owed.iter_mut().zip(r.owed) {
                    *o += r;
                }
            }
            let extra = reshare_extra(from, &to, &owed);
            for k in growing {
                let call =
                    ReshareCall::new(&lanes.lanes[k].key, &inner.policy, from[k], to[k], extra[k]);
                self.with_retry(|| inner.store.reshare(&call)).await?;
            }
            Ok(())
        };
        pending.done.get_or_try_init(tell).await.map(|_| ())
    }
}
