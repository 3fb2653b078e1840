//! The limiter itself: reservations through the store, retries, the outage
//! policy, waiting for the slot and cancelling on drop.

use std::sync::Arc;
use std::time::Duration;

// tokio's clock, so that tests may run the limiter on paused time.
use tokio::time::Instant;

use tollgate_core::{Cost, CostError, Dimension, Limits, Mark, Policy, ReserveError, DIMENSIONS};

use crate::error::secs;
use crate::outage::Stats;
use crate::store::{
    Advance, AdvanceCall, Backend, Cancel, Claim, MemoryStore, ReserveCall, Reserved, SettleCall,
    Store, StoreError,
};
use crate::{Error, OutagePolicy, RetryConfig, Source, StatsSnapshot};

use super::lanes::{Lanes, LiveLanes};
use super::token;
use super::{
    AcquireOptions, Builder, ClassStatus, DimensionStatus, Permit, PriorityClass, Settlement,
    Status,
};

/// The longest a waiting caller sleeps between two checks for an earlier slot
/// (see [`Builder::advance_check`]).
pub const MAX_ADVANCE_CHECK: Duration = Duration::from_millis(100);

/// The in-process limiter used by the `local` outage policy.
#[derive(Debug)]
pub(crate) struct LocalFallback {
    pub(crate) store: MemoryStore,
    pub(crate) policy: Policy,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) key: Arc<str>,
    pub(crate) store: Store,
    pub(crate) policy: Policy,
    pub(crate) retry: RetryConfig,
    pub(crate) outage: OutagePolicy,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) max_queue: Option<u64>,
    pub(crate) advance_check: Option<Duration>,
    /// Wakes this process's waiting callers after a refund.
    pub(crate) refunded: tokio::sync::Notify,
    pub(crate) classes: Vec<PriorityClass>,
    /// The safety margin in seconds (see `Builder::margin`).
    pub(crate) margin: f64,
    /// How long a queued reservation stays unconfirmed (see `Builder::lease`).
    pub(crate) lease: Option<Duration>,
    pub(crate) local: Option<LocalFallback>,
    pub(crate) stats: Stats,
    /// The lanes, when the classes share the bucket by floor and weight.
    pub(crate) lanes: Option<LiveLanes>,
}

/// Where a permit's reservation lives: its key, limits and class in the
/// store, and the class's headroom there.
pub(crate) struct Placement<'a> {
    pub(crate) key: &'a str,
    pub(crate) policy: &'a Policy,
    pub(crate) class: u8,
    pub(crate) headroom: f64,
}

impl Inner {
    /// A class's share of the tolerance on `policy`, less the safety margin.
    fn headroom(&self, class: &PriorityClass, policy: &Policy) -> f64 {
        class.headroom - self.margin / policy.tau
    }

    /// The lanes in force now, when the classes share the bucket.
    pub(crate) fn lanes(&self) -> Option<Arc<Lanes>> {
        self.lanes.as_ref().map(LiveLanes::current)
    }

    /// Where `permit`'s reservation lives, with `lanes` the lanes in force
    /// ([`Inner::lanes`]); `None` for one nothing was written for (the
    /// `open` outage policy, or a class this limiter lacks).
    pub(crate) fn placement<'a>(
        &'a self,
        lanes: Option<&'a Lanes>,
        permit: &Permit,
    ) -> Option<Placement<'a>> {
        let class = self.classes.get(permit.class as usize)?;
        match (permit.source, &self.local, permit.lane, lanes) {
            (Source::Local, Some(local), _, _) => Some(Placement {
                key: &self.key,
                policy: &local.policy,
                class: permit.class,
                headroom: self.headroom(class, &local.policy),
            }),
            (Source::Store, _, Some(lane), Some(lanes)) => {
                let lane = lanes.lanes.get(lane as usize)?;
                Some(Placement {
                    key: &lane.key,
                    policy: &lane.policy,
                    class: 0,
                    headroom: 1.0 - self.margin / lane.policy.tau,
                })
            }
            (Source::Store, _, None, _) => Some(Placement {
                key: &self.key,
                policy: &self.policy,
                class: permit.class,
                headroom: self.headroom(class, &self.policy),
            }),
            _ => None,
        }
    }
}

