//! Settlements and cancellations of one key that travel together.
//!
//! As reservations do (see `lanes`): alone on its key, a settlement goes at
//! once; while one call of `settle.lua` is on its way, those that come
//! meanwhile wait for it and then go as one call (at most
//! [`MAX_BATCH`](super::MAX_BATCH)), which applies each in its turn, in
//! arrival order, exactly as if it had come alone. A settlement that was
//! handed to a batch is sent even when its caller stops waiting (it is told
//! [`StoreError::Pending`]): once asked for, it is applied once, never
//! dropped and never sent twice.

use std::collections::VecDeque;

use parking_lot::Mutex;
use redis::Value;
use tollgate_core::Settled;

use super::error::store_error;
use super::handover::InFlight;
use super::lanes::{Release, Waiter};
use super::scripts::{self, Invocation, Keys, SettleArgs};
use super::{settle_error, Map, RedisStore, Settings};
use crate::store::{SettleCall, StoreError};

/// A settlement waiting for the call ahead of it on its key.
pub(super) struct Waiting {
    args: SettleArgs,
    reply: tokio::sync::oneshot::Sender<Result<Value, StoreError>>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// [`Backend::settle`](crate::store::Backend::settle) that also tells the
    /// store time (seconds) the settlement was made at: what the refund caps
    /// were computed with.
    pub async fn settle_timed(&self, call: &SettleCall<'_>) -> Result<(Settled, f64), StoreError> {
        let settings = &*self.settings;
        let limit = settings.timeout;
        // No deadline: a settlement is sent once and never again after a
        // time out (it is still on its way), so it cannot be applied twice,
        // and when it arrives late it must still be applied.
        let args = scripts::settle_args(call, settings.idle_ms, None)?;
        let queued = {
            let mut lanes = settings.settles.lock();
            match lanes.get_mut(call.key) {
                Some(waiting) => {
                    let (reply, rx) = tokio::sync::oneshot::channel();
                    waiting.push_back(Waiting { args, reply });
                    Err(rx)
                }
                None => {
                    lanes.insert(call.key.into(), Default::default());
                    Ok(args)
                }
            }
        };
        let pending = || {
            StoreError::Pending(format!(
                "redis did not answer the settlement within {} ms; it stays on its way and is applied once when Redis answers",
                limit.as_millis()
            ))
        };
        let reply = match queued {
            Ok(args) => {
                let inv = scripts::settle_invocation(&Keys::new(&settings.prefix, call.key), [&args]);
                let store = self.clone();
                let release = Release::<Waiting>::new(self.clone(), call.key.into());
                let (key, id) = (call.key.to_string(), call.id);
                let sent = InFlight::new(
                    async move {
                        let reply = store.run_unbounded(inv).await;
                        drop(release);
                        reply
                    },
                    move |reply| async move { late_reply(&key, &[id], reply) },
                );
                match self.await_reply(limit, sent).await {
                    Ok(reply) => reply.map_err(settle_error)?,
                    Err(_) => return Err(pending()),
                }
            }
            Err(rx) => match self.await_reply(limit, rx).await {
                Ok(Ok(reply)) => reply?,
                Ok(Err(_)) => {
                    return Err(StoreError::Unavailable(
                        "the call carrying the settlement was dropped before it was sent (its runtime shut down); nothing was written".into(),
                    ))
                }
                Err(_) => return Err(pending()),
            },
        };
        let (settled, now) = scripts::settle_reply(&reply, call)?;
        settings.saw(now);
        Ok((settled, now))
    }

    /// Several settlements (or cancellations) of one key in one script
    /// call, applied in the order given, each exactly as if it had come
    /// alone: its own outcome and the store time it was made at, or its own
    /// error. Concurrent [`Backend::settle`](crate::store::Backend::settle)
    /// calls on one key travel together this way by themselves; this is the
    /// same call made explicitly.
    ///
    /// The outer error is the call's: [`StoreError::Pending`] when it may
    /// have reached Redis (it is then applied once, when Redis answers,
    /// and never sent again); a batch with more than one key is refused with
    /// [`StoreError::Failed`] and nothing is sent.
    pub async fn settle_many(
        &self,
        calls: &[SettleCall<'_>],
    ) -> Result<Vec<Result<(Settled, f64), StoreError>>, StoreError> {
        let Some(first) = calls.first() else {
            return Ok(Vec::new());
        };
        if let Some(other) = calls.iter().find(|c| c.key != first.key) {
            return Err(StoreError::Failed(format!(
                "settle_many takes one key; got {:?} and {:?}",
                first.key, other.key
            )));
        }
        let settings = &*self.settings;
        let limit = settings.timeout;
        let args = calls
            .iter()
            .map(|c| scripts::settle_args(c, settings.idle_ms, None))
            .collect::<Result<Vec<_>, _>>()?;
        let inv = scripts::settle_invocation(&Keys::new(&settings.prefix, first.key), &args);
        let store = self.clone();
        let (key, ids) = (
            first.key.to_string(),
            calls.iter().map(|c| c.id).collect::<Vec<_>>(),
        );
        let sent = InFlight::new(async move { store.run_unbounded(inv).await }, {
            move |reply| async move { late_reply(&key, &ids, reply) }
        });
        let reply = match self.await_reply(limit, sent).await {
            Ok(reply) => reply.map_err(settle_error)?,
            Err(_) => {
                return Err(StoreError::Pending(format!(
                    "redis did not answer {} settlements within {} ms; they stay on their way and are applied once when Redis answers",
                    calls.len(),
                    limit.as_millis()
                )))
            }
        };
        let replies = scripts::settle_replies(&reply, calls.len())?;
        Ok(calls
            .iter()
            .zip(&replies)
            .map(|(call, reply)| {
                let (settled, now) = scripts::settle_reply(reply, call)?;
                settings.saw(now);
                Ok((settled, now))
            })
            .collect())
    }
}

impl Waiter for Waiting {
    type Lane = Box<str>;

    fn lanes(settings: &Settings) -> &Mutex<Map<Box<str>, VecDeque<Self>>> {
        &settings.settles
    }

    /// Every one is sent, even if its caller stopped waiting: it was asked
    /// for.
    fn goes(&self) -> bool {
        true
    }

    fn invocation(prefix: &str, key: &Box<str>, _cluster: bool, batch: &[Self]) -> Invocation {
        scripts::settle_invocation(&Keys::new(prefix, key), batch.iter().map(|w| &w.args))
    }

    fn error(e: redis::RedisError) -> StoreError {
        settle_error(e)
    }

    fn replies(value: &Value, count: usize) -> Result<Vec<Value>, StoreError> {
        scripts::settle_replies(value, count)
    }

    fn answer(self, reply: Value) {
        // A caller that stopped waiting was told its settlement is pending:
        // it has been applied.
        let _ = self.reply.send(Ok(reply));
    }

    fn fail(self, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

/// Logs the reply of settlements whose caller stopped waiting.
fn late_reply(key: &str, ids: &[u64], reply: redis::RedisResult<Value>) {
    match reply {
        Ok(_) => tracing::info!(
            key,
            ?ids,
            "settlements that timed out reached Redis when it answered"
        ),
        Err(e) => {
            tracing::warn!(key, ?ids, error = %store_error(e), "settlements that timed out failed")
        }
    }
}
