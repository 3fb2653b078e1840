//! Classes sharing one bucket (see "Sharing one provider model between
//! tiers" in the design): one lane per class, a key of its own in the store
//! holding the class's share of the bucket, and borrowing at once.
//!
//! A class queues only in its own lane, FIFO. A call whose lane cannot take
//! it now, and that has nothing of its class queued ahead of it, tries the
//! other lanes with `max_wait` zero and the lender's lendable part as its
//! headroom (scaled by its priority class's headroom, so that higher classes
//! borrow first): a lane takes it only if it has room now, and never behind
//! its owner's queue (a lane whose owner waits has no room). What it took
//! in its own lane meanwhile is cancelled. With three classes or more,
//! several may want the same room: a class borrows only in its turn, by
//! weight (`tollgate_core::may_borrow`, asked of the store's pool of the
//! key's borrowers), so that what an idle class leaves is shared by weight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;
use tollgate_core::{Dims, Policy, ReserveError, Shares, DIMENSIONS};

use crate::error::secs;
use crate::outage::Stats;
use crate::store::{Backend, LendCall, LendOp, ReserveCall, SettleCall};
use crate::{Error, RateLimiter, Source, MAX_ADVANCE_CHECK};

use super::rate_limiter::RetryFailure;
use super::Permit;

/// One class's lane: its key in the store and its part of the bucket.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) key: Arc<str>,
    pub(crate) policy: Policy,
}

/// A lane found without room for a cost, until when this process does not
/// ask it again for as much.
#[derive(Debug, Clone, Copy)]
struct Full {
    until: Instant,
    cost: Dims,
}

/// The lanes of a limiter whose classes share its bucket.
#[derive(Debug)]
pub(crate) struct Lanes {
    pub(crate) shares: Shares,
    pub(crate) lanes: Vec<Lane>,
    /// A change of shares the store has yet to be told of (see
    /// `super::reshare`).
    pub(super) pending: Option<super::reshare::Pending>,
    full: Mutex<Vec<Option<Full>>>,
    /// Where the next search for a lender starts, so that borrowers do not
    /// all ask the same lane first.
    next: AtomicUsize,
}

/// The lanes in force, replaced whole when the classes' shares change
/// ([`RateLimiter::set_class_shares`]). Each operation takes the lanes of
/// the moment once and works on them throughout.
#[derive(Debug)]
pub(crate) struct LiveLanes(pub(super) RwLock<Arc<Lanes>>);

impl LiveLanes {
    pub(crate) fn new(lanes: Lanes) -> Self {
        LiveLanes(RwLock::new(Arc::new(lanes)))
    }

    /// The lanes in force now.
    pub(crate) fn current(&self) -> Arc<Lanes> {
        self.0.read().clone()
    }
}

/// The store key of class `class`'s lane of `key`.
pub(crate) fn lane_key(key: &str, class: usize) -> String {
    format!("{key}#lane{class}")
}

impl Lanes {
    pub(crate) fn new(key: &str, policy: &Policy, shares: Shares) -> Self {
        let lanes = (0..shares.len())
            .map(|k| Lane {
                key: lane_key(key, k).into(),
                policy: shares.lane(policy, k),
            })
            .collect();
        Lanes {
            pending: None,
            full: Mutex::new(vec![None; shares.len()]),
            shares,
            lanes,
            next: AtomicUsize::new(0),
        }
    }

    /// The lanes class `class` may borrow from, in the order to ask them.
    fn lenders(&self, class: usize) -> impl Iterator<Item = usize> + '_ {
        let n = self.lanes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(move |i| (start + i) % n)
            .filter(move |&j| j != class && self.shares.class(j).lendable > 0.0)
    }

    /// Whether lane `lane` was found too full for `cost` (or less) a moment
    /// ago.
    fn known_full(&self, lane: usize, cost: &Dims) -> bool {
        self.full.lock()[lane].is_some_and(|f| {
            Instant::now() < f.until && cost.iter().zip(f.cost).all(|(c, f)| *c >= f)
        })
    }

    /// Lane `lane` has no room for `cost` for `retry_after` seconds; not
    /// asked again for as much within that (at most `MAX_ADVANCE_CHECK`: a
    /// refund elsewhere may make room sooner).
    fn found_full(&self, lane: usize, cost: &Dims, retry_after: f64) {
        let until = Instant::now() + secs(retry_after).min(MAX_ADVANCE_CHECK);
        self.full.lock()[lane] = Some(Full { until, cost: *cost });
    }
}

