//! Lanes: calls of one key (reservations: of one key and class) that travel
//! together. Alone on its lane, a call goes at once; while one is on its way,
//! those that come meanwhile wait on the lane and then go as one script call
//! (at most [`MAX_BATCH`]), one call at a time, until none are left.
//!
//! What a kind of call brings is its script and how a reply reaches its
//! caller ([`Waiter`]): reservations in `reserve.lua` (see the module above),
//! settlements in `settle.lua` (see `settling`). The sending is the same.

use std::collections::VecDeque;
use std::hash::Hash;

use parking_lot::Mutex;
use redis::Value;

use super::handover::InFlight;
use super::scripts::Invocation;
use super::{Map, RedisConnection, RedisStore, Settings, MAX_BATCH};
use crate::background::{self, Place};
use crate::store::StoreError;

/// A call waiting on its lane for the one on its way: what the lane's
/// sender needs of it.
pub(super) trait Waiter: Sized + Send + 'static {
    /// What names a lane: the calls of one lane go in one script call.
    type Lane: Eq + Hash + Clone + Send + Sync + 'static;

    /// The store's lanes of this kind of call.
    fn lanes(settings: &Settings) -> &Mutex<Map<Self::Lane, VecDeque<Self>>>;

    /// Whether it is still sent (a reservation whose caller stopped waiting
    /// is not: nothing was written for it).
    fn goes(&self) -> bool;

    /// Readies the call to be sent now (a reservation takes its deadline
    /// then, not when it began to wait).
    fn sending(&mut self, _settings: &Settings) {}

    /// The one script call that carries `batch`, in its order.
    fn invocation(prefix: &str, lane: &Self::Lane, cluster: bool, batch: &[Self]) -> Invocation;

    /// The error of a call that failed (what it tells of whether the call
    /// may have been applied).
    fn error(e: redis::RedisError) -> StoreError;

    /// The reply of each call of a batch of `count`, in order.
    fn replies(value: &Value, count: usize) -> Result<Vec<Value>, StoreError>;

    /// Gives the call its reply (a reservation whose caller stopped waiting
    /// is cancelled then).
    fn answer(self, reply: Value);

    /// Tells the call's caller it failed.
    fn fail(self, e: StoreError);
}

impl RedisStore {
    /// The store to send the calls waiting on `lane` with from `place`.
    /// When the library's own connection cannot be opened, each of them is
    /// told the error (none was sent: nothing was written) and the lane goes.
    async fn sender<W: Waiter>(&self, place: Place, lane: &W::Lane) -> Option<RedisStore> {
        match place {
            Place::Caller => Some(self.clone()),
            Place::Own => match self.on_own_connection().await {
                Ok(own) => Some(own),
                Err(e) => {
                    let waiting = W::lanes(&self.settings).lock().remove(lane);
                    for w in waiting.into_iter().flatten() {
                        w.fail(e.clone());
                    }
                    None
                }
            },
        }
    }

    /// Sends the calls waiting on `lane`, at most [`MAX_BATCH`] a call, one
    /// call at a time, until none are left.
    async fn send_waiting<W: Waiter>(self, lane: W::Lane, place: Place) {
        // Dropped before it is done (its runtime shut down), it hands the
        // lane to the library's own runtime.
        let mut release = Release::<W>::new(self.clone(), lane.clone());
        let Some(store) = self.sender::<W>(place, &lane).await else {
            release.0 = None;
            return;
        };
        let cluster = matches!(store.conn, RedisConnection::Cluster(_));
        loop {
            let batch: Vec<W> = {
                let mut lanes = W::lanes(&self.settings).lock();
                let Some(waiting) = lanes.get_mut(&lane) else {
                    break;
                };
                let mut batch = Vec::with_capacity(waiting.len().min(MAX_BATCH));
                while batch.len() < MAX_BATCH {
                    match waiting.pop_front() {
                        Some(w) if !w.goes() => {}
                        Some(mut w) => {
                            w.sending(&self.settings);
                            batch.push(w);
                        }
                        None => break,
                    }
                }
                if batch.is_empty() {
                    lanes.remove(&lane);
                    release.0 = None;
                    return;
                }
                batch
            };
            let inv = W::invocation(&self.settings.prefix, &lane, cluster, &batch);
            let sender = store.clone();
            // Once sent, the batch's replies are handed out even if this task
            // is dropped meanwhile.
            InFlight::new(
                async move { hand_out(sender.run_unbounded(inv).await, batch) },
                |()| async {},
            )
            .await;
        }
        release.0 = None;
    }
}

/// Gives each call of a batch its reply, or the call's error.
fn hand_out<W: Waiter>(reply: redis::RedisResult<Value>, batch: Vec<W>) {
    let failed = |e: StoreError, batch: Vec<W>| {
        for w in batch {
            w.fail(e.clone());
        }
    };
    let value = match reply {
        Ok(value) => value,
        Err(e) => return failed(W::error(e), batch),
    };
    match W::replies(&value, batch.len()) {
        Ok(items) => {
            for (w, item) in batch.into_iter().zip(items) {
                w.answer(item);
            }
        }
        Err(e) => failed(e, batch),
    }
}

/// Frees a lane when its call has come back: the calls that came meanwhile
/// are sent next, else the lane goes.
pub(super) struct Release<W: Waiter>(Option<(RedisStore, W::Lane)>);

impl<W: Waiter> Release<W> {
    /// Frees `lane` of `store` when dropped.
    pub(super) fn new(store: RedisStore, lane: W::Lane) -> Self {
        Release(Some((store, lane)))
    }
}

impl<W: Waiter> Drop for Release<W> {
    fn drop(&mut self) {
        let Some((store, lane)) = self.0.take() else {
            return;
        };
        if !still_waiting::<W>(&store.settings, &lane) {
            return;
        }
        background::run(Box::new(move |place| {
            Box::pin(async move { store.send_waiting::<W>(lane, place).await })
        }));
    }
}

/// Whether calls wait on `lane` (they are sent next); if none, the lane goes.
fn still_waiting<W: Waiter>(settings: &Settings, lane: &W::Lane) -> bool {
    let mut lanes = W::lanes(settings).lock();
    if lanes.get(lane).is_none_or(|w| w.is_empty()) {
        lanes.remove(lane);
        return false;
    }
    true
}
