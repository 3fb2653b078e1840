//! Telling a Redis that stopped answering from calls that merely wait in
//! this process.
//!
//! A call's time limit ([`RedisOptions::response_timeout`]) is there to
//! catch a Redis that does not answer (paused, dead, cut off). Counted on
//! the wall clock from the call's start, it also counts the time the call
//! waits in this process: behind thousands of others on the multiplexed
//! connection, on its lane, or for a turn of the caller's runtime, whose
//! threads a burst on a loaded machine keeps busy for seconds while Redis
//! answers in microseconds. Such a call is not a store failure.
//!
//! So a call still waiting at half its limit asks for probes: `PING` on the
//! library's own connection, sent from its own runtime (a thread of its
//! own, not the caller's busy ones), one every quarter of the shortest
//! limit of such a call while any waits. When the limit has passed, the
//! call fails only if Redis answered no probe sent during the last limit
//! (and after the call began), or once it has waited
//! [`RedisOptions::late_reply_timeout`] in all, the connection's own limit. A paused or dead Redis answers no probe, so its
//! calls still fail when their limit passes.
//!
//! The application's own commands on the store's connection are judged the
//! same way ([`RedisStore::await_command`]): one rule for every call on that
//! Redis.
//!
//! A store made from the application's connection has no connection of its
//! own: its probes travel on that connection, behind the calls they judge.
//!
//! [`RedisOptions::response_timeout`]: super::RedisOptions::response_timeout
//! [`RedisOptions::late_reply_timeout`]: super::RedisOptions::late_reply_timeout

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::Value;

use super::error::{no_answer, store_error};
use super::RedisStore;
use crate::background;
use crate::store::StoreError;

/// What the probes found: shared by a store's clones.
#[derive(Debug)]
pub(super) struct Liveness {
    epoch: Instant,
    /// When the latest probe Redis answered was sent (µs since `epoch`,
    /// plus one; 0: none yet).
    answered: AtomicU64,
    /// Calls waiting past half their limit.
    waiting: AtomicUsize,
    /// The time between probes (µs): a quarter of the shortest limit of a
    /// call that waited past half of it (never longer than a quarter of the
    /// store's own limit), so that a call with a short limit finds a probe
    /// answered within it.
    step: AtomicU64,
    /// Wakes the probing task when `step` got shorter.
    shorter: tokio::sync::Notify,
    /// Whether the probing task runs.
    probing: AtomicBool,
}