impl RateLimiter {
    /// Each class's lane share of the bucket now, in class order (empty
    /// for a limiter whose classes do not share it).
    pub fn lane_shares(&self) -> Vec<f64> {
        match &self.inner().lanes {
            Some(live) => {
                let lanes = live.current();
                (0..lanes.shares.len())
                    .map(|k| lanes.shares.share(k))
                    .collect()
            }
            None => Vec::new(),
        }
    }

    /// Reserves in the class's own lane; borrows at once from another when
    /// it would wait with nobody of its class ahead of it, or is refused.
    pub(super) async fn reserve_in_lanes(
        &self,
        lanes: &Lanes,
        main: ReserveCall<'_>,
    ) -> Result<Permit, Error> {
        let inner = self.inner();
        // The store's lanes are moved to new shares before any call uses
        // them.
        if let Err(failure) = self.reshare_lanes(lanes).await {
            return self.on_outage(failure, main).await;
        }
        // Beyond the whole bucket, no lane can ever hold it.
        if let Some(e) = inner.policy.too_large(&main.cost) {
            return Err(self.refused(e));
        }
        let class = main.class as usize;
        let own = &lanes.lanes[class];
        let call = ReserveCall {
            key: &own.key,
            policy: &own.policy,
            class: 0,
            headroom: 1.0 - inner.margin / own.policy.tau,
            ..main.clone()
        };
        match self.with_retry(|| inner.store.reserve(&call)).await {
            Ok(Ok(r)) if r.slot <= r.now => {
                Ok(self.granted(r, main.class, Source::Store, Some(class)))
            }
            Ok(Ok(r)) => {
                let first = r.position == 0;
                let queued = self.granted(r, main.class, Source::Store, Some(class));
                if first {
                    if let Some(borrowed) = self.borrow(lanes, main.class, &main.cost).await {
                        self.give_back(queued).await;
                        return Ok(borrowed);
                    }
                }
                Ok(queued)
            }
            Ok(Err(e)) => match self.borrow(lanes, main.class, &main.cost).await {
                Some(borrowed) => Ok(borrowed),
                None => Err(self.refused_in_lane(lanes, class, e)),
            },
            Err(failure) => self.on_outage(failure, main).await,
        }
    }

    /// Tries to start a call of class `class` and cost `cost` at once in
    /// another class's lane, when it is the class's turn to borrow.
    pub(super) async fn borrow(&self, lanes: &Lanes, class: u8, cost: &Dims) -> Option<Permit> {
        let inner = self.inner();
        let priority = inner.classes.get(class as usize)?.headroom;
        // The lenders that could ever hold it and are not known full, with
        // the borrowing headroom: with none, the turn is not asked either.
        let mut lenders = [(0, 0.0); tollgate_core::MAX_CLASSES];
        let mut count = 0;
        for lane in lanes.lenders(class as usize) {
            let lender = &lanes.lanes[lane];
            let headroom =
                lanes.shares.class(lane).lendable * priority - inner.margin / lender.policy.tau;
            let inc = &lender.policy.increment;
            let tolerance = lender.policy.tau * headroom;
            if headroom > 0.0
                && (0..DIMENSIONS).all(|i| cost[i] * inc[i] <= tolerance)
                && !lanes.known_full(lane, cost)
            {
                lenders[count] = (lane, headroom);
                count += 1;
            }
        }
        if count == 0 || !self.my_turn(lanes, class).await {
            return None;
        }
        for &(lane, headroom) in &lenders[..count] {
            let lender = &lanes.lanes[lane];
            if lanes.known_full(lane, cost) {
                continue;
            }
            let call = ReserveCall {
                key: &lender.key,
                policy: &lender.policy,
                class: 0,
                headroom,
                cost: *cost,
                max_wait: Some(0.0),
                max_queue: None,
                lease: None,
            };
            // Not retried: a lender that cannot be asked now is passed over.
            match inner.store.reserve(&call).await {
                Ok(Ok(r)) => {
                    Stats::bump(&inner.stats.borrowed);
                    self.charge_turn(lanes, class, cost).await;
                    // The next waiter of the class is now first: let this
                    // process's waiters look at once.
                    inner.refunded.notify_waiters();
                    return Some(self.granted(r, class, Source::Store, Some(lane)));
                }
                Ok(Err(ReserveError::WouldWait { retry_after, .. })) => {
                    lanes.found_full(lane, cost, retry_after)
                }
                _ => {}
            }
        }
        None
    }