/// A rate limiter for one key (one provider model, one client, ...).
///
/// Cheap to clone: clones share the store, the settings and the counters.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::Error> {
/// use tollgate::{Cost, Limits, RateLimiter, Usage};
///
/// let limiter = RateLimiter::new("memory://", "gpt-4o", Limits::new().rpm(500).tpm(30_000)).await?;
/// let permit = limiter.acquire(Cost::split(1200, 800)).await?;
/// // ... call the model ...
/// limiter.settle(permit, Usage::split(1200, 150)).await?; // 650 unused tokens flow back
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

/// Where a reservation was written.
#[derive(Clone, Copy)]
enum Written {
    Store,
    Local,
}

impl RateLimiter {
    /// A limiter on a store URL (`memory://`, `redis://…`, `rediss://…`,
    /// `redis+cluster://…`) with the default settings.
    pub async fn new(url: &str, key: &str, limits: Limits) -> Result<Self, Error> {
        Builder::new(key).url(url).limits(limits).build().await
    }

    /// A limiter on a fresh in-memory store.
    pub fn memory(key: &str, limits: Limits) -> Result<Self, Error> {
        Builder::new(key).limits(limits).build_with(Store::memory())
    }

    /// A limiter on an existing store (shared with other limiters).
    pub fn with_store(store: &Store, key: &str, limits: Limits) -> Result<Self, Error> {
        Builder::new(key).limits(limits).build_with(store.clone())
    }

    /// All settings: split limits, burndown, retry, outage policy, classes ...
    pub fn builder(key: &str) -> Builder {
        Builder::new(key)
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        RateLimiter { inner }
    }

