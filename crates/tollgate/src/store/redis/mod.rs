//! The Redis store: every key's state in Redis, changed only by Lua scripts
//! (`reserve.lua`, `settle.lua`, `snapshot.lua` next to this file) that port the
//! arithmetic of `tollgate-core` and read the time from Redis itself.
//!
//! Per limiter key `K` there are a hash `<prefix>:{K}:s` (TAT and refunds per
//! dimension, the id sequence: binary doubles in one field, see
//! `reserve.lua`), one sorted set `<prefix>:{K}:q<class>` per priority class
//! (queued reservation ids scored by slot) and its headroom index
//! `<prefix>:{K}:h<class>`. All carry the hash
//! tag `{K}`, so the same scripts run on Redis Cluster, and all expire once the
//! key's backlog has drained (plus [`RedisOptions::idle_ttl`]). One more key,
//! `<prefix>:epoch`, never expires: it tells a key that expired while idle
//! from a store that lost everything (see [`AfterReset`]).

mod connection;
mod error;
mod options;
mod scripts;

pub use self::connection::RedisConnection;
pub use self::options::{AfterReset, RedisOptions, TlsOptions};

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ErrorKind, ServerErrorKind, Value};
use tollgate_core::{Dims, Policy, ReserveError, Settled};

use self::error::{store_error, timed_out};
use self::scripts::{Keys, ReserveContext, ReserveNews, SettleReply};
use super::{
    AdvanceCall, Advanced, Backend, KeySnapshot, ReserveCall, Reserved, SettleCall, StoreError,
};

/// The Redis store: standalone (`redis://`), TLS (`rediss://`) or Cluster
/// (`redis+cluster://`). Cheap to clone: clones share the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), tollgate::Error> {
/// use tollgate::store::{RedisOptions, RedisStore};
/// use tollgate::{Limits, RateLimiter, Store};
///
/// let redis = RedisStore::connect("redis://:secret@10.0.0.5:6379/2", RedisOptions::default())
///     .await
///     .map_err(tollgate::Error::Store)?;
/// let store = Store::Redis(redis);
/// let gpt4o = RateLimiter::with_store(&store, "openai/gpt-4o", Limits::new().rpm(500).tpm(30_000))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    settings: Arc<Settings>,
}

#[derive(Debug)]
struct Settings {
    prefix: String,
    idle_ms: u64,
    timeout: Duration,
    after_reset: AfterReset,
    /// The server's clock at the last reply and when it arrived here: gives
    /// each call a deadline on the server's clock.
    clock: parking_lot::Mutex<Option<(f64, Instant)>>,
    /// What this process knows of the store's state: epochs and TATs.
    seen: parking_lot::Mutex<Seen>,
    /// Bit set of the priority classes known to have queued on some key: a
    /// settlement passes the headroom indexes of classes up to the highest.
    classes: AtomicU32,
    /// Times the store was found to have lost its state.
    resets: AtomicU64,
}

/// Keys this process holds at most in [`Seen::tat`] before it forgets the
/// ones whose backlog has drained.
const MAX_KNOWN_KEYS: usize = 10_000;

/// What this process was told by the store.
#[derive(Debug, Default)]
struct Seen {
    /// The epoch last seen, by epoch key name (one on a standalone server).
    epochs: HashMap<String, String>,
    /// Per limiter key, the highest TAT per dimension a reservation was told:
    /// how far its own reservations reach should the store lose them.
    tat: HashMap<Box<str>, Dims>,
}

impl Settings {
    /// The latest server time by which a call sent now is still awaited;
    /// `None` before the first reply. The estimate trails the server's clock
    /// by the reply's travel time, so the deadline errs late, never early.
    fn deadline(&self) -> Option<f64> {
        let (server, at) = (*self.clock.lock())?;
        Some(server + at.elapsed().as_secs_f64() + self.timeout.as_secs_f64())
    }

    fn saw(&self, server_now: f64) {
        *self.clock.lock() = Some((server_now, Instant::now()));
    }

    /// How many headroom indexes (of classes 0, 1, …) a settlement of
    /// `class` passes: up to the highest class known to have queued here.
    fn classes_for(&self, class: u8) -> u8 {
        let bits = self.classes.load(Ordering::Relaxed) | (1 << class);
        (32 - bits.leading_zeros()) as u8
    }

