//! Spend settlements that travel together.
//!
//! Alone, a settlement waits [`LINGER`] for company and goes (a
//! cancellation, which a refusal may wait for, goes at once); while one
//! call is on its way, the settlements that come meanwhile wait for it and
//! then go as one call of `settle_many.lua` (at most [`MAX_BATCH`] a call),
//! which applies each in its turn exactly as `settle.lua` alone would. On a
//! standalone Redis one lane carries the settlements of every client; on a
//! Cluster, whose script calls must keep their keys in one slot, each
//! account (its hash tag) has a lane of its own.
//!
//! A call that fails or times out fails every settlement it carried, and
//! their callers retry them as they retry one alone
//! ([`super::RedisBudgets`]): each settlement is idempotent through its own
//! hold key, so a batch that reached Redis late is applied once, and its
//! retries change nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{BudgetError, Hold};

/// Most settlements in one script call (a call of 256 keeps Redis's one
/// thread busy for well under a millisecond).
pub(super) const MAX_BATCH: usize = 256;

/// How long the first settlement of a lane waits for others to join it.
/// Settlements follow the answer, so no client waits for this; it turns the
/// settlements of requests finishing within it into one call.
pub(super) const LINGER: Duration = Duration::from_millis(1);

/// What a settlement's caller is told: its batch's outcome.
type Reply = oneshot::Sender<Result<(), BudgetError>>;

/// One settlement waiting for its call.
pub(super) struct Settling {
    /// The hold it settles.
    pub(super) hold: Hold,
    /// Its actual cost, nano-USD (0 cancels a reservation).
    pub(super) actual: i64,
    reply: Reply,
}

/// The settlements waiting per lane. A lane present in the map has a
/// sender running; it removes the lane when it finds it empty.
#[derive(Clone, Default)]
pub(super) struct Lanes(Arc<parking_lot::Mutex<HashMap<String, VecDeque<Settling>>>>);

impl Lanes {
    /// Queues a settlement of `hold` at `actual` on `lane`. Returns the
    /// receiver of its outcome, and whether the lane had no sender (the
    /// caller then starts one with [`Lanes::sender`]).
    pub(super) fn push(
        &self,
        lane: &str,
        hold: Hold,
        actual: i64,
    ) -> (oneshot::Receiver<Result<(), BudgetError>>, bool) {
        let (reply, rx) = oneshot::channel();
        let s = Settling {
            hold,
            actual,
            reply,
        };
        let mut lanes = self.0.lock();
        match lanes.get_mut(lane) {
            Some(waiting) => {
                waiting.push_back(s);
                (rx, false)
            }
            None => {
                lanes.insert(lane.to_string(), VecDeque::from([s]));
                (rx, true)
            }
        }
    }

    /// Sends `lane`'s settlements with `send` (the first call after
    /// [`LINGER`] when `linger`), at most [`MAX_BATCH`] a
    /// call, one call at a time, until the lane is empty; each is told its
    /// call's outcome. Dropped before it is done (its runtime shut down),
    /// the settlements not answered yet are told their call was dropped
    /// (their callers retry them) and the lane is freed.
    pub(super) async fn sender<F, Fut>(self, lane: String, linger: bool, send: F)
    where
        F: Fn(Vec<(Hold, i64)>) -> Fut,
        Fut: std::future::Future<Output = Result<(), BudgetError>>,
    {
        let mut guard = Free(Some((self.clone(), lane.clone())));
        if linger {
            tokio::time::sleep(LINGER).await;
        }
        loop {
            let batch: Vec<Settling> = {
                let mut lanes = self.0.lock();
                let Some(waiting) = lanes.get_mut(&lane) else {
                    break;
                };
                if waiting.is_empty() {
                    lanes.remove(&lane);
                    break;
                }
                let n = waiting.len().min(MAX_BATCH);
                waiting.drain(..n).collect()
            };
            let (items, replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|s| ((s.hold, s.actual), s.reply))
                .unzip();
            let outcome = send(items).await;
            for reply in replies {
                let _ = reply.send(outcome.clone());
            }
        }
        guard.0 = None;
    }
}

/// Frees a lane whose sender was dropped: the settlements still queued are
/// dropped with it, so their callers hear their call failed.
struct Free(Option<(Lanes, String)>);

impl Drop for Free {
    fn drop(&mut self) {
        if let Some((lanes, lane)) = self.0.take() {
            lanes.0.lock().remove(&lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Level, Period};

    fn hold(id: u128) -> Hold {
        Hold {
            id,
            reserved: false,
            client: "c".into(),
            level: Level::Client,
            period: Period::now(),
            amount: 0,
        }
    }

    type Call =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BudgetError>> + Send>>;

    /// A sender whose calls record their batch sizes and wait for `go`.
    fn recording(
        sizes: Arc<parking_lot::Mutex<Vec<usize>>>,
        go: Arc<tokio::sync::Semaphore>,
    ) -> impl Fn(Vec<(Hold, i64)>) -> Call {
        move |batch| {
            let (sizes, go) = (sizes.clone(), go.clone());
            Box::pin(async move {
                sizes.lock().push(batch.len());
                go.acquire().await.unwrap().forget();
                Ok(())
            })
        }
    }

    /// The sender of the lane `""`, without lingering, recording.
    fn start(
        lanes: &Lanes,
        sizes: &Arc<parking_lot::Mutex<Vec<usize>>>,
        go: &Arc<tokio::sync::Semaphore>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(lanes.clone().sender(
            String::new(),
            false,
            recording(sizes.clone(), go.clone()),
        ))
    }

    #[tokio::test]
    async fn settlements_that_come_while_a_call_is_out_go_together_next() {
        let lanes = Lanes::default();
        let sizes = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let go = Arc::new(tokio::sync::Semaphore::new(0));
        let (first, starts) = lanes.push("", hold(0), 1);
        assert!(starts);
        let sender = start(&lanes, &sizes, &go);
        tokio::task::yield_now().await;
        let mut later = Vec::new();
        for id in 1..=5 {
            let (rx, starts) = lanes.push("", hold(id), 1);
            assert!(!starts, "the lane's sender is running");
            later.push(rx);
        }
        go.add_permits(2);
        assert_eq!(first.await.unwrap(), Ok(()));
        for rx in later {
            assert_eq!(rx.await.unwrap(), Ok(()));
        }
        sender.await.unwrap();
        assert_eq!(*sizes.lock(), [1, 5]);
        // The lane is free again: the next settlement starts a sender.
        assert!(lanes.push("", hold(9), 1).1);
    }

    #[tokio::test]
    async fn a_sender_dropped_during_its_call_frees_its_lane_and_fails_its_settlements() {
        let lanes = Lanes::default();
        let sizes = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let never = Arc::new(tokio::sync::Semaphore::new(0));
        let (sent, _) = lanes.push("", hold(0), 1);
        let sender = start(&lanes, &sizes, &never);
        tokio::task::yield_now().await;
        let (queued, _) = lanes.push("", hold(1), 1);
        sender.abort();
        let _ = sender.await;
        // Both callers hear their settlement's call is gone (they retry it).
        assert!(sent.await.is_err());
        assert!(queued.await.is_err());
        assert!(lanes.push("", hold(2), 1).1, "the lane was freed");
    }
}