    /// Whether it is class `class`'s turn to borrow, by weight
    /// (`tollgate_core::may_borrow`): asked of the
    /// store's pool of the key's borrowers. With two classes there is only
    /// one borrower at a time, and nothing to ask; a pool that cannot be
    /// asked leaves the turn to whoever comes first, as without it.
    async fn my_turn(&self, lanes: &Lanes, class: u8) -> bool {
        if lanes.lanes.len() <= 2 {
            return true;
        }
        let inner = self.inner();
        let window = tollgate_core::BORROW_WINDOW;
        let call = LendCall::new(
            &inner.key,
            class,
            lanes.lanes.len() as u8,
            LendOp::Ask { window },
        );
        inner
            .store
            .lend(&call)
            .await
            .map_or(true, |lent| lent.allowed)
    }

    /// Adds a borrow of `cost` to class `class`'s pass: its cost in seconds
    /// of the whole bucket (the largest over the dimensions) over its
    /// weight.
    async fn charge_turn(&self, lanes: &Lanes, class: u8, cost: &Dims) {
        if lanes.lanes.len() <= 2 {
            return;
        }
        let inner = self.inner();
        let seconds = (0..DIMENSIONS)
            .map(|i| cost[i] * inner.policy.increment[i])
            .fold(0.0, f64::max);
        let pass = seconds / lanes.shares.class(class as usize).weight;
        let call = LendCall::new(
            &inner.key,
            class,
            lanes.lanes.len() as u8,
            LendOp::Charge { pass },
        );
        // Not retried: a borrow left uncharged only gives the class one
        // more call's worth.
        let _ = inner.store.lend(&call).await;
    }

    /// Settles a permit of a lane whose call used more than its
    /// estimate. Its own lane settles the usage within the estimate; the
    /// usage above it raises the lanes' TAT lines to one level, the lowest
    /// first (see [`Shares::spread`]), so that no lane admits a call asked
    /// after it before the whole bucket has paid it.
    pub(super) async fn settle_above_in_lanes(
        &self,
        lanes: &Lanes,
        permit: &Permit,
        actual: Dims,
    ) -> Result<crate::Settlement, Error> {
        let inner = self.inner();
        let estimate = permit.mark.cost;
        let limited = |i: usize| inner.policy.increment[i] > 0.0;
        let over: Dims = std::array::from_fn(|i| {
            if limited(i) {
                (actual[i] - estimate[i]).max(0.0)
            } else {
                0.0
            }
        });
        let within: Dims = std::array::from_fn(|i| actual[i].min(estimate[i]));
        let call = super::rate_limiter::settle_call(inner, Some(lanes), permit, within)
            .expect("a permit of a lane has its placement");
        let settled = self
            .with_retry(|| inner.store.settle(&call))
            .await
            .map_err(RetryFailure::unavailable)?;
        let mut lines = Vec::with_capacity(lanes.lanes.len());
        let mut now = f64::NEG_INFINITY;
        for l in &lanes.lanes {
            let snap = self
                .with_retry(|| inner.store.snapshot(&l.key, &l.policy))
                .await
                .map_err(RetryFailure::unavailable)?;
            lines.push(snap.state.tat.map(|t| t.max(snap.now)));
            now = now.max(snap.now);
        }
        let spread = lanes.shares.spread(&lines, &over, &inner.policy.increment);
        // A charge from now, as a started reservation of no estimate
        // settled with the lane's part.
        let nothing = tollgate_core::Mark::default();
        for (l, &part) in lanes.lanes.iter().zip(&spread.charge) {
            if part.iter().all(|&c| c <= 0.0) {
                continue;
            }
            let charge = SettleCall {
                key: &l.key,
                policy: &l.policy,
                class: 0,
                id: 0,
                slot: 0.0,
                mark: nothing,
                actual: part,
            };
            self.with_retry(|| inner.store.settle(&charge))
                .await
                .map_err(RetryFailure::unavailable)?;
        }
        let tau = inner.policy.tau;
        let clear = spread.clear_at(tau - inner.margin);
        if clear > now {
            self.hold_lanes(lanes, &lines, &spread, clear).await?;
        }
        if super::rate_limiter::made_room(&settled) {
            inner.refunded.notify_waiters();
        }
        Ok(crate::Settlement {
            charged: over,
            refunded: settled.refunded,
        })
    }