    pub(super) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The limiter's key.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The validated limits.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The store this limiter uses.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The limiter's counters.
    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot {
            store_resets: self.inner.store.resets(),
            ..self.inner.stats.snapshot()
        }
    }

    /// Reserves a slot for a call of this cost and waits until it.
    ///
    /// Dropping the returned future before it completes cancels the reservation,
    /// so a caller that gives up does not block the ones behind it.
    pub async fn acquire(&self, cost: Cost) -> Result<Permit, Error> {
        self.acquire_with(cost, AcquireOptions::default()).await
    }

    /// [`RateLimiter::acquire`] that never waits: `Error::RateLimited` unless
    /// the call may start now.
    pub async fn try_acquire(&self, cost: Cost) -> Result<Permit, Error> {
        self.acquire_with(cost, AcquireOptions::default().max_wait(Duration::ZERO))
            .await
    }

    /// [`RateLimiter::acquire`] with a priority class and a maximum wait.
    pub async fn acquire_with(&self, cost: Cost, options: AcquireOptions) -> Result<Permit, Error> {
        // A waiter that confirms its place (it asks now and then whether it
        // may start earlier) takes a lease on it.
        let lease = self
            .inner
            .lease
            .filter(|_| self.inner.advance_check.is_some());
        let permit = self.reserve_leased(cost, &options, lease).await?;
        if permit.waited.is_zero() {
            return Ok(permit);
        }
        let started = Instant::now();
        let mut deadline = started + permit.waited;
        let mut guard = CancelOnDrop {
            limiter: self,
            permit: Some(permit),
        };
        let mut confirmed = Instant::now();
        // Sleep until the slot; while far from it, wake now and then to ask
        // whether refunds ahead made room to go earlier (which confirms the
        // lease).
        loop {
            let now = Instant::now();
            let Some(remaining) = deadline
                .checked_duration_since(now)
                .filter(|d| !d.is_zero())
            else {
                // A waiter that went unconfirmed for half its lease (its
                // process stalled) makes sure it still holds its place.
                if let Some(lease) = lease.filter(|l| confirmed.elapsed() > *l / 2) {
                    let permit = guard.permit.as_mut().expect("held until the slot");
                    if self.try_advance(permit, Some(lease)).await == Some(Advance::Lost) {
                        deadline = self
                            .requeue(&mut guard, cost, &options, Some(lease))
                            .await?;
                        confirmed = Instant::now();
                        continue;
                    }
                }
                break;
            };
            match self.inner.advance_check {
                Some(min) if remaining > min => {
                    let permit = guard.permit.as_mut().expect("held until the slot");
                    let outcome = self
                        .look_earlier(permit, &mut deadline, remaining, min, lease)
                        .await;
                    // Only an answer of the store confirms the lease.
                    if outcome.is_some_and(|o| o != Advance::Lost) {
                        confirmed = Instant::now();
                    }
                    match outcome {
                        Some(Advance::First) => {
                            // Next of its class: another class's lane may
                            // take it at once.
                            if let Some(mut borrowed) = self.borrow_for(permit).await {
                                if let Some(own) = guard.permit.take() {
                                    self.give_back(own).await;
                                }
                                borrowed.waited = started.elapsed();
                                return Ok(borrowed);
                            }
                        }
                        Some(Advance::Lost) => {
                            deadline = self.requeue(&mut guard, cost, &options, lease).await?;
                            confirmed = Instant::now();
                        }
                        _ => {}
                    }
                }
                _ => {
                    // Back through the check above: a stall in this last
                    // sleep must not start a reservation that was taken out.
                    tokio::time::sleep_until(deadline).await;
                }
            }
        }
        let mut permit = guard.permit.take().expect("held until the slot");
        permit.waited = started.elapsed();
        Ok(permit)
    }

    /// Waits until the slot of a permit from [`RateLimiter::reserve`],
    /// moving it earlier whenever calls ahead settle below their estimates
    /// or are cancelled — the same looks at the store that `acquire` makes
    /// while it waits (see [`Builder::advance_check`](crate::Builder::advance_check)).
    /// The permit stays the caller's: dropping this future leaves it
    /// reserved (settle or cancel it as usual). On return the call may run,
    /// and [`Permit::waited`] says how long this waited.
    pub async fn wait_for_slot(&self, permit: &mut Permit) {
        let started = Instant::now();
        let mut deadline = started + permit.waited;
        while let Some(remaining) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            match self.inner.advance_check {
                Some(min) if remaining > min => {
                    // Without a lease nothing can take the place away.
                    let outcome = self
                        .look_earlier(permit, &mut deadline, remaining, min, None)
                        .await;
                    if outcome == Some(Advance::First) {
                        // Next of its class: another class's lane may take
                        // it at once; the borrowed permit replaces its own.
                        if let Some(borrowed) = self.borrow_for(permit).await {
                            let own = std::mem::replace(permit, borrowed);
                            self.give_back(own).await;
                            break;
                        }
                    }
                }
                _ => tokio::time::sleep_until(deadline).await,
            }
        }
        permit.waited = started.elapsed();
    }

    /// Sleeps towards the slot (`remaining` away) for a while — a quarter of
    /// it, from `min` to [`MAX_ADVANCE_CHECK`], or until a settlement in this
    /// process may have made room — then asks the store whether `permit` may
    /// start earlier, and moves it and its `deadline` if so. `None` when the
    /// store could not say.
    async fn look_earlier(
        &self,
        permit: &mut Permit,
        deadline: &mut Instant,
        remaining: Duration,
        min: Duration,
        lease: Option<Duration>,
    ) -> Option<Advance> {
        tokio::select! {
            _ = tokio::time::sleep((remaining / 4).clamp(min, MAX_ADVANCE_CHECK)) => {}
            _ = self.inner.refunded.notified() => {}
        }
        let outcome = self.try_advance(permit, lease).await;
        if let Some(Advance::Moved(moved)) = &outcome {
            permit.slot = moved.slot;
            *deadline = Instant::now() + secs(moved.slot - moved.now);
            // In a lane, the queue moves up when its first leaves to borrow
            // elsewhere: a waiter moved up but still waiting may be the first
            // now, and may borrow at once rather than a check later.
            if self.inner.lanes.is_some() && moved.slot > moved.now {
                match self.try_advance(permit, lease).await {
                    Some(Advance::First) => return Some(Advance::First),
                    Some(Advance::Moved(again)) => {
                        permit.slot = again.slot;
                        *deadline = Instant::now() + secs(again.slot - again.now);
                    }
                    _ => {}
                }
            }
        }
        outcome
    }

    /// Queues a waiter again whose reservation another process cancelled
    /// (this process stalled past its lease): a new reservation, at the back.
    /// Returns the new deadline.
    async fn requeue(
        &self,
        guard: &mut CancelOnDrop<'_>,
        cost: Cost,
        options: &AcquireOptions,
        lease: Option<Duration>,
    ) -> Result<Instant, Error> {
        Stats::bump(&self.inner.stats.leases_lost);
        guard.permit = None;
        let again = self.reserve_leased(cost, options, lease).await?;
        let deadline = Instant::now() + again.waited;
        guard.permit = Some(again);
        Ok(deadline)
    }

    /// Asks the store whether a queued permit may start earlier, confirming
    /// its lease (errors only mean it keeps its slot).
    async fn try_advance(&self, permit: &Permit, lease: Option<Duration>) -> Option<Advance> {
        let inner = &*self.inner;
        let lanes = inner.lanes();
        let at = inner.placement(lanes.as_deref(), permit)?;
        let call = AdvanceCall {
            key: at.key,
            policy: at.policy,
            class: at.class,
            headroom: at.headroom,
            id: permit.id,
            slot: permit.slot,
            mark: permit.mark,
            lease: lease.map(|d| d.as_secs_f64()),
        };
        let outcome = match (permit.source, &inner.local) {
            (Source::Store, _) => inner.store.advance(&call).await.ok()?,
            (Source::Local, Some(local)) => local.store.advance_outcome_now(&call),
            _ => Advance::Stays,
        };
        if matches!(outcome, Advance::Moved(_)) {
            Stats::bump(&inner.stats.advanced);
        }
        Some(outcome)
    }

    /// Reserves without waiting: the permit's `waited` says how long the caller
    /// must still wait before its slot. For callers with their own scheduling;
    /// [`RateLimiter::cancel`] releases it.
    pub async fn reserve(&self, cost: Cost, options: &AcquireOptions) -> Result<Permit, Error> {
        self.reserve_leased(cost, options, None).await
    }

    async fn reserve_leased(
        &self,
        cost: Cost,
        options: &AcquireOptions,
        lease: Option<Duration>,
    ) -> Result<Permit, Error> {
        let inner = &*self.inner;
        let call = self.reserve_call(cost, options, lease)?;
        if let Some(lanes) = inner.lanes() {
            return self.reserve_in_lanes(&lanes, call).await;
        }
        match self.with_retry(|| inner.store.reserve(&call)).await {
            Ok(Ok(r)) => Ok(self.granted(r, options.class, Source::Store, None)),
            Ok(Err(e)) => Err(self.refused(e)),
            Err(failure) => self.on_outage(failure, call).await,
        }
    }

    /// The store's call for a reservation of `cost` with `options`.
    pub(super) fn reserve_call(
        &self,
        cost: Cost,
        options: &AcquireOptions,
        lease: Option<Duration>,
    ) -> Result<ReserveCall<'_>, Error> {
        let inner = &*self.inner;
        let class = inner
            .classes
            .get(options.class as usize)
            .ok_or_else(|| Error::Config {
                field: "class",
                value: options.class.to_string(),
                reason: "one of the limiter's priority classes",
            })?;
        let max_wait = options.max_wait.or(class.max_wait).or(inner.max_wait);
        let call = ReserveCall {
            key: &inner.key,
            policy: &inner.policy,
            class: options.class,
            headroom: inner.headroom(class, &inner.policy),
            cost: inner.policy.checked_units(cost)?,
            max_wait: max_wait.map(|d| d.as_secs_f64()),
            max_queue: inner.max_queue,
            lease: lease.map(|d| d.as_secs_f64()),
        };
        Ok(call)
    }

    /// [`RateLimiter::borrow`] for a permit waiting in its own lane.
    async fn borrow_for(&self, permit: &Permit) -> Option<Permit> {
        let lanes = self.inner.lanes()?;
        if permit.source != Source::Store || permit.lane != Some(permit.class) {
            return None;
        }
        self.reshare_lanes(&lanes).await.ok()?;
        self.borrow(&lanes, permit.class, &permit.mark.cost).await
    }

    pub(super) async fn on_outage(
        &self,
        failure: RetryFailure,
        call: ReserveCall<'_>,
    ) -> Result<Permit, Error> {
        let inner = &*self.inner;
        match (inner.outage, &inner.local) {
            (OutagePolicy::Open, _) => {
                Stats::bump(&inner.stats.outage_open);
                Ok(Permit {
                    key: inner.key.clone(),
                    id: 0,
                    slot: 0.0,
                    waited: Duration::ZERO,
                    queue_position: 0,
                    source: Source::Open,
                    class: call.class,
                    lane: None,
                    mark: Mark {
                        cost: call.cost,
                        end: [0.0; DIMENSIONS],
                        refunded_at: [0.0; DIMENSIONS],
                        gap: [0.0; DIMENSIONS],
                        before: [0.0; DIMENSIONS],
                        class_refunds_at: [0.0; DIMENSIONS],
                    },
                    reserved_at: 0.0,
                })
            }
            (OutagePolicy::Local { .. }, Some(local)) => {
                Stats::bump(&inner.stats.outage_local);
                let class = &inner.classes[call.class as usize];
                let local_call = ReserveCall {
                    policy: &local.policy,
                    headroom: inner.headroom(class, &local.policy),
                    ..call
                };
                match local.store.reserve_now(&local_call) {
                    Ok(r) => Ok(self.granted(r, local_call.class, Source::Local, None)),
                    Err(e) => Err(self.refused(e)),
                }
            }
            _ => {
                Stats::bump(&inner.stats.outage_closed);
                Err(Error::StoreUnavailable {
                    attempts: failure.attempts,
                    policy: Some(inner.outage.name()),
                    source: failure.error,
                })
            }
        }
    }

    pub(super) fn granted(
        &self,
        r: Reserved,
        class: u8,
        source: Source,
        lane: Option<usize>,
    ) -> Permit {
        let stats = &self.inner.stats;
        Stats::bump(&stats.granted);
        let waited = secs(r.slot - r.now);
        if waited > Duration::ZERO {
            Stats::bump(&stats.waited);
        }
        Permit {
            key: self.inner.key.clone(),
            id: r.id,
            slot: r.slot,
            waited,
            queue_position: r.position,
            source,
            class,
            lane: lane.map(|l| l as u8),
            mark: r.mark,
            reserved_at: r.now,
        }
    }

    pub(super) fn refused(&self, e: ReserveError) -> Error {
        Stats::bump(&self.inner.stats.refused);
        Error::from_reserve(&self.inner.key, e)
    }

    /// Settles a permit with the usage the call really had: usage above the
    /// estimate is charged, usage below it refunded (never capacity that has
    /// already drained). A permit that did not wait for its slot and used
    /// exactly its estimate has nothing to settle and costs no store call.
    pub async fn settle(&self, permit: Permit, usage: Cost) -> Result<Settlement, Error> {
        let permit = self.own(permit)?;
        let actual = match self.actual(&permit, usage) {
            Ok(actual) => actual,
            Err(source) => {
                return Err(Error::BadUsage {
                    source,
                    permit: Box::new(permit),
                })
            }
        };
        self.settle_units(&permit, actual).await
    }

    /// Gives a permit back unused: refunds its whole estimate (with the same cap
    /// as a refund) and removes it from its queue, so the reservations queued
    /// behind it may start earlier.
    pub async fn cancel(&self, permit: Permit) -> Result<Settlement, Error> {
        let permit = self.own(permit)?;
        Stats::bump(&self.inner.stats.cancelled);
        self.settle_units(&permit, [0.0; DIMENSIONS]).await
    }

    /// [`RateLimiter::settle`] for a permit written as a token
    /// ([`Permit::into_token`]), in this process or any other that shares the
    /// store. The store applies each token at most once: a token settled
    /// already, or older than [`TOKEN_LIFETIME`](crate::TOKEN_LIFETIME), is
    /// refused with [`Error::Token`], and so is a token of another key.
    pub async fn settle_token(&self, token: &str, usage: Cost) -> Result<Settlement, Error> {
        // A usage that cannot be charged is refused before the token is used up.
        let unclaimed = token::decode(token, &self.inner.key)?;
        let actual = self.actual(&unclaimed, usage)?;
        let permit = self.claim(token).await?;
        self.settle_units(&permit, actual).await
    }

    /// [`RateLimiter::cancel`] for a permit written as a token; at most once,
    /// as [`RateLimiter::settle_token`].
    pub async fn cancel_token(&self, token: &str) -> Result<Settlement, Error> {
        let permit = self.claim(token).await?;
        Stats::bump(&self.inner.stats.cancelled);
        self.settle_units(&permit, [0.0; DIMENSIONS]).await
    }

    /// The permit if it is this limiter's; otherwise it goes back in the error.
    fn own(&self, permit: Permit) -> Result<Permit, Error> {
        if permit.key == self.inner.key {
            Ok(permit)
        } else {
            Err(Error::ForeignPermit {
                limiter: self.inner.key.to_string(),
                permit: Box::new(permit),
            })
        }
    }

    fn actual(&self, permit: &Permit, usage: Cost) -> Result<[f64; DIMENSIONS], CostError> {
        let mut actual = self.inner.policy.checked_units(usage)?;
        actual[Dimension::Requests.index()] = permit.mark.cost[Dimension::Requests.index()];
        Ok(actual)
    }

    /// Reads a token and marks it settled in the store that holds its
    /// reservation; refused when it was marked already.
    async fn claim(&self, token: &str) -> Result<Permit, Error> {
        let inner = &*self.inner;
        let permit = token::decode(token, &inner.key)?;
        let lanes = inner.lanes();
        let claim_key = inner
            .placement(lanes.as_deref(), &permit)
            .map_or(&*inner.key, |at| at.key);
        let claim = match (permit.source, &inner.local) {
            (Source::Open, _) => return Ok(permit), // nothing was charged
            (Source::Local, Some(local)) => {
                local
                    .store
                    .claim_now(&inner.key, permit.id, permit.reserved_at)
            }
            (Source::Local, None) => {
                return Err(Error::Token(token::TokenError::Malformed(
                    "a token of the local outage policy, given to a limiter without it",
                )))
            }
            (Source::Store, _) => self
                .with_retry(|| inner.store.claim(claim_key, permit.id, permit.reserved_at))
                .await
                .map_err(RetryFailure::unavailable)?,
        };
        let (key, id) = (inner.key.to_string(), permit.id);
        match claim {
            Claim::Fresh => Ok(permit),
            Claim::Settled => Err(token::TokenError::AlreadySettled { key, id }.into()),
            Claim::Expired => Err(token::TokenError::Expired { key, id }.into()),
        }
    }

    pub(super) async fn settle_units(
        &self,
        permit: &Permit,
        actual: [f64; DIMENSIONS],
    ) -> Result<Settlement, Error> {
        let inner = &*self.inner;
        let written = match permit.source {
            Source::Open => return Ok(Settlement::default()),
            Source::Store => Written::Store,
            Source::Local => Written::Local,
        };
        // A reservation that never queued (its slot was the time it was
        // made) and used exactly its estimate has nothing to settle: no
        // charge, no refund, no queue entry. Skip the store round trip.
        let limited = |i: usize| inner.policy.increment[i] > 0.0;
        let exact = (0..DIMENSIONS).all(|i| !limited(i) || actual[i] == permit.mark.cost[i]);
        if permit.slot <= permit.reserved_at && exact {
            return Ok(Settlement::default());
        }
        let lanes = inner.lanes();
        if let (Written::Store, Some(lanes), Some(_)) = (written, &lanes, permit.lane) {
            if (0..DIMENSIONS).any(|i| limited(i) && actual[i] > permit.mark.cost[i]) {
                return self.settle_above_in_lanes(lanes, permit, actual).await;
            }
        }
        let Some(call) = settle_call(inner, lanes.as_deref(), permit, actual) else {
            return Ok(Settlement::default());
        };
        let settled = match (written, &inner.local) {
            (Written::Local, Some(local)) => local.store.settle_now(&call),
            _ => self
                .with_retry(|| inner.store.settle(&call))
                .await
                .map_err(RetryFailure::unavailable)?,
        };
        if made_room(&settled) {
            inner.refunded.notify_waiters();
        }
        Ok(Settlement {
            charged: settled.charged,
            refunded: settled.refunded,
        })
    }

    /// Per dimension the limit, what is in use, what is available and when the
    /// bucket is full again; and the queue depth.
    pub async fn status(&self) -> Result<Status, Error> {
        let inner = &*self.inner;
        let snap = self
            .with_retry(|| inner.store.snapshot(&inner.key, &inner.policy))
            .await
            .map_err(RetryFailure::unavailable)?;
        let mut status = Status {
            key: inner.key.to_string(),
            dimensions: dimension_status(&inner.policy, &snap.state.tat, snap.now),
            queue_depth: snap.queue_depth,
            classes: Vec::new(),
        };
        if let Some(lanes) = inner.lanes() {
            // The lanes as the calls will find them.
            self.reshare_lanes(&lanes)
                .await
                .map_err(RetryFailure::unavailable)?;
            for (k, lane) in lanes.lanes.iter().enumerate() {
                let snap = self
                    .with_retry(|| inner.store.snapshot(&lane.key, &lane.policy))
                    .await
                    .map_err(RetryFailure::unavailable)?;
                let set = lanes.shares.class(k);
                status.queue_depth += snap.queue_depth;
                status.classes.push(ClassStatus {
                    class: k as u8,
                    floor: set.floor,
                    weight: set.weight,
                    share: lanes.shares.share(k),
                    dimensions: dimension_status(&lane.policy, &snap.state.tat, snap.now),
                    queue_depth: snap.queue_depth,
                });
            }
            // The bucket's use is the lanes' together.
            for d in &mut status.dimensions {
                let lanes_use = status
                    .classes
                    .iter()
                    .filter_map(|c| c.dimensions.iter().find(|l| l.dimension == d.dimension));
                d.in_use += lanes_use.clone().map(|l| l.in_use).sum::<f64>();
                d.available = (d.capacity - d.in_use).max(0.0);
                d.full_in = d
                    .full_in
                    .max(lanes_use.map(|l| l.full_in).max().unwrap_or_default());
            }
        }
        Ok(status)
    }

    /// Per limited dimension, the key's state right after `permit` was
    /// granted (this reservation charged): what [`RateLimiter::status`]
    /// would have answered at that instant, without its queue depth.
    /// Computed from the permit alone (each dimension's TAT after the charge
    /// and the store time of the reservation), so it costs no store round
    /// trip: enough for rate-limit headers on every response.
    ///
    /// `None` for a permit the `open` outage policy let through without
    /// asking the store. Pass a permit of this limiter.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::Error> {
    /// use tollgate::{AcquireOptions, Cost, Dimension, Limits, RateLimiter};
    ///
    /// let limiter = RateLimiter::memory("acme", Limits::new().rpm(100))?;
    /// let permit = limiter.reserve(Cost::request_only(), &AcquireOptions::default()).await?;
    /// let after = limiter.status_at_grant(&permit).expect("the store decided");
    /// assert_eq!(after[0].dimension, Dimension::Requests);
    /// assert_eq!(after[0].available.floor(), 99.0);
    /// # limiter.cancel(permit).await?;
    /// # Ok(()) }
    /// ```
    pub fn status_at_grant(&self, permit: &Permit) -> Option<Vec<DimensionStatus>> {
        let lanes = self.inner.lanes();
        let at = self.inner.placement(lanes.as_deref(), permit)?;
        Some(dimension_status(
            at.policy,
            &permit.mark.end,
            permit.reserved_at,
        ))
    }

    /// Runs a store operation, retrying transient errors with backoff and jitter.
    /// While an outage is on, only one call per `retry.probe_interval` tries the
    /// store, once; the others fail over at once. The first success ends the
    /// outage.
    pub(super) async fn with_retry<T, F, Fut>(&self, mut op: F) -> Result<T, RetryFailure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let inner = &*self.inner;
        let retries = if inner.stats.in_outage() {
            if !inner.stats.should_probe(inner.retry.probe_interval) {
                return Err(RetryFailure {
                    attempts: 0,
                    error: StoreError::Unavailable(
                        "store unreachable (outage going on; it is probed every retry.probe_interval)".into(),
                    ),
                });
            }
            0
        } else {
            inner.retry.max_retries
        };
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => {
                    inner.stats.store_ok(&inner.key);
                    return Ok(v);
                }
                Err(error) => {
                    Stats::bump(&inner.stats.store_errors);
                    attempt += 1;
                    if !error.is_transient() || attempt > retries {
                        if error.is_transient() {
                            inner.stats.store_failed(&inner.key, inner.outage, &error);
                        }
                        return Err(RetryFailure {
                            attempts: attempt,
                            error,
                        });
                    }
                    tokio::time::sleep(inner.retry.delay(attempt)).await;
                }
            }
        }
    }
}