impl Liveness {
    /// What a store whose calls have the limit `limit` starts from.
    pub(super) fn new(limit: Duration) -> Self {
        Liveness {
            epoch: Instant::now(),
            answered: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            step: AtomicU64::new(quarter(limit)),
            shorter: tokio::sync::Notify::new(),
            probing: AtomicBool::new(false),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64 + 1
    }

    /// The time between probes.
    fn step(&self) -> Duration {
        Duration::from_micros(self.step.load(Ordering::Acquire))
    }

    /// Whether Redis answered a probe sent at `since` or later.
    fn answered_since(&self, since: Instant) -> bool {
        self.answered.load(Ordering::Acquire) >= self.micros(since)
    }
}

/// A quarter of `limit` in µs, at least 1 ms.
fn quarter(limit: Duration) -> u64 {
    (limit / 4).max(Duration::from_millis(1)).as_micros() as u64
}

/// A call waiting past half its limit: probes run while there is one.
struct Watch<'a>(&'a Liveness);

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RedisStore {
    /// Awaits `call` under the time limit `limit`, judged by the probes (see
    /// the module): `Err` with the time waited when `limit` has passed and
    /// Redis answered no probe sent within the last `limit` since the call
    /// began, or when it has waited `late_reply_timeout`.
    ///
    /// [`RedisStore::await_command`] gives the same rule with its errors
    /// made [`StoreError`]s.
    pub async fn await_reply<F: Future>(
        &self,
        limit: Duration,
        call: F,
    ) -> Result<F::Output, Duration> {
        let started = Instant::now();
        let mut call = std::pin::pin!(call);
        let half = started + limit / 2;
        if let Ok(out) = tokio::time::timeout_at(half.into(), &mut call).await {
            return Ok(out);
        }
        let live = &self.settings.liveness;
        live.waiting.fetch_add(1, Ordering::AcqRel);
        let _watch = Watch(live);
        if live.step.fetch_min(quarter(limit), Ordering::AcqRel) > quarter(limit) {
            live.shorter.notify_one();
        }
        let watched = Instant::now();
        self.start_probing();
        let step = Duration::from_micros(quarter(limit));
        let mut check = (started + limit).max(watched + limit / 2);
        loop {
            if let Ok(out) = tokio::time::timeout_at(check.into(), &mut call).await {
                return Ok(out);
            }
            let now = Instant::now();
            let waited = now - started;
            let since = now.checked_sub(limit).map_or(started, |s| s.max(started));
            if waited >= self.settings.late || !live.answered_since(since) {
                return Err(waited);
            }
            check = now + step;
        }
    }

    /// Awaits an application's own command `call` on
    /// [`RedisStore::connection`] under the limit `limit`, judged as the
    /// store's own calls are ([`RedisStore::await_reply`]): its reply, or a
    /// [`StoreError`] naming `what` when Redis answered with an error or the
    /// call is judged to have got no answer.
    ///
    /// One rule for every call on the store's Redis: a call that only
    /// waits in this process behind a burst, while Redis answers, keeps
    /// waiting; a paused or dead Redis fails it once `limit` has passed.
    pub async fn await_command<T>(
        &self,
        what: &str,
        limit: Duration,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match self.await_reply(limit, call).await {
            Ok(result) => result.map_err(store_error),
            Err(waited) => Err(no_answer(what, limit, waited, self.settings.late)),
        }
    }

    /// Starts the probing task on the library's own runtime, unless it runs.
    fn start_probing(&self) {
        if self.settings.liveness.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        background::on_own_runtime(async move { store.probe().await });
    }

    /// Sends a probe every quarter of the shortest limit while calls wait.
    async fn probe(self) {
        let live = &self.settings.liveness;
        loop {
            if live.waiting.load(Ordering::Acquire) == 0 {
                live.probing.store(false, Ordering::Release);
                // A call that came meanwhile saw the task running.
                if live.waiting.load(Ordering::Acquire) == 0
                    || live.probing.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
            let sent = Instant::now();
            match self.on_own_connection().await {
                Ok(own) => {
                    let mut conn = own.conn.clone();
                    let cmd = redis::cmd("PING");
                    let ping = cmd.query_async::<Value>(&mut conn);
                    if let Ok(Ok(_)) = tokio::time::timeout(self.settings.late, ping).await {
                        live.answered.fetch_max(live.micros(sent), Ordering::AcqRel);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot open the connection for probes"),
            }
            tokio::select! {
                _ = tokio::time::sleep_until((sent + live.step()).into()) => {}
                _ = live.shorter.notified() => {}
            }
        }
    }
}

/// The server's clock as this process sees it: the latest server time a
/// reply told, plus the time since it was read.
#[derive(Debug, Default)]
pub(super) struct ServerClock(parking_lot::Mutex<Option<(f64, Instant)>>);

impl ServerClock {
    /// Records a reply's server time, unless what was seen before tells a
    /// later one: a reply read late (its task waited for a turn of a busy
    /// runtime) must not set the clock back, or every deadline made from it
    /// would have passed before its call was sent.
    pub(super) fn saw(&self, server_now: f64) {
        let mut clock = self.0.lock();
        let ahead = match *clock {
            Some((server, at)) => server_now > server + at.elapsed().as_secs_f64(),
            None => true,
        };
        if ahead {
            *clock = Some((server_now, Instant::now()));
        }
    }

    /// The server's time now, trailing it by a reply's travel time; `None`
    /// before the first reply.
    pub(super) fn now(&self) -> Option<f64> {
        let (server, at) = (*self.0.lock())?;
        Some(server + at.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_read_late_does_not_set_the_clock_back() {
        let clock = ServerClock::default();
        assert_eq!(clock.now(), None);
        clock.saw(1_000.0);
        // A reply made 5 s earlier, read only now.
        clock.saw(995.0);
        assert!(clock.now().unwrap() >= 1_000.0, "{:?}", clock.now());
        clock.saw(2_000.0);
        assert!(clock.now().unwrap() >= 2_000.0, "{:?}", clock.now());
    }
}