    /// Holds every lane's calls asked from now on until `clear` (store
    /// time), when the lanes have paid usage spread over them beyond their
    /// rooms: a reservation of no cost queued in each lane at `clear`, which
    /// every later reservation of the lane queues behind (FIFO) and no
    /// borrower passes (a lane with a queue lends nothing). A refund in a
    /// lane above the level the usage was spread to could otherwise let
    /// that lane admit at once while another still pays. Nobody settles
    /// these: they leave the queue when their slot passes.
    async fn hold_lanes(
        &self,
        lanes: &Lanes,
        lines: &[Dims],
        spread: &tollgate_core::Spread,
        clear: f64,
    ) -> Result<(), Error> {
        let inner = self.inner();
        let tau = inner.policy.tau;
        for (k, l) in lanes.lanes.iter().enumerate() {
            // The line after its charge, less the headroom, is `clear`.
            let end = (0..DIMENSIONS)
                .filter(|&i| l.policy.increment[i] > 0.0)
                .map(|i| lines[k][i] + spread.charge[k][i] * l.policy.increment[i])
                .fold(f64::NEG_INFINITY, f64::max);
            let headroom = ((end - clear) / tau).min(1.0);
            if headroom.is_nan() || headroom <= 0.0 {
                continue;
            }
            let call = ReserveCall {
                key: &l.key,
                policy: &l.policy,
                class: 0,
                headroom,
                cost: [0.0; DIMENSIONS],
                max_wait: None,
                max_queue: None,
                lease: None,
            };
            match self.with_retry(|| inner.store.reserve(&call)).await {
                Ok(_) => {}
                Err(f) => return Err(f.unavailable()),
            }
        }
        Ok(())
    }

    /// Cancels a reservation the caller no longer needs (it borrowed).
    pub(super) async fn give_back(&self, permit: Permit) {
        let zero = [0.0; tollgate_core::DIMENSIONS];
        if self.settle_units(&permit, zero).await.is_err() {
            // The background cancels it when the store answers again.
            self.cancel_later(permit);
        }
    }

    /// The error for a call its own lane refused and no lane could lend to.
    fn refused_in_lane(&self, lanes: &Lanes, class: usize, e: ReserveError) -> Error {
        match e {
            ReserveError::TooLarge {
                dimension,
                needed,
                capacity,
                ..
            } => {
                Stats::bump(&self.inner().stats.refused);
                let c = lanes.shares.class(class);
                Error::TooLargeForShare {
                    key: self.key().to_string(),
                    class: class as u8,
                    dimension,
                    needed,
                    capacity,
                    share: lanes.shares.share(class),
                    floor: c.floor,
                    weight: c.weight,
                }
            }
            e => self.refused(e),
        }
    }
}