pub(super) struct RetryFailure {
    attempts: u32,
    error: StoreError,
}

impl RetryFailure {
    /// The error of a call that no outage policy decides (settle, status).
    pub(super) fn unavailable(self) -> Error {
        Error::StoreUnavailable {
            attempts: self.attempts,
            policy: None,
            source: self.error,
        }
    }
}

/// Cancels a reservation whose waiting future is dropped before its slot.
struct CancelOnDrop<'a> {
    limiter: &'a RateLimiter,
    permit: Option<Permit>,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            Stats::bump(&self.limiter.inner.stats.cancelled);
            self.limiter.cancel_later(permit);
        }
    }
}

impl RateLimiter {
    /// Cancels a reservation without waiting for the store: right here on
    /// the memory stores, in the background on Redis.
    pub(super) fn cancel_later(&self, permit: Permit) {
        let inner = &*self.inner;
        let actual = [0.0; DIMENSIONS];
        let lanes = inner.lanes();
        let Some(call) = settle_call(inner, lanes.as_deref(), &permit, actual) else {
            return;
        };
        let settled = match (permit.source, &inner.store, &inner.local) {
            (Source::Local, _, Some(local)) => local.store.settle_now(&call),
            (Source::Store, Store::Memory(m), _) => m.settle_now(&call),
            (Source::Store, Store::Redis(redis), _) => {
                redis.cancel_soon(Cancel {
                    key: call.key.to_string(),
                    policy: call.policy.clone(),
                    class: call.class,
                    id: permit.id,
                    slot: permit.slot,
                    mark: permit.mark,
                    at_once: permit.slot <= permit.reserved_at,
                });
                return;
            }
            _ => return,
        };
        if made_room(&settled) {
            inner.refunded.notify_waiters();
        }
    }
}