    /// Records what a granted reservation was told; reports a reset (an
    /// epoch other than the one seen before).
    fn granted(&self, key: &str, epoch_key: &str, r: &Reserved, news: &ReserveNews) {
        if news.classes != 0 {
            self.classes.fetch_or(news.classes, Ordering::Relaxed);
        }
        let mut seen = self.seen.lock();
        if seen.tat.len() >= MAX_KNOWN_KEYS {
            seen.tat.retain(|_, t| t.iter().any(|&t| t > r.now));
        }
        match seen.tat.get_mut(key) {
            Some(t) => {
                for (t, &e) in t.iter_mut().zip(&r.mark.end) {
                    *t = t.max(e);
                }
            }
            None => {
                seen.tat.insert(key.into(), r.mark.end);
            }
        }
        let Some(epoch) = &news.epoch else { return };
        match seen.epochs.get(epoch_key) {
            Some(old) if old == epoch => {}
            Some(old) => {
                self.resets.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    prefix = %self.prefix,
                    key,
                    epoch_was = %old,
                    epoch = %epoch,
                    after_reset = ?self.after_reset,
                    "the store lost its state (Redis restarted empty or was flushed): \
                     its buckets start {}",
                    match self.after_reset {
                        AfterReset::Full => "full, as configured (after_reset = Full)",
                        _ => "drained, as if the last window had been used in full",
                    }
                );
                seen.epochs.insert(epoch_key.to_string(), epoch.clone());
            }
            None => {
                seen.epochs.insert(epoch_key.to_string(), epoch.clone());
            }
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("conn", &self.conn)
            .field("prefix", &self.settings.prefix)
            .finish()
    }
}

impl RedisStore {
    /// Connects to Redis from a URL:
    ///
    /// - `redis://[:password@]host:port[/db]` (also `redis://user:password@…`),
    /// - `rediss://…` for TLS (see [`TlsOptions`]),
    /// - `redis+cluster://[:password@]host:port,host:port` (or `rediss+cluster://`)
    ///   for a Redis Cluster given by some of its nodes.
    ///
    /// Loads the scripts, so a bad password or an unreachable server shows here.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        options.validate()?;
        let conn = connection::connect_url(url, &options).await?;
        let store = Self::build(conn, &options);
        if !options.lazy {
            store.load_scripts().await?;
        }
        Ok(store)
    }

    /// Connects to a Redis Cluster from some of its nodes (`host:port`,
    /// `redis://host:port` or `rediss://host:port`).
    pub async fn connect_cluster<S: AsRef<str>>(
        nodes: &[S],
        options: RedisOptions,
    ) -> Result<Self, StoreError> {
        options.validate()?;
        let nodes: Vec<String> = nodes.iter().map(|n| n.as_ref().to_string()).collect();
        if nodes.is_empty() {
            return Err(StoreError::Failed(
                "no Cluster nodes given: pass at least one host:port".into(),
            ));
        }
        let conn = connection::connect_cluster(&nodes, &options).await?;
        let store = Self::build(conn, &options);
        store.load_scripts().await?;
        Ok(store)
    }

    /// A store on a connection the application already has: a
    /// [`redis::aio::ConnectionManager`] (reconnects by itself), a
    /// [`redis::aio::MultiplexedConnection`] or a
    /// [`redis::cluster_async::ClusterConnection`]. The connection's own
    /// timeouts apply; `options` gives the key prefix, the idle TTL and the
    /// longest an operation may take.
    pub fn from_connection(
        conn: impl Into<RedisConnection>,
        options: RedisOptions,
    ) -> Result<Self, StoreError> {
        options.validate()?;
        Ok(Self::build(conn.into(), &options))
    }

    /// [`RedisStore::from_connection`] with [`RedisOptions::default`].
    pub fn with_default_options(conn: impl Into<RedisConnection>) -> Self {
        Self::build(conn.into(), &RedisOptions::default())
    }

    fn build(conn: RedisConnection, options: &RedisOptions) -> Self {
        RedisStore {
            conn,
            settings: Arc::new(Settings {
                prefix: options.key_prefix.clone(),
                idle_ms: options.idle_ttl.as_millis().max(1) as u64,
                timeout: options.operation_timeout(),
                after_reset: options.after_reset,
                clock: parking_lot::Mutex::new(None),
                seen: parking_lot::Mutex::new(Seen::default()),
                classes: AtomicU32::new(0),
                resets: AtomicU64::new(0),
            }),
        }
    }

    /// The connection the store uses (clones share it).
    pub fn connection(&self) -> &RedisConnection {
        &self.conn
    }

    /// Times this store was found to have lost its state (see
    /// [`AfterReset`]): each reset once, in this process.
    pub fn resets(&self) -> u64 {
        self.settings.resets.load(Ordering::Relaxed)
    }

    /// The Redis key names of a limiter key: its state hash and the queue of
    /// class 0 (others end in `q1`, `q2`, …). For inspection and tests.
    pub fn key_names(&self, key: &str) -> (String, String) {
        let keys = Keys::new(&self.settings.prefix, key);
        (keys.state(), keys.queue(0))
    }

    /// Loads the three scripts (`SCRIPT LOAD`; every primary of a Cluster).
    /// Not required: a call whose script is missing loads it and runs again.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in [&*scripts::RESERVE, &*scripts::SETTLE, &*scripts::SNAPSHOT] {
            let mut conn = self.conn.clone();
            let inv = script.prepare_invoke();
            self.bounded("loading the scripts", async move {
                inv.load_async(&mut conn).await
            })
            .await?;
        }
        Ok(())
    }

    /// [`Backend::settle`] that also tells the store time (seconds) the
    /// settlement was made at: what the refund caps were computed with.
    pub async fn settle_timed(&self, call: &SettleCall<'_>) -> Result<(Settled, f64), StoreError> {
        let keys = Keys::new(&self.settings.prefix, call.key);
        let mut classes = self.settings.classes_for(call.class);
        // A class that queued on the key but is unknown here asks for its
        // index; after two tries every class's is passed.
        for attempt in 0.. {
            let deadline = self.settings.deadline();
            let inv =
                scripts::settle_invocation(&keys, call, self.settings.idle_ms, deadline, classes)?;
            let reply = self.run("settle", inv).await?;
            match scripts::settle_reply(&reply, call)? {
                SettleReply::Done(settled, now) => {
                    self.settings.saw(now);
                    return Ok((settled, now));
                }
                SettleReply::NeedClasses(bits) => {
                    self.settings.classes.fetch_or(bits, Ordering::Relaxed);
                    classes = if attempt < 2 {
                        self.settings.classes_for(call.class)
                    } else {
                        scripts::MAX_CLASSES
                    };
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Runs a script by SHA (`EVALSHA`); after `NOSCRIPT` (Redis restarted,
    /// `SCRIPT FLUSH`, a new Cluster node) loads it and runs it once more. The
    /// whole is bounded by the operation timeout.
    async fn run(&self, what: &str, inv: scripts::Invocation) -> Result<Value, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(what, async move {
            match inv.cmd.query_async::<Value>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    inv.script.prepare_invoke().load_async(&mut conn).await?;
                    inv.cmd.query_async(&mut conn).await
                }
                other => other,
            }
        })
        .await
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let limit = self.settings.timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result.map_err(store_error),
            Err(_) => Err(timed_out(what, limit)),
        }
    }
}