/// Each limited dimension of a key whose TATs are `tat`, seen at store time `now`.
fn dimension_status(policy: &Policy, tat: &[f64; DIMENSIONS], now: f64) -> Vec<DimensionStatus> {
    Dimension::ALL
        .iter()
        .filter(|d| policy.is_limited(**d))
        .map(|&d| {
            let backlog = (tat[d.index()] - now).max(0.0);
            let capacity = policy.capacity(d);
            let in_use = backlog / policy.increment[d.index()];
            DimensionStatus {
                dimension: d,
                limit: policy.limit(d).unwrap_or(0),
                capacity,
                in_use,
                available: (capacity - in_use).max(0.0),
                full_in: secs(backlog),
            }
        })
        .collect()
}

/// The settlement of `permit` with `actual`, where its reservation lives.
pub(super) fn settle_call<'a>(
    inner: &'a Inner,
    lanes: Option<&'a Lanes>,
    permit: &Permit,
    actual: [f64; DIMENSIONS],
) -> Option<SettleCall<'a>> {
    let at = inner.placement(lanes, permit)?;
    Some(SettleCall {
        key: at.key,
        policy: at.policy,
        class: at.class,
        id: permit.id,
        slot: permit.slot,
        mark: permit.mark,
        actual,
    })
}

/// Whether a settlement may let waiters start earlier: it gave capacity back,
/// or handed the one queued behind it what it had taken (a cancellation) or
/// what the queue's headroom held back of its refund (a started call).
pub(super) fn made_room(settled: &tollgate_core::Settled) -> bool {
    settled
        .returned
        .iter()
        .chain(&settled.left)
        .chain(&settled.held)
        .any(|&r| r > 0.0)
}