impl Backend for RedisStore {
    async fn reserve(
        &self,
        call: &ReserveCall<'_>,
    ) -> Result<Result<Reserved, ReserveError>, StoreError> {
        if let Some(e) = scripts::too_large_for(call) {
            return Ok(Err(e));
        }
        let settings = &*self.settings;
        let keys = Keys::new(&settings.prefix, call.key);
        let cluster = matches!(self.conn, RedisConnection::Cluster(_));
        let epoch_key = keys.epoch(cluster);
        let (epoch, known) = {
            let seen = settings.seen.lock();
            (
                seen.epochs.get(&epoch_key).cloned().unwrap_or_default(),
                seen.tat.get(call.key).copied(),
            )
        };
        let ctx = ReserveContext {
            keys: &keys,
            cluster,
            idle_ms: settings.idle_ms,
            deadline: settings.deadline(),
            drained: settings.after_reset == AfterReset::Drained,
            epoch: &epoch,
            known,
        };
        let inv = scripts::reserve_invocation(&ctx, call)?;
        let reply = self.run("reserve", inv).await?;
        Ok(match scripts::reserve_reply(&reply, call)? {
            Ok((r, news)) => {
                settings.saw(r.now);
                if r.slot > r.now {
                    settings
                        .classes
                        .fetch_or(1 << call.class, Ordering::Relaxed);
                }
                settings.granted(call.key, &epoch_key, &r, &news);
                Ok(r)
            }
            Err(e) => Err(e),
        })
    }

    async fn settle(&self, call: &SettleCall<'_>) -> Result<Settled, StoreError> {
        Ok(self.settle_timed(call).await?.0)
    }

    async fn advance(&self, call: &AdvanceCall<'_>) -> Result<Option<Advanced>, StoreError> {
        let keys = Keys::new(&self.settings.prefix, call.key);
        let inv = scripts::advance_invocation(&keys, call)?;
        let reply = self.run("advance", inv).await?;
        scripts::advance_reply(&reply)
    }

    async fn snapshot(&self, key: &str, _policy: &Policy) -> Result<KeySnapshot, StoreError> {
        let keys = Keys::new(&self.settings.prefix, key);
        let reply = self
            .run("snapshot", scripts::snapshot_invocation(&keys))
            .await?;
        let (now, state, queue_depth) = scripts::snapshot_reply(&reply)?;
        Ok(KeySnapshot {
            now,
            state,
            queue_depth,
        })
    }
}
